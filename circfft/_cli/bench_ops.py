"""``python -m circfft bench --ops``: forward + backward of the block-circulant product, timed.

Compares, float32 on CPU, for ``d_in = d_out = d`` and ``T`` tokens:

- ``circfft``: :func:`circfft.nn.functional.block_circulant_matmul` (saves the packed spectrum
  of ``x`` only);
- ``c3a``: PEFT's ``BlockCircularConvolution`` (``peft.tuners.c3a``) divided by ``d`` as in its
  layer, at the same ``(d, b)``;
- ``lora-r``: the dense LoRA product ``(x A^T) B^T`` at rank ``r``, for reference.

Each case runs twice, each time in a fresh subprocess: inputs (``x``, kernel, incoming
gradient) are allocated and one untimed forward + backward warms up.  The first process reports
the best of ``--repeat`` timed runs with the default allocator.  The second fixes glibc's mmap
threshold at 64 KiB from the start (every larger buffer is mapped when allocated and unmapped
when freed), resets the resident-set peak (``/proc/self/clear_refs``) and measures one
forward + backward: "peak above inputs" is that peak minus the resident size just before it,
so it counts what the operator allocates (saved tensors, temporaries, output, gradients) the
same way for every implementation (:class:`.measure.PeakMemory`, ``"rss"``).

Extra options (after ``--ops``): ``--tokens T``, ``--dims D [D ...]``, ``--blocks B [B ...]``
(``0`` means ``b = d``), ``--ranks R [R ...]``, ``--threads N``.  ``--quick``: ``T = 1024``,
``d = 768``.  ``--json FILE`` saves the rows.
"""
from __future__ import annotations

import argparse
import json
import sys

from .info import importable
from .measure import (PeakMemory, Profiles, fix_mmap_threshold, mib, render_table,
                      run_fresh_process, time_call)

__all__ = ["main", "run_case", "format_table", "SETTINGS"]

#: This module's name, also when it runs as ``__main__`` (the per-case subprocesses).
MODULE = "circfft._cli.bench_ops"
#: Settings of a full run and of ``--quick``.
SETTINGS = Profiles(
    full=dict(tokens=8192, dims=(768, 4096), blocks=(64, 256, 0), ranks=(8, 16), repeat=3),
    quick=dict(tokens=1024, dims=(768,), blocks=(64, 256, 0), ranks=(8, 16), repeat=2))
MEM_TARGET = 0.5          # peak memory at most 0.5x C3A's
TIME_TARGET = 1 / 1.5     # time at most 1/1.5 of C3A's


# ---------------------------------------------------------------------------------------------
# One case, in a fresh process
# ---------------------------------------------------------------------------------------------
def run_case(impl: str, d: int, b: int, tokens: int, repeat: int, threads: int | None,
             mode: str = "both") -> dict:
    """Measure one case in this process (``mode``: "time", "memory" or "both")."""
    if mode == "memory":
        # Every buffer of 64 KiB or more is mapped when allocated and unmapped when freed, so
        # the resident peak counts exactly the live buffers.
        fix_mmap_threshold(65536)
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(tokens, d, requires_grad=True)
    gy = torch.randn(tokens, d)
    if impl == "circfft":
        from circfft.nn import functional as F

        kernel = [(torch.randn(d // b, d // b, b) / d).requires_grad_()]

        def step():
            F.block_circulant_matmul(kernel[0], x).backward(gy)
    elif impl == "c3a":
        from peft.tuners.c3a.utils import BlockCircularConvolution

        kernel = [torch.randn(d // b, d // b, b).requires_grad_()]

        def step():
            (BlockCircularConvolution.apply(x, kernel[0]) / d).backward(gy)
    elif impl.startswith("lora-"):
        r = int(impl.split("-", 1)[1])
        kernel = [(torch.randn(r, d) / d ** 0.5).requires_grad_(),
                  (torch.randn(d, r) / r ** 0.5).requires_grad_()]

        def step():
            ((x @ kernel[0].T) @ kernel[1].T).backward(gy)
    else:
        raise ValueError(f"unknown implementation {impl!r}")

    def clear():
        for t in [x, *kernel]:
            t.grad = None

    step()                      # warm-up (numba/peft imports, caches)
    result = dict(impl=impl, d=d, b=b, tokens=tokens, params=sum(t.numel() for t in kernel),
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


def _subprocess_case(impl, d, b, tokens, repeat, threads) -> dict:
    """Time in one fresh process (default allocator), memory in another (fixed mmap threshold)."""
    result = {}
    for mode in ("time", "memory"):
        answer = run_fresh_process(MODULE, "--case", impl, str(d), str(b), str(tokens),
                                   str(repeat), str(threads or 0), mode)
        if "error" in answer:
            return dict(impl=impl, d=d, b=b, tokens=tokens, error=answer["error"])
        result.update(answer)
    return result


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------
def format_table(rows: list[dict]) -> str:
    """Markdown table with ratios to C3A at the same (d, b) and the target verdicts."""
    c3a = {(r["d"], r["b"]): r for r in rows if r["impl"] == "c3a" and "error" not in r}
    headers = ["d", "b / rank", "implementation", "time (s)", "peak above inputs (MiB)",
               "x-units", "time / C3A", "peak / C3A", "targets"]
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
        t_ratio = m_ratio = verdict = ""
        if ref is not None:
            tr = r["time_s"] / ref["time_s"]
            t_ratio = f"{tr:.3f}"
            verdict = "time ok" if tr <= TIME_TARGET else "time MISSED"
            if peak is not None and ref.get("peak_above_inputs"):
                mr = peak / ref["peak_above_inputs"]
                m_ratio = f"{mr:.3f}"
                verdict += ", memory ok" if mr <= MEM_TARGET else ", memory MISSED"
        lines.append([str(r["d"]), label, r["impl"], f"{r['time_s']:.3f}", mib(peak, 0), units,
                      t_ratio, m_ratio, verdict])
    return render_table(headers, lines, markdown=True)


def _options(args):
    """Settings of the run: the profile, bench's ``--repeat`` and the options after ``--ops``."""
    p = argparse.ArgumentParser(prog="circfft bench --ops", add_help=False)
    p.add_argument("--tokens", type=int)
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--blocks", type=int, nargs="+")
    p.add_argument("--ranks", type=int, nargs="+")
    p.add_argument("--threads", type=int)
    extra, unknown = p.parse_known_args(list(getattr(args, "extra_argv", None) or []))
    if unknown:
        raise SystemExit(f"bench --ops: unrecognized arguments: {' '.join(unknown)}")
    repeat = getattr(args, "repeat", None)
    cfg = SETTINGS.settings(bool(getattr(args, "quick", False)), tokens=extra.tokens,
                            dims=extra.dims, blocks=extra.blocks, ranks=extra.ranks,
                            repeat=repeat if isinstance(repeat, int) and repeat > 0 else None)
    cfg["threads"] = extra.threads
    return cfg


def main(args=None) -> int:
    """Run the operator benchmark and print the table; returns the exit status."""
    args = args if args is not None else argparse.Namespace()
    if not importable("torch"):
        print("bench --ops needs torch (pip install 'circfft[torch]')", file=sys.stderr)
        return 2
    cfg = _options(args)
    have_c3a = importable("peft")
    cases = []
    for d in cfg["dims"]:
        for b in cfg["blocks"]:
            bb = d if b == 0 else b
            if d % bb:
                continue
            cases.append(("circfft", d, bb))
            if have_c3a:
                cases.append(("c3a", d, bb))
        for r in cfg["ranks"]:
            cases.append((f"lora-{r}", d, 0))
    print(f"block-circulant forward + backward, float32, CPU, {cfg['tokens']} tokens, "
          f"d_in = d_out = d; best of {cfg['repeat']}; one fresh process per case"
          + ("" if have_c3a else " (peft not installed: no C3A rows)"), flush=True)
    rows = []
    for impl, d, b in cases:
        row = _subprocess_case(impl, d, b, cfg["tokens"], cfg["repeat"], cfg["threads"])
        rows.append(row)
        if "error" in row:
            print(f"  {impl} d={d} b={b}: failed: {row['error']}", flush=True)
        else:
            print(f"  {impl:8s} d={d:5d} b={b:5d}: {row['time_s']:.3f} s, "
                  f"{mib(row.get('peak_above_inputs'), 0)} MiB", flush=True)
    print()
    print(format_table(rows))
    print(f"\ntargets: circfft peak <= {MEM_TARGET}x C3A's and time <= 1/1.5 = "
          f"{TIME_TARGET:.3f}x C3A's; x-units = peak / (tokens * d * 4 bytes).")
    path = getattr(args, "json", None)
    if path:
        with open(path, "w") as fh:
            json.dump(dict(config=cfg, rows=rows), fh, indent=2)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "--case":
        impl, d, b, tokens, repeat, threads, mode = sys.argv[2:]
        result = run_case(impl, int(d), int(b), int(tokens), int(repeat), int(threads) or None,
                          mode)
        print(json.dumps(result))
    else:
        argv = sys.argv[1:]
        sys.exit(main(argparse.Namespace(extra_argv=[a for a in argv if a != "--quick"],
                                         quick="--quick" in argv)))
