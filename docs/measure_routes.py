"""Time one training step of an adapted linear layer on the merged and the separate route.

Used for the table in docs/finetuning.rst, "Memory and speed":

    python docs/measure_routes.py [THREADS]     # torch CPU threads, default 1

For each shape, adapter and token count it prints the median of 7 forward + backward steps
(after 2 untimed ones) with ``circfft.config(adapter_route="merged")`` and with
``adapter_route="separate"``, in milliseconds, and their ratio.
"""
import statistics
import sys
import time

import torch

import circfft
import circfft.nn as cnn


def step_ms(model, x, route, repeat=7, warmup=2):
    """Median wall time of one forward + backward on ``route``, in ms."""
    def step():
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).square().mean().backward()

    with circfft.config(adapter_route=route):
        for _ in range(warmup):
            step()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(threads: int = 1) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    print(f"circfft {circfft.__version__}, torch {torch.__version__}, {threads} thread(s)")
    for d_out, d_in in [(384, 384), (1536, 384)]:
        for method in ("circulant", "fourierft"):
            for tokens in (512, 2048, 8192):
                if method == "circulant":
                    cfg = cnn.CirculantConfig(target_modules=["0"], block_size=64)
                else:
                    cfg = cnn.FourierFTConfig(target_modules=["0"], n_frequency=1000,
                                              scaling=150.0)
                model = cnn.inject(torch.nn.Sequential(torch.nn.Linear(d_in, d_out)), cfg)
                x = torch.randn(tokens, d_in, requires_grad=True)
                merged = step_ms(model, x, "merged")
                separate = step_ms(model, x, "separate")
                print(f"{d_out}x{d_in} {method:9s} tokens={tokens:5d} merged {merged:8.2f} ms  "
                      f"separate {separate:8.2f} ms  ratio {separate / merged:.2f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
