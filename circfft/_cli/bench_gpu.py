"""``python -m circfft bench --device cuda``: the CUDA kernels against cuFFT (torch.fft, cupy.fft).

Per row length ``n`` (powers of two, 64 to 65536 by default) a float32 batch of ``--elements``
elements (2**24; ``--elements 67108864`` for 2**26) is transformed with

- ``circfft``: ``rdfft(x, out=x)`` and ``irdfft(x, out=x)`` on a torch CUDA tensor (the CUDA
  kernels through DLPack on torch's current stream) -- ``circfft-cupy`` does the same on a cupy
  array.  ``norm="ortho"`` (one multiply, folded into the kernels' stores) keeps the values
  bounded while the same buffer is transformed again and again;
- ``torch.fft``: ``torch.fft.rfft(x)`` / ``torch.fft.irfft(X, n)`` (cuFFT, out of place);
- ``cupy.fft``: ``cupy.fft.rfft(x)`` / ``cupy.fft.irfft(X, n)``.

Each call is timed alone with CUDA events (median of ``--repeat`` after ``--warmup``).  The
report gives the time, the time per element, the achieved bandwidth (bytes read + bytes written
by the call, divided by its time: ``2 * nbytes`` for an in-place transform) and the extra peak
memory of one call, ``torch.cuda.max_memory_allocated`` minus the memory allocated before it
(peak statistics reset before each case).  So that cupy's allocations (cuFFT work areas, the
CUDA kernels' work buffer for long rows) are counted too, cupy allocates through torch's
caching allocator for the duration of the benchmark (:class:`.measure.PeakMemory`, ``"cuda"``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from .measure import PeakMemory, cuda_event_seconds, format_row, mib
from .options import check_outputs

__all__ = ["main", "build_parser"]

DEFAULT_SIZES = [1 << k for k in range(6, 17)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m circfft bench --device cuda",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda"], default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", metavar="N", default=DEFAULT_SIZES,
                   help="row lengths (default: 64 ... 65536)")
    p.add_argument("--elements", type=int, default=1 << 24, metavar="E",
                   help="elements per call (default 2**24; 67108864 for 2**26)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeat", type=int, default=20, metavar="R")
    p.add_argument("--warmup", type=int, default=3, metavar="K")
    p.add_argument("--methods", nargs="+", default=["circfft", "circfft-cupy", "torch.fft",
                                                     "cupy.fft"],
                   choices=["circfft", "circfft-cupy", "torch.fft", "cupy.fft"])
    p.add_argument("--json", metavar="FILE", help="save the results as JSON")
    return p


def _gpu_or_reason():
    try:
        import torch
    except ImportError as exc:
        return None, f"torch is not installed ({exc})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device (a CPU-only torch build, or no GPU)"
    try:
        import cupy
    except ImportError as exc:
        return None, f"cupy is not installed ({exc}); pip install 'circfft[cuda]'"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "cupy sees no CUDA device"
    except Exception as exc:
        return None, f"cupy sees no CUDA device ({exc})"
    return (torch, cupy), ""


def _use_torch_allocator(torch, cupy):
    """Route cupy's allocations through torch's caching allocator (so peaks include them)."""
    def malloc(size, device):
        return torch.cuda.caching_allocator_alloc(size, device)

    def free(ptr, device):
        torch.cuda.caching_allocator_delete(ptr)

    cupy.cuda.set_allocator(cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc)


def _time(torch, fn, repeat, warmup):
    """Median seconds of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(cuda_event_seconds(torch, fn) for _ in range(repeat))


def _cases(torch, cupy, method, x, n):
    """(direction, callable, bytes moved) for one method on the batch x (torch tensor)."""
    import circfft

    item = x.element_size()
    nbytes = x.numel() * item
    half = x.shape[0] * (n // 2 + 1) * 2 * item              # complex half spectrum
    if method == "circfft":
        return [("forward", lambda: circfft.rdfft(x, norm="ortho", out=x), 2 * nbytes),
                ("inverse", lambda: circfft.irdfft(x, norm="ortho", out=x), 2 * nbytes)]
    if method == "circfft-cupy":
        xc = cupy.from_dlpack(x)
        return [("forward", lambda: circfft.rdfft(xc, norm="ortho", out=xc), 2 * nbytes),
                ("inverse", lambda: circfft.irdfft(xc, norm="ortho", out=xc), 2 * nbytes)]
    if method == "torch.fft":
        X = torch.fft.rfft(x)
        return [("forward", lambda: torch.fft.rfft(x), nbytes + half),
                ("inverse", lambda: torch.fft.irfft(X, n), half + nbytes)]
    xc = cupy.from_dlpack(x)
    Xc = cupy.fft.rfft(xc)
    return [("forward", lambda: cupy.fft.rfft(xc), nbytes + half),
            ("inverse", lambda: cupy.fft.irfft(Xc, n), half + nbytes)]


#: Columns of the report: (header, width, left-aligned).
COLUMNS = [("n", 7, False), ("method", 13, True), ("dir", 8, True), ("time ms", 9, False),
           ("ps/elem", 8, False), ("GB/s", 8, False), ("extra peak MiB", 15, False)]


def _line(cells) -> str:
    return format_row(cells, [w for _, w, _ in COLUMNS],
                      {i for i, (_, _, left) in enumerate(COLUMNS) if left}, sep=" ")


def main(argv=None) -> int:
    """Run the GPU transform benchmark with command-line options ``argv``; return the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, files={"--json": args.json})
    libs, reason = _gpu_or_reason()
    if libs is None:
        print(f"bench --device cuda: no GPU to run on: {reason}", file=sys.stderr)
        return 2
    torch, cupy = libs
    bad = [n for n in args.sizes if n < 2 or n & (n - 1) or n > args.elements]
    if bad:
        print(f"bench --device cuda: --sizes must be powers of two between 2 and --elements, "
              f"got {bad}", file=sys.stderr)
        return 2
    _use_torch_allocator(torch, cupy)
    dtype = getattr(torch, args.dtype)
    print(f"device: {torch.cuda.get_device_name()}, {args.dtype}, {args.elements} elements "
          f"per call, median of {args.repeat}")
    print(_line([header for header, _, _ in COLUMNS]))
    memory = PeakMemory("cuda")
    results = []
    for n in args.sizes:
        rows = args.elements // n
        for method in args.methods:
            x = torch.randn(rows, n, device="cuda", dtype=dtype)
            with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                for direction, fn, moved in _cases(torch, cupy, method, x, n):
                    t = _time(torch, fn, args.repeat, args.warmup)
                    extra = memory.measure(fn)
                    row = {"n": n, "rows": rows, "method": method, "direction": direction,
                           "seconds": t, "ps_per_element": t / x.numel() * 1e12,
                           "bandwidth_GBps": moved / t / 1e9, "extra_peak_bytes": extra}
                    results.append(row)
                    print(_line([str(n), method, direction, f"{t * 1e3:.3f}",
                                 f"{row['ps_per_element']:.2f}", f"{row['bandwidth_GBps']:.0f}",
                                 mib(extra)]), flush=True)
            del x
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "args": vars(args),
                       "results": results}, f, indent=1)
    return 0
