"""Argument checking shared by the public API: every error names the argument and what is allowed.

Nothing here writes to the caller's arrays: the API validates everything before it touches data.
"""
from __future__ import annotations

import math
import operator
import os

import numpy as np

__all__ = [
    "NORMS", "check_norm", "scale_for", "check_axis", "check_workers", "check_positive_int",
    "check_real_dtype", "check_out",
]

NORMS = ("backward", "ortho", "forward")


def check_norm(norm) -> str:
    """Return the normalisation mode, ``None`` meaning ``"backward"`` (numpy's default)."""
    if norm is None:
        return "backward"
    if norm not in NORMS:
        raise ValueError(f"norm must be None, 'backward', 'ortho' or 'forward', got {norm!r}")
    return norm


def scale_for(norm: str, n: int, forward: bool) -> float:
    """Factor applied to the unnormalised transform for the given ``norm`` and direction."""
    if n == 0:
        return 1.0                      # an empty transform axis: nothing is scaled
    if norm == "ortho":
        return 1.0 / math.sqrt(n)
    if (norm == "forward") == forward:
        return 1.0 / n
    return 1.0


def check_axis(axis, ndim: int) -> int:
    """Normalise ``axis`` to ``0 <= axis < ndim`` (``ValueError`` when out of range)."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimension(s)")
    return axis % ndim


def check_positive_int(value, name: str) -> int:
    """``value`` as a positive int: an integer type (not bool, not a float or a string)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive integer, got the bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} "
                        f"{value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def check_workers(workers) -> int:
    """scipy.fft's rules: None -> 1; k > 0 -> k; -1 -> all CPUs, -k -> cpu_count + 1 - k."""
    if workers is None:
        return 1
    try:
        workers = operator.index(workers)
    except TypeError:
        raise TypeError(f"workers must be an integer or None, got {type(workers).__name__}") from None
    if workers > 0:
        return workers
    if workers == 0:
        raise ValueError("workers must not be zero")
    ncpu = os.cpu_count() or 1
    if workers < -ncpu:
        raise ValueError(f"workers value out of range; got {workers}, must not be less than {-ncpu}")
    return ncpu + 1 + workers


def dtype_list(names) -> str:
    """``"float32, float64 or float16"``: dtype names for messages."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_real_dtype(dtype, name: str, inplace: bool, ops) -> object:
    """Result dtype of a real transform of an array of ``dtype`` (family ``ops``).

    The dtypes the family keeps (``ops.kept_dtypes``: float32 and float64, plus float16 on
    cupy and float16/bfloat16 on torch) are kept.  A new result promotes integers to float64
    (torch: the default dtype) and, for numpy, float16 to float32, as scipy.fft does; in place
    only the kept dtypes are possible.
    """
    kind = ops.dtype_kind(dtype)
    dname = ops.dtype_name(dtype)
    if kind == "f" and dname in ops.kept_dtypes:
        if ops.family == "numpy" and not np.dtype(dtype).isnative:
            if inplace:
                raise TypeError(f"{name} must be in native byte order to be transformed in "
                                f"place, got {np.dtype(dtype).str}")
            return np.dtype(dtype).newbyteorder("=")
        return dtype
    allowed = dtype_list(ops.kept_dtypes)
    if kind == "c":
        raise TypeError(f"{name} must be real ({allowed}, or integers); got complex dtype "
                        f"{dname}: rdfft works on real data (see circfft.from_rfft for "
                        "complex spectra)")
    if kind not in "fiu":
        raise TypeError(f"{name} must be a real floating-point ({allowed}) or integer array, "
                        f"got dtype {dname}")
    if inplace:
        raise TypeError(f"{name} must be {allowed} to be transformed in place, got {dname}")
    if kind == "f":
        if dname == "float16":
            return ops.dtype("float32")
        raise TypeError(f"{name} must be a real floating-point ({allowed}) or integer array, "
                        f"got dtype {dname}")
    return ops.promoted_int_dtype()


def check_out(out, ops, *, shape, dtype, operands, shape_name="the input's shape",
              result="an in-place transform") -> None:
    """Check ``out`` for a result of ``shape`` and ``dtype`` computed from ``operands`` (a
    list of ``(name, array)``): type, shape, dtype, device, writeable, no elements sharing
    memory, and no partial overlap with an operand (``out`` may be an operand itself)."""
    if not isinstance(out, ops.array_type):
        raise TypeError(f"out must be a {ops.type_name}, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape_name} "
                         f"{tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {ops.dtype_name(out.dtype)}, expected "
                        f"{ops.dtype_name(dtype)}")
    first_name, first = operands[0]
    if ops.device(out) != ops.device(first):
        raise ValueError(f"out is on {ops.device(out)} but {first_name} is on "
                         f"{ops.device(first)}")
    if not ops.writeable(out):
        raise ValueError("out is read-only")
    if ops.self_overlap(out):
        raise ValueError("out has elements sharing memory (a broadcast or expanded view?)")
    for name, t in operands:
        if ops.overlaps(out, t) and not ops.same_view(out, t):
            raise ValueError(f"out overlaps {name} partially; pass out={name} itself for "
                             f"{result}, or a separate array")
