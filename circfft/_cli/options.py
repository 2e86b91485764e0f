"""Up-front checks of the options that name output files, made before any measuring starts.

A benchmark or the demo can run for minutes; an output it cannot write (a missing directory,
no matplotlib for ``--plot``) is reported at once, as argparse reports a bad option: usage,
an error naming the option, exit status 2.
"""
from __future__ import annotations

import os

__all__ = ["file_problem", "directory_problem", "matplotlib_problem", "check_outputs"]


def file_problem(path: str) -> str | None:
    """Why a file cannot be written at ``path``; None when nothing stands in the way."""
    if os.path.isdir(path):
        return "is a directory"
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        return f"directory {parent!r} {what}"
    if not os.access(parent, os.W_OK):
        return f"directory {parent!r} is not writable"
    return None


def directory_problem(path: str) -> str | None:
    """Why directory ``path`` cannot be created (or written into); None when it can."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing!r} is not a directory"
    if not os.access(existing, os.W_OK):
        return f"{existing!r} is not writable"
    return None


def matplotlib_problem() -> str | None:
    """Why matplotlib cannot draw a plot here (it does not import); None when it can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"drawing the plot needs matplotlib, which does not import ({exc})"
    return None


def check_outputs(parser, files=None, directories=None, plots=()) -> None:
    """``parser.error`` (exit status 2) for the first output option that cannot be honoured.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The (sub)command's parser: its usage goes with the error.
    files, directories : dict, optional
        Option name -> the path it was given (None: option not given), for options naming a
        file to write and a directory to create.
    plots : iterable of str
        The options among ``files`` that draw a plot (they need matplotlib).
    """
    for option, path in (files or {}).items():
        if path is None:
            continue
        problem = file_problem(path)
        if problem is None and option in plots:
            problem = matplotlib_problem()
        if problem:
            parser.error(f"{option} {path}: {problem}")
    for option, path in (directories or {}).items():
        if path is not None and (problem := directory_problem(path)):
            parser.error(f"{option} {path}: {problem}")
