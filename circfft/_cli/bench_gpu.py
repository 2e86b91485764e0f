"""``python -m circfft bench --device cuda``: the CUDA kernels against the copy bandwidth and cuFFT.

Per storage dtype (float32, float64, float16, bfloat16), direction and row length ``n``
(powers of two, 64 to 65536 by default), a batch of ``--elements`` elements (2**24;
``--elements 67108864`` for 2**26) on the current CUDA device is timed three ways:

- ``copy``: ``y.copy_(x)``, a device-to-device copy of a buffer of the same size, measured in
  the same run: its bandwidth ``2 * nbytes / time`` (read once, written once) is what an
  in-place transform, which also reads and writes its data once, can reach at best;
- ``circfft``: ``rdfft(x, norm="ortho", out=x)`` / ``irdfft(x, norm="ortho", out=x)`` on the
  torch tensor (``--array cupy``: on a cupy view of it), reported as the bandwidth
  ``2 * nbytes / time`` and its fraction of the copy's;
- ``cuFFT``: ``torch.fft.rfft(x, norm="ortho")`` / ``torch.fft.irfft(X, n, norm="ortho")``
  (``--peer cupy.fft``: ``cupy.fft.rfft`` / ``irfft``), out of place; the ratio is circfft's
  time over cuFFT's.  float16 and bfloat16 storage is circfft only, and its ratio is to
  circfft's own float32 time at the same ``n`` and direction.

Each call is timed alone with CUDA events: the median of ``--repeat`` (10) calls after
``--warmup`` (3), the in-place input refilled from a pristine copy, untimed, before every call.
"extra MiB" is the extra peak memory of one circfft call, ``torch.cuda.max_memory_allocated``
minus the memory allocated before it (peak statistics reset first).  So that cupy's allocations
(cuFFT work areas, the work buffer of long rows) count too, cupy allocates through torch's
caching allocator for the duration of the benchmark (:class:`.measure.PeakMemory`, ``"cuda"``).
The header gives the device, the torch and cupy versions, the date and the command.
"""
from __future__ import annotations

import argparse
import json
import sys

from .info import CUPY_DISTS, dist_version
from .measure import PeakMemory, cuda_median_seconds, device_description, mib, render_table, \
    run_header
from .options import check_outputs

__all__ = ["main", "build_parser", "measure", "format_table", "DTYPES", "HALF"]

DEFAULT_SIZES = [1 << k for k in range(6, 17)]
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: Half-precision storage: circfft only (computed in float32), compared with its float32 time.
HALF = ("float16", "bfloat16")
DIRECTIONS = {"rdfft": "forward", "irdfft": "inverse"}
LABELS = {"forward": "rdfft", "inverse": "irdfft"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m circfft bench --device cuda",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda"], default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", metavar="N", default=DEFAULT_SIZES,
                   help="row lengths, powers of two (default: 64 ... 65536)")
    p.add_argument("--elements", type=int, default=1 << 24, metavar="E",
                   help="elements per call (default 2**24; 67108864 for 2**26)")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES),
                   help="storage dtypes (default: all; half precision is circfft only)")
    p.add_argument("--directions", nargs="+", choices=list(DIRECTIONS),
                   default=list(DIRECTIONS), help="transform directions (default: both)")
    p.add_argument("--repeat", type=int, default=10, metavar="R",
                   help="timed calls per case; the median is reported (default 10)")
    p.add_argument("--warmup", type=int, default=3, metavar="K")
    p.add_argument("--peer", choices=["torch.fft", "cupy.fft"], default="torch.fft",
                   help="the cuFFT caller circfft is compared with (default torch.fft)")
    p.add_argument("--array", choices=["torch", "cupy"], default="torch",
                   help="the array circfft transforms: the torch tensor or a cupy view of it")
    p.add_argument("--json", metavar="FILE", help="save the results as JSON")
    return p


def check_args(args) -> str | None:
    """Why the options cannot run (sizes, counts), or None."""
    bad = [n for n in args.sizes if n < 2 or n & (n - 1) or n > args.elements]
    if bad:
        return f"--sizes must be powers of two between 2 and --elements, got {bad}"
    if args.repeat < 1 or args.warmup < 0:
        return "--repeat must be positive and --warmup >= 0"
    return None


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
        return None, (f"cupy, which compiles circfft's CUDA kernels, is not installed ({exc}); "
                      "`python -m circfft info` says which wheel matches torch")
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


# ---------------------------------------------------------------------------------------------
# Measuring (needs a GPU)
# ---------------------------------------------------------------------------------------------
def _calls(torch, cupy, args, x, n, forward):
    """``(circfft call, peer call or None)`` for one direction on the batch ``x``."""
    import circfft

    fn = circfft.rdfft if forward else circfft.irdfft
    name = str(x.dtype).removeprefix("torch.")
    # cupy has no bfloat16: that dtype stays a torch tensor
    target = cupy.from_dlpack(x) if args.array == "cupy" and name != "bfloat16" else x
    mine = lambda: fn(target, norm="ortho", out=target)        # noqa: E731
    if name in HALF:
        return mine, None
    if args.peer == "torch.fft":
        if forward:
            return mine, lambda: torch.fft.rfft(x, norm="ortho")
        X = torch.fft.rfft(x, norm="ortho")
        return mine, lambda: torch.fft.irfft(X, n, norm="ortho")
    xc = cupy.from_dlpack(x)
    if forward:
        return mine, lambda: cupy.fft.rfft(xc, norm="ortho")
    Xc = cupy.fft.rfft(xc, norm="ortho")
    return mine, lambda: cupy.fft.irfft(Xc, n, norm="ortho")


def measure(torch, cupy, args, progress=print) -> list[dict]:
    """One row per (dtype, n, direction): copy, circfft and peer times, circfft's extra peak."""
    memory = PeakMemory("cuda")
    rows = []
    for name in args.dtype:
        dtype = getattr(torch, name)
        for n in args.sizes:
            count = args.elements // n
            pristine = torch.randn(count, n, device="cuda").to(dtype)
            x, copy = torch.empty_like(pristine), torch.empty_like(pristine)
            refill = lambda: x.copy_(pristine)                   # noqa: E731
            refill()
            copy_s = cuda_median_seconds(torch, lambda: copy.copy_(x), args.repeat, args.warmup)
            for direction in (DIRECTIONS[d] for d in args.directions):
                refill()                    # the peer's inverse reads rfft of these values
                with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                    mine, peer = _calls(torch, cupy, args, x, n, direction == "forward")
                    t = cuda_median_seconds(torch, mine, args.repeat, args.warmup, refill)
                    refill()
                    extra = memory.measure(mine)
                    peer_s = None if peer is None else \
                        cuda_median_seconds(torch, peer, args.repeat, args.warmup)
                row = dict(dtype=name, direction=direction, n=n, rows=count,
                           nbytes=x.numel() * x.element_size(), copy_s=copy_s, circfft_s=t,
                           peer=None if peer is None else args.peer, peer_s=peer_s,
                           extra_peak_bytes=extra)
                rows.append(row)
                progress(f"  {name} {LABELS[direction]} n={n}: circfft {t * 1e3:.3f} ms")
            del pristine, x, copy
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# Report (no GPU needed)
# ---------------------------------------------------------------------------------------------
def format_table(rows: list[dict], peer: str = "torch.fft") -> str:
    """Rows (dtype, direction, n): copy bandwidth, circfft time, bandwidth and share of the
    copy's, cuFFT time and the ratio to it (half precision: to circfft's float32 time)."""
    f32 = {(r["direction"], r["n"]): r["circfft_s"] for r in rows if r["dtype"] == "float32"}
    headers = ["dtype", "dir", "n", "rows", "copy GB/s", "circfft ms", "circfft GB/s",
               "of copy", f"{peer} ms", f"/ {peer}", "/ float32", "extra MiB"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    order = {"forward": 0, "inverse": 1}
    lines, previous = [], None
    for r in sorted(rows, key=lambda r: (dtypes.index(r["dtype"]), order[r["direction"]],
                                         r["n"])):
        if previous is not None and (r["dtype"], r["direction"]) != previous:
            lines.append(None)
        previous = (r["dtype"], r["direction"])
        moved = 2 * r["nbytes"]
        half = r["dtype"] in HALF
        base = f32.get((r["direction"], r["n"])) if half else None
        lines.append([
            r["dtype"], LABELS[r["direction"]], str(r["n"]), str(r["rows"]),
            f"{moved / r['copy_s'] / 1e9:.0f}", f"{r['circfft_s'] * 1e3:.3f}",
            f"{moved / r['circfft_s'] / 1e9:.0f}", f"{100 * r['copy_s'] / r['circfft_s']:.0f}%",
            "-" if r.get("peer_s") is None else f"{r['peer_s'] * 1e3:.3f}",
            "-" if r.get("peer_s") is None else f"{r['circfft_s'] / r['peer_s']:.2f}",
            "-" if base is None else f"{r['circfft_s'] / base:.2f}",
            mib(r.get("extra_peak_bytes"))])
    return render_table(headers, lines, left={0, 1})


def footer(peer: str) -> list[str]:
    return [
        "# copy GB/s: 2 * nbytes / time of y.copy_(x) on a buffer of the same size; circfft "
        "GB/s: 2 * nbytes / its time (in place: read once, written once); of copy: circfft's "
        "bandwidth over the copy's.",
        f"# / {peer}: circfft time over {peer}'s (out of place, norm='ortho'); / float32: "
        "half-precision storage over circfft's float32 time (same n, direction); "
        "extra MiB: torch.cuda.max_memory_allocated during one circfft call minus the memory "
        "allocated before it.",
    ]


def versions(torch) -> dict:
    """torch (with its CUDA) and the installed cupy wheels."""
    found = {"torch": f"{torch.__version__} (CUDA {torch.version.cuda})"}
    for dist in (*CUPY_DISTS.values(), "cupy"):
        if dist_version(dist):
            found[dist] = dist_version(dist)
    return found


def main(argv=None, command: str | None = None) -> int:
    """Run the GPU transform benchmark with command-line options ``argv``; return the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, files={"--json": args.json})
    problem = check_args(args)
    if problem:
        print(f"bench --device cuda: {problem}", file=sys.stderr)
        return 2
    libs, reason = _gpu_or_reason()
    if libs is None:
        print(f"bench --device cuda: no GPU to run on: {reason}", file=sys.stderr)
        return 2
    torch, cupy = libs
    _use_torch_allocator(torch, cupy)
    header = run_header(command, versions(torch), device_description("cuda"))
    header.append(f"# {args.elements} elements per call; CUDA events, median of {args.repeat} "
                  f"after {args.warmup} warm-up; norm='ortho'; circfft in place on "
                  f"{args.array} arrays")
    print("\n".join(header), flush=True)
    rows = measure(torch, cupy, args, progress=lambda line: print(line, file=sys.stderr))
    print(format_table(rows, args.peer))
    print("\n".join(footer(args.peer)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "device": torch.cuda.get_device_name(),
                       "versions": versions(torch), "args": vars(args), "results": rows},
                      f, indent=1)
    return 0
