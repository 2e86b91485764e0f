"""Plan tables shared by the CPU backends: twiddle factors and bit-reversal maps, cached.

A plan depends only on the transform length ``n`` and the working dtype, so it is built once
and cached.  Tables are computed in float64 a chunk at a time and rounded once to the working
dtype, which keeps float32 twiddles accurate to half an ulp without full-size float64
temporaries.  The cache is bounded (see :func:`get_plan` and ``docs/algorithm.rst``,
"Memory"): plans up to ``PLAN_CACHE_BYTES`` in all, plus the most recent larger plan, which
:func:`release_plans` (and ``numba_backend.release_scratch``) frees.  The numba backend's
long rows also use :class:`LaneTwiddles`, cached the same way.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

__all__ = ["Plan", "LaneTwiddles", "get_plan", "get_lane_twiddles", "is_power_of_two",
           "plan_bytes", "release_plans", "PLAN_CACHE_BYTES"]

#: Plans are kept, least recently used first out, up to this many bytes of tables in all.
PLAN_CACHE_BYTES = 32 << 20
#: Rows of the tables computed at a time (float64 temporaries of this size only).
_CHUNK = 1 << 16


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and (n & (n - 1)) == 0


class Plan(NamedTuple):
    """Tables for the power-of-two real transform of length ``n`` (``n >= 2``).

    The real transform of length ``n = 2m`` is computed as a complex FFT of length ``m`` on
    ``z[p] = x[2p] + 1j*x[2p+1]`` followed by a split into ``Y_k`` (see ``docs/algorithm.rst``).

    Attributes
    ----------
    n : int
        Real transform length.
    twiddles : ndarray, shape (2 * (3 * n // 4),)
        Interleaved ``cos, -sin`` of ``2*pi*k/n`` for ``k < 3n/4``: ``W^k = exp(-2j*pi*k/n)``.
        The complex FFT of length ``m`` uses ``W^(2k)``; the radix-4 stages need exponents up
        to ``3/4`` of the circle.
    bitrev : ndarray of int32, shape (m,)
        ``bitrev[k]`` is ``k`` with its ``log2(m)`` bits reversed: where the in-place
        decimation-in-frequency FFT leaves ``Z_k``.
    """

    n: int
    twiddles: np.ndarray
    bitrev: np.ndarray


def plan_bytes(n: int, dtype) -> int:
    """Bytes of the tables of a plan: ``3n/4`` complex twiddles and ``n/2`` int32 indices."""
    return 2 * max(1, (3 * n) // 4) * np.dtype(dtype).itemsize + 4 * (n // 2)


def _build(n: int, dtype: np.dtype) -> Plan:
    m = n // 2
    count = max(1, (3 * n) // 4)
    tw = np.empty(2 * count, dtype=dtype)
    for k0 in range(0, count, _CHUNK):
        k = np.arange(k0, min(count, k0 + _CHUNK), dtype=np.float64)
        angle = (2.0 * np.pi / n) * k
        c, s = np.cos(angle), -np.sin(angle)
        # Exact values where the angle is a multiple of pi/4 keep integer inputs exact.
        c[np.abs(c) < 1e-15] = 0.0
        s[np.abs(s) < 1e-15] = 0.0
        tw[2 * k0: 2 * (k0 + k.size): 2] = c
        tw[2 * k0 + 1: 2 * (k0 + k.size): 2] = s
    tw.flags.writeable = False
    bits = m.bit_length() - 1
    rev = np.empty(m, dtype=np.int32)
    for p0 in range(0, m, _CHUNK):
        idx = np.arange(p0, min(m, p0 + _CHUNK), dtype=np.int64)
        r = np.zeros_like(idx)
        for b in range(bits):
            r |= ((idx >> b) & 1) << (bits - 1 - b)
        rev[p0: p0 + idx.size] = r
    rev.flags.writeable = False
    return Plan(n, tw, rev)


class LaneTwiddles(NamedTuple):
    """Twiddles ``W_n^(j k)`` for ``j < lanes``, ``k < n / lanes``, as two small tables whose
    product gives each one (the numba backend's rows longer than ``2**16``, which combine
    the spectra of their ``lanes`` decimated sub-sequences).

    ``W_n^(j k) = A[k % R][j] * B[k // R][j]`` (complex product), ``R`` a power of two near
    ``sqrt(n / lanes)``; row ``r`` of a table holds the ``lanes`` real parts, then the
    ``lanes`` imaginary parts (float64 angles of exactly reduced exponents, rounded once to
    the dtype).  Each product is within a few ulp of ``W_n^(jk)`` (``tests/
    test_numba_kernels.py`` bounds it): far inside the transform's error.  The tables hold
    ``(R + n / (lanes R)) * 2 lanes`` values, about ``4 sqrt(n lanes)``.
    """

    n: int
    lanes: int
    R: int
    A: np.ndarray
    B: np.ndarray


def lane_twiddle_bytes(n: int, lanes: int, dtype) -> int:
    """Bytes of the tables of :func:`get_lane_twiddles`."""
    sub = n // lanes
    R = _lane_split(sub)
    return (R + sub // R) * 2 * lanes * np.dtype(dtype).itemsize


def _lane_split(sub: int) -> int:
    return 1 << ((sub.bit_length() - 1 + 1) // 2)


def _build_lane_twiddles(n: int, lanes: int, dtype: np.dtype) -> LaneTwiddles:
    sub = n // lanes
    R = _lane_split(sub)
    j = np.arange(lanes, dtype=np.int64)

    def table(rows, step):
        k = (np.arange(rows, dtype=np.int64)[:, None] * step * j[None, :]) % n
        angle = (2.0 * np.pi / n) * k
        out = np.empty((rows, 2 * lanes), dtype=dtype)
        out[:, :lanes] = np.cos(angle)
        out[:, lanes:] = -np.sin(angle)
        out = out.reshape(-1)
        out.flags.writeable = False
        return out

    return LaneTwiddles(n, lanes, R, table(R, 1), table(sub // R, R))


_lock = threading.Lock()
_cache: OrderedDict = OrderedDict()     # key -> (tables, bytes), within PLAN_CACHE_BYTES
_large: dict = {}                       # at most one entry larger than the budget


def _cached(key, size: int, build):
    """The cached tables under ``key`` (``size`` bytes), built by ``build()`` when missing:
    least recently used out first beyond ``PLAN_CACHE_BYTES``, and one larger entry kept
    alone until the next such entry."""
    with _lock:
        hit = _cache.get(key) or _large.get(key)
        if hit is not None:
            if key in _cache:
                _cache.move_to_end(key)
            return hit[0]
    tables = build()
    with _lock:
        if size > PLAN_CACHE_BYTES:
            _large.clear()
            _large[key] = (tables, size)
        else:
            _cache[key] = (tables, size)
            total = sum(v[1] for v in _cache.values())
            while total > PLAN_CACHE_BYTES:
                _, (_, old) = _cache.popitem(last=False)
                total -= old
    return tables


def get_plan(n: int, dtype) -> Plan:
    """The cached plan for power-of-two length ``n >= 2`` in ``dtype``.

    Plans are kept least-recently-used first out up to ``PLAN_CACHE_BYTES`` of tables; a
    plan larger than that (``n > 2**21`` in float32) is kept alone until the next such plan
    or :func:`release_plans`.
    """
    if not (n >= 2 and is_power_of_two(n)):
        raise ValueError(f"plans exist for power-of-two n >= 2, got n={n}")
    dtype = np.dtype(dtype)
    return _cached(("plan", n, dtype), plan_bytes(n, dtype), lambda: _build(n, dtype))


def get_lane_twiddles(n: int, lanes: int, dtype) -> LaneTwiddles:
    """The cached :class:`LaneTwiddles` of power-of-two ``n`` and ``lanes`` (same cache and
    budget as the plans)."""
    if not (is_power_of_two(n) and is_power_of_two(lanes) and n >= 4 * lanes):
        raise ValueError(f"lane twiddles need powers of two n >= 4 lanes, got {n}, {lanes}")
    dtype = np.dtype(dtype)
    return _cached(("lanes", n, lanes, dtype), lane_twiddle_bytes(n, lanes, dtype),
                   lambda: _build_lane_twiddles(n, lanes, dtype))


def release_plans() -> None:
    """Free every cached plan (they are rebuilt on the next call that needs them)."""
    with _lock:
        _cache.clear()
        _large.clear()
