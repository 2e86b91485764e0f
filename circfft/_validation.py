"""Argument checking shared by the public API: every error names the argument and what is allowed.

Nothing here writes to the caller's arrays: the API validates everything before it touches data.
"""
from __future__ import annotations

import operator
import os

import numpy as np

__all__ = [
    "NORMS", "check_norm", "scale_for", "check_axis", "check_workers",
    "check_real_dtype", "check_out", "same_view",
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
    if norm == "ortho":
        return 1.0 / np.sqrt(n)
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


def check_real_dtype(dtype: np.dtype, name: str, inplace: bool) -> np.dtype:
    """Result dtype for a real transform of an array of ``dtype``.

    float32 and float64 are kept.  A new result promotes integers to float64 and float16 to
    float32 (as scipy.fft does); in place, only float32 and float64 are possible.
    """
    dtype = np.dtype(dtype)
    allowed = "float32 or float64"
    native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
    if native in (np.float32, np.float64):
        if dtype.isnative:
            return dtype
        if inplace:
            raise TypeError(f"{name} must be in native byte order to be transformed in place, "
                            f"got {dtype.str}")
        return native
    if inplace:
        raise TypeError(f"{name} must be {allowed} to be transformed in place, got {dtype}")
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real ({allowed}, or integers); got complex dtype {dtype}: "
                        "rdfft works on real data (see circfft.from_rfft for complex spectra)")
    raise TypeError(f"{name} must be a real floating-point ({allowed}) or integer array, "
                    f"got dtype {dtype}")


def same_view(a, b) -> bool:
    """True when ``a`` and ``b`` are numpy arrays viewing exactly the same elements."""
    if a is b:
        return True
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    return (a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def check_out(out, x: np.ndarray, dtype: np.dtype) -> None:
    """Check a separate ``out`` array for the result of transforming ``x``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, expected the input's shape {x.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if np.shares_memory(out, x):
        raise ValueError("out overlaps x partially; pass out=x for an in-place transform "
                         "or a separate array")


def strides_self_overlap(shape, strides) -> bool:
    """True when distinct indices of an array of this ``shape`` and ``strides`` (any unit) may
    address the same memory, e.g. a broadcast or expanded view.  Sufficient test: sort the
    axes by stride; each must step past everything the smaller ones reach."""
    reach = 0
    for stride, size in sorted((abs(s), n) for n, s in zip(shape, strides) if n > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def check_device_out(out, x, dtype, *, array_type, type_name: str, noun: str, hint: str,
                     self_overlap, overlaps) -> None:
    """Check a separate ``out`` for the result of transforming ``x`` on a device backend
    (torch, cupy): type, shape, dtype, device, no internal overlap, no overlap with ``x``.
    ``self_overlap(a)`` and ``overlaps(a, b)`` are the family's memory tests."""
    if not isinstance(out, array_type):
        raise TypeError(f"out must be a {type_name}, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected the input's shape "
                         f"{tuple(x.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if out.device != x.device:
        raise ValueError(f"out is on {out.device} but x is on {x.device}")
    if self_overlap(out):
        raise ValueError(f"out has elements sharing memory ({hint})")
    if overlaps(out, x):
        raise ValueError("out overlaps x partially; pass out=x for an in-place transform "
                         f"or a separate {noun}")
