"""Plan tables shared by every backend: twiddle factors and bit-reversal maps.

A plan depends only on the transform length ``n`` and the working dtype, so it is built once
and cached (``functools.lru_cache``).  Tables are computed in float64 and rounded once to the
working dtype, which keeps float32 twiddles accurate to half an ulp.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

__all__ = ["Plan", "get_plan", "is_power_of_two"]


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
    bitrev : ndarray of int64, shape (m,)
        ``bitrev[k]`` is ``k`` with its ``log2(m)`` bits reversed: where the in-place
        decimation-in-frequency FFT leaves ``Z_k``.
    """

    n: int
    twiddles: np.ndarray
    bitrev: np.ndarray


@functools.lru_cache(maxsize=64)
def get_plan(n: int, dtype: np.dtype) -> Plan:
    """Return the cached plan for power-of-two length ``n >= 2`` in ``dtype``."""
    if not (n >= 2 and is_power_of_two(n)):
        raise ValueError(f"plans exist for power-of-two n >= 2, got n={n}")
    m = n // 2
    k = np.arange(max(1, (3 * n) // 4), dtype=np.float64)
    angle = (2.0 * np.pi / n) * k
    tw = np.empty(2 * k.size, dtype=np.float64)
    tw[0::2] = np.cos(angle)
    tw[1::2] = -np.sin(angle)
    # Exact values where the angle is a multiple of pi/4 keep integer inputs exact.
    tw[np.abs(tw) < 1e-15] = 0.0
    tw = tw.astype(dtype)
    tw.flags.writeable = False
    bits = m.bit_length() - 1
    idx = np.arange(m, dtype=np.int64)
    rev = np.zeros(m, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    rev.flags.writeable = False
    return Plan(n, tw, rev)
