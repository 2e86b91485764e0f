"""``python -m circfft bench --ops``: forward + backward of the block-circulant product, timed.

Compares, float32, for ``d_in = d_out = d`` and ``T`` tokens:

- ``circfft``: :func:`circfft.nn.functional.block_circulant_matmul` (saves the packed spectrum
  of ``x`` only);
- ``c3a``: PEFT's ``BlockCircularConvolution`` (``peft.tuners.c3a``) divided by ``d`` as in its
  layer, at the same ``(d, b)``;
- ``lora-r``: the dense LoRA product ``(x A^T) B^T`` at rank ``r``, for reference.

``--with-base`` adds the frozen base layer's product ``x W^T`` (``W`` of ``d x d``) to every
implementation, so that each row is a whole adapted layer.

**CPU** (``--device cpu``, the default).  Each case runs twice, each time in a fresh
subprocess: inputs (``x``, kernel, incoming gradient) are allocated and one untimed forward +
backward warms up.  The first process reports the best of ``--repeat`` timed runs with the
default allocator.  The second fixes glibc's mmap threshold at 64 KiB from the start (every
larger buffer is mapped when allocated and unmapped when freed), resets the resident-set peak
(``/proc/self/clear_refs``) and measures one forward + backward: "peak above inputs" is that
peak minus the resident size just before it, so it counts what the operator allocates (saved
tensors, temporaries, output, gradients) the same way for every implementation
(:class:`.measure.PeakMemory`, ``"rss"``).

**CUDA** (``--device cuda``).  Every case runs in this process: the time is the median of
``--repeat`` forward + backward runs timed by CUDA events after ``--warmup`` untimed ones, the
peak is ``torch.cuda.max_memory_allocated`` over one run (peak statistics reset first) minus
the memory allocated before it (the inputs).  Defaults: ``T = 8192``, ``d`` = 768 and 4096,
``b`` = 64, 256, 1024 (a ``b`` not dividing ``d`` is skipped), targets ``CUDA_TARGETS``.  A
second table gives the host time per call of ``circfft.rdfft(x, norm="ortho", out=x)`` on a
64 x 64 CUDA tensor against ``torch.fft.rfft(x)``: ``--calls`` calls back to back without
synchronising, then one synchronisation (:func:`.measure.host_seconds_per_call`).

Extra options (after ``--ops``): ``--tokens T``, ``--dims D [D ...]``, ``--blocks B [B ...]``
(``0`` means ``b = d``), ``--ranks R [R ...]``, ``--threads N``, ``--with-base``,
``--warmup K`` and ``--calls N`` (CUDA).  ``--quick``: ``T = 1024``, ``d = 768``.  ``--json
FILE`` saves the rows.
"""
from __future__ import annotations

import argparse
import json
import sys

from .info import importable
from .measure import (PeakMemory, Profiles, cuda_median_seconds, fix_mmap_threshold,
                      host_seconds_per_call, mib, ratio, render_table, run_fresh_process,
                      time_call, verdict)

__all__ = ["main", "run_case", "run_case_cuda", "host_overhead", "format_table",
           "format_host_table", "SETTINGS", "CUDA_SETTINGS", "CPU_TARGETS", "CUDA_TARGETS"]

#: This module's name, also when it runs as ``__main__`` (the per-case subprocesses).
MODULE = "circfft._cli.bench_ops"
#: Settings of a full run and of ``--quick``, on the CPU and on CUDA.
SETTINGS = Profiles(
    full=dict(tokens=8192, dims=(768, 4096), blocks=(64, 256, 0), ranks=(8, 16), repeat=3),
    quick=dict(tokens=1024, dims=(768,), blocks=(64, 256, 0), ranks=(8, 16), repeat=2))
CUDA_SETTINGS = Profiles(
    full=dict(tokens=8192, dims=(768, 4096), blocks=(64, 256, 1024), ranks=(8, 16), repeat=10),
    quick=dict(tokens=1024, dims=(768,), blocks=(64, 256, 1024), ranks=(8, 16), repeat=5))
MEM_TARGET = 0.5          # peak memory at most 0.5x C3A's
TIME_TARGET = 1 / 1.5     # time at most 1/1.5 of C3A's
#: (time, memory) targets of circfft over C3A at the same (d, b).
CPU_TARGETS = (TIME_TARGET, MEM_TARGET)
CUDA_TARGETS = (0.5, 0.5)
#: circfft's host time per call at most this many times torch.fft.rfft's.
HOST_TARGET = 2.0


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------
def make_step(impl: str, d: int, b: int, tokens: int, device: str = "cpu",
              with_base: bool = False):
    """``(step, clear, params)``: one forward + backward of ``impl`` on fresh inputs on
    ``device``, the function that drops the gradients, and the trainable parameter count."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(tokens, d, device=device, requires_grad=True)
    gy = torch.randn(tokens, d, device=device)
    base = torch.randn(d, d, device=device) / d ** 0.5 if with_base else None
    if impl == "circfft":
        from circfft.nn import functional as F

        kernel = [(torch.randn(d // b, d // b, b, device=device) / d).requires_grad_()]

        def delta():
            return F.block_circulant_matmul(kernel[0], x)
    elif impl == "c3a":
        from peft.tuners.c3a.utils import BlockCircularConvolution

        kernel = [torch.randn(d // b, d // b, b, device=device).requires_grad_()]

        def delta():
            return BlockCircularConvolution.apply(x, kernel[0]) / d
    elif impl.startswith("lora-"):
        r = int(impl.split("-", 1)[1])
        kernel = [(torch.randn(r, d, device=device) / d ** 0.5).requires_grad_(),
                  (torch.randn(d, r, device=device) / r ** 0.5).requires_grad_()]

        def delta():
            return (x @ kernel[0].T) @ kernel[1].T
    else:
        raise ValueError(f"unknown implementation {impl!r}")

    def step():
        y = delta() if base is None else x @ base.T + delta()
        y.backward(gy)

    def clear():
        for t in [x, *kernel]:
            t.grad = None

    return step, clear, sum(t.numel() for t in kernel)


def run_case(impl: str, d: int, b: int, tokens: int, repeat: int, threads: int | None,
             mode: str = "both", with_base: bool = False) -> dict:
    """Measure one case on the CPU in this process (``mode``: "time", "memory" or "both")."""
    if mode == "memory":
        # Every buffer of 64 KiB or more is mapped when allocated and unmapped when freed, so
        # the resident peak counts exactly the live buffers.
        fix_mmap_threshold(65536)
    import torch

    if threads:
        torch.set_num_threads(threads)
    step, clear, params = make_step(impl, d, b, tokens, "cpu", with_base)
    step()                      # warm-up (numba/peft imports, caches)
    result = dict(impl=impl, d=d, b=b, tokens=tokens, params=params,
                  threads=torch.get_num_threads())
    if mode in ("time", "both"):
        times = []
        for _ in range(max(1, repeat)):
            clear()
            times.append(time_call(step)[1])
        result["time_s"] = min(times)
    if mode in ("memory", "both"):
        clear()
        # Without /proc/self/clear_refs (exact False) the peak is the process's, warm-up included.
        probe = PeakMemory("rss")
        result["peak_above_inputs"] = probe.measure(step)
        result["exact_peak"] = probe.exact
    return result


def run_case_cuda(impl: str, d: int, b: int, tokens: int, repeat: int, warmup: int = 3,
                  with_base: bool = False, device: str = "cuda") -> dict:
    """Measure one case on CUDA ``device``: median CUDA-event time, peak above the inputs."""
    import torch

    step, clear, params = make_step(impl, d, b, tokens, device, with_base)
    seconds = cuda_median_seconds(torch, step, repeat, max(1, warmup), prepare=clear)
    clear()
    peak = PeakMemory("cuda").measure(step)
    clear()
    torch.cuda.empty_cache()
    return dict(impl=impl, d=d, b=b, tokens=tokens, params=params, time_s=seconds,
                peak_above_inputs=peak, exact_peak=True)


def host_overhead(calls: int = 2000, warmup: int = 100, device: str = "cuda") -> list[dict]:
    """Host time per call on a 64 x 64 tensor on ``device``: circfft.rdfft in place against
    torch.fft.rfft."""
    import torch

    import circfft

    x = torch.randn(64, 64, device=device)
    fns = {"circfft.rdfft(x, norm='ortho', out=x)": lambda: circfft.rdfft(x, norm="ortho", out=x),
           "torch.fft.rfft(x)": lambda: torch.fft.rfft(x)}
    rows = []
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        enqueue, wall = host_seconds_per_call(fn, calls, device)
        rows.append(dict(call=name, calls=calls, enqueue_s=enqueue, wall_s=wall))
    return rows


def _subprocess_case(impl, d, b, tokens, repeat, threads, with_base=False) -> dict:
    """Time in one fresh process (default allocator), memory in another (fixed mmap threshold)."""
    result = {}
    for mode in ("time", "memory"):
        answer = run_fresh_process(MODULE, "--case", impl, str(d), str(b), str(tokens),
                                   str(repeat), str(threads or 0), mode, str(int(with_base)))
        if "error" in answer:
            return dict(impl=impl, d=d, b=b, tokens=tokens, error=answer["error"])
        result.update(answer)
    return result


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def format_table(rows: list[dict], targets=CPU_TARGETS, time_unit: str = "s") -> str:
    """Markdown table with ratios to C3A at the same (d, b) and the verdicts on ``targets``
    ``(time, memory)``; times in seconds or (``time_unit="ms"``) milliseconds."""
    time_target, mem_target = targets
    scale = 1e3 if time_unit == "ms" else 1.0
    c3a = {(r["d"], r["b"]): r for r in rows if r["impl"] == "c3a" and "error" not in r}
    headers = ["d", "b / rank", "implementation", f"time ({time_unit})",
               "peak above inputs (MiB)", "x-units", "time / C3A", "peak / C3A", "targets"]
    lines = []
    for r in rows:
        label = r["impl"].split("-")[1] if r["impl"].startswith("lora-") else str(r["b"])
        if "error" in r:
            lines.append([str(r["d"]), label, r["impl"], f"failed: {r['error']}", "", "", "",
                          "", ""])
            continue
        unit = r["tokens"] * r["d"] * 4
        peak = r.get("peak_above_inputs")
        units = "n/a" if peak is None else f"{peak / unit:.2f}"
        ref = c3a.get((r["d"], r["b"])) if r["impl"] == "circfft" else None
        t_ratio = m_ratio = found = ""
        if ref is not None:
            tr = ratio(r["time_s"], ref["time_s"])
            mr = ratio(peak, ref.get("peak_above_inputs"))
            t_ratio, m_ratio = f"{tr:.3f}", "" if mr is None else f"{mr:.3f}"
            found = ", ".join(v for v in (verdict("time", tr, time_target),
                                          verdict("memory", mr, mem_target)) if v)
        lines.append([str(r["d"]), label, r["impl"], f"{r['time_s'] * scale:.3f}", mib(peak, 0),
                      units, t_ratio, m_ratio, found])
    return render_table(headers, lines, markdown=True)


def format_host_table(rows: list[dict], target: float = HOST_TARGET) -> str:
    """Markdown table of host time per call; circfft's ratio to torch.fft's and its verdict."""
    peer = next((r for r in rows if r["call"].startswith("torch.fft")), None)
    lines = []
    for r in rows:
        found = ""
        if peer is not None and r is not peer:
            q = ratio(r["enqueue_s"], peer["enqueue_s"])
            found = f"{q:.2f} ({verdict('host time', q, target)})"
        lines.append([r["call"], str(r["calls"]), f"{r['enqueue_s'] * 1e6:.1f}",
                      f"{r['wall_s'] * 1e6:.1f}", found])
    return render_table(["call (64 x 64 CUDA tensor)", "calls", "host us/call",
                         "us/call incl. final sync", f"host / torch.fft (target <= {target:g})"],
                        lines, markdown=True)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _options(args):
    """Settings of the run: the device's profile, bench's ``--repeat`` and the options after
    ``--ops``."""
    p = argparse.ArgumentParser(prog="circfft bench --ops", add_help=False)
    p.add_argument("--tokens", type=int)
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--blocks", type=int, nargs="+")
    p.add_argument("--ranks", type=int, nargs="+")
    p.add_argument("--threads", type=int)
    p.add_argument("--with-base", action="store_true")
    p.add_argument("--calls", type=int, default=2000)
    extra, unknown = p.parse_known_args(list(getattr(args, "extra_argv", None) or []))
    if unknown:
        raise SystemExit(f"bench --ops: unrecognized arguments: {' '.join(unknown)}")
    device = getattr(args, "device", None) or "cpu"
    repeat = getattr(args, "repeat", None)
    warmup = getattr(args, "warmup", None)
    profiles = CUDA_SETTINGS if device.startswith("cuda") else SETTINGS
    cfg = profiles.settings(bool(getattr(args, "quick", False)), tokens=extra.tokens,
                            dims=extra.dims, blocks=extra.blocks, ranks=extra.ranks,
                            repeat=repeat if isinstance(repeat, int) and repeat > 0 else None)
    cfg.update(threads=extra.threads, with_base=extra.with_base, device=device,
               calls=extra.calls, warmup=warmup if isinstance(warmup, int) else 3)
    bad = {k: v for k, v in dict(tokens=cfg["tokens"], calls=cfg["calls"]).items() if v < 1}
    bad.update({k: v for k in ("dims", "blocks", "ranks") for v in cfg[k] if v < 0})
    if bad:
        raise SystemExit(f"bench --ops: bad values {bad}: sizes and counts must be positive")
    return cfg


def _cases(cfg, have_c3a):
    """``(impl, d, b)`` of every case: circfft and C3A per block size dividing d, LoRA ranks."""
    cases = []
    for d in cfg["dims"]:
        for b in cfg["blocks"]:
            bb = d if b == 0 else b
            if bb < 1 or d % bb:
                continue
            cases.append(("circfft", d, bb))
            if have_c3a:
                cases.append(("c3a", d, bb))
        for r in cfg["ranks"]:
            cases.append((f"lora-{r}", d, 0))
    return cases


def main(args=None) -> int:
    """Run the operator benchmark and print the table; returns the exit status."""
    args = args if args is not None else argparse.Namespace()
    if not importable("torch"):
        print("bench --ops needs torch (pip install 'circfft[torch]')", file=sys.stderr)
        return 2
    cfg = _options(args)
    cuda = cfg["device"].startswith("cuda")
    if cuda:
        from .demo import check_device

        reason = check_device(cfg["device"])
        if reason:
            print(f"bench --ops: {reason}", file=sys.stderr)
            return 2
    have_c3a = importable("peft")
    base = ", base matmul x W^T included" if cfg["with_base"] else ""
    if cuda:
        print(_cuda_header(), flush=True)
        print(f"block-circulant forward + backward, float32, {cfg['device']}, {cfg['tokens']} "
              f"tokens, d_in = d_out = d{base}; CUDA events, median of {cfg['repeat']} after "
              f"{cfg['warmup']} warm-up; peak: torch.cuda.max_memory_allocated minus the "
              "inputs' memory" + ("" if have_c3a else " (peft not installed: no C3A rows)"),
              flush=True)
    else:
        print(f"block-circulant forward + backward, float32, CPU, {cfg['tokens']} tokens, "
              f"d_in = d_out = d{base}; best of {cfg['repeat']}; one fresh process per case"
              + ("" if have_c3a else " (peft not installed: no C3A rows)"), flush=True)
    rows = []
    for impl, d, b in _cases(cfg, have_c3a):
        if cuda:
            try:
                row = run_case_cuda(impl, d, b, cfg["tokens"], cfg["repeat"], cfg["warmup"],
                                    cfg["with_base"])
            except Exception as exc:      # keep going; reported in the table and exit status
                row = dict(impl=impl, d=d, b=b, tokens=cfg["tokens"],
                           error=f"{type(exc).__name__}: {exc}")
        else:
            row = _subprocess_case(impl, d, b, cfg["tokens"], cfg["repeat"], cfg["threads"],
                                   cfg["with_base"])
        rows.append(row)
        if "error" in row:
            print(f"  {impl} d={d} b={b}: failed: {row['error']}", flush=True)
        else:
            print(f"  {impl:8s} d={d:5d} b={b:5d}: {row['time_s']:.4f} s, "
                  f"{mib(row.get('peak_above_inputs'), 0)} MiB", flush=True)
    targets = CUDA_TARGETS if cuda else CPU_TARGETS
    print()
    print(format_table(rows, targets, time_unit="ms" if cuda else "s"))
    print(f"\ntargets: circfft time <= {targets[0]:.3f}x C3A's and peak <= {targets[1]}x "
          "C3A's; x-units = peak / (tokens * d * 4 bytes).")
    host = []
    if cuda:
        host = host_overhead(cfg["calls"])
        print()
        print(format_host_table(host))
        print("host us/call: time until the last of the calls returned, over the calls (no "
              "synchronisation in between); incl. final sync: until the device finished too.")
    path = getattr(args, "json", None)
    if path:
        with open(path, "w") as fh:
            json.dump(dict(config=cfg, rows=rows, host=host), fh, indent=2)
    return 1 if any("error" in r for r in rows) else 0


def _cuda_header() -> str:
    """The device, versions and the route CUDA tensors take (circfft's kernels or torch.fft)."""
    from .info import cuda_tensor_route
    from .measure import device_description

    return (f"# device: {device_description('cuda')}\n"
            f"# circfft on CUDA tensors: {cuda_tensor_route()}")


if __name__ == "__main__":
    if len(sys.argv) == 10 and sys.argv[1] == "--case":
        impl, d, b, tokens, repeat, threads, mode, with_base = sys.argv[2:]
        result = run_case(impl, int(d), int(b), int(tokens), int(repeat), int(threads) or None,
                          mode, bool(int(with_base)))
        print(json.dumps(result))
    else:
        argv = sys.argv[1:]
        sys.exit(main(argparse.Namespace(extra_argv=[a for a in argv if a != "--quick"],
                                         quick="--quick" in argv)))
