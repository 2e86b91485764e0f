"""Numba kernels of the circulant algebra on the CPU: the slot-layout maps and pair products.

Pair products (:func:`pair_mul`, :func:`pair_conj_dot`) are the packed product of
:func:`circfft._layout.packed_product` in one pass over rows (no temporaries), used by the numba
backend's ``pair_mul`` and by the CPU executor for single-block kernels.  The slot layout maps packed rows ``H[t, j, k]`` to frequency-major slots ``out[k, t, j]`` (and
the imaginary parts to ``out[k, t, nb + j]``): a transpose.  Tiles of ``RB`` rows x 16
frequencies keep the strided side in L1 while the other side is read/written in contiguous
runs.  Every kernel is checked against the plain versions (``packed_product``,
``slots_from_packed`` / ``packed_from_slots``) by ``tests/test_blockcirculant.py``.  Imported
only when used (it imports numba).
"""
import numpy as np
from numba import njit

__all__ = ["to_slots", "from_slots", "pair_mul", "pair_conj_dot"]

_JIT = dict(cache=True, nogil=True, boundscheck=False)


@njit(**_JIT)
def to_slots(H, out):
    """Packed rows ``H`` (t, nb, b) -> slots ``out`` (ceil(b/2), t, 2 nb)."""
    t, nb, b = H.shape
    ni = (b - 1) // 2
    h = b // 2 if b % 2 == 0 and b > 1 else -1
    RB = max(1, 256 // nb)
    for r0 in range(0, t, RB):
        r1 = min(t, r0 + RB)
        for r in range(r0, r1):
            for j in range(nb):
                out[0, r, j] = H[r, j, 0]
                out[0, r, nb + j] = H[r, j, h] if h > 0 else 0.0
        for k0 in range(1, ni + 1, 16):
            for k in range(k0, min(ni + 1, k0 + 16)):
                for r in range(r0, r1):
                    for j in range(nb):
                        out[k, r, j] = H[r, j, k]
                    for j in range(nb):
                        out[k, r, nb + j] = H[r, j, b - k]


@njit(**_JIT)
def from_slots(src, H):
    """Slots ``src`` (ceil(b/2), t, 2 nb) -> packed rows ``H`` (t, nb, b)."""
    t, nb, b = H.shape
    ni = (b - 1) // 2
    h = b // 2 if b % 2 == 0 and b > 1 else -1
    RB = max(1, 256 // nb)
    for r0 in range(0, t, RB):
        r1 = min(t, r0 + RB)
        for r in range(r0, r1):
            for j in range(nb):
                H[r, j, 0] = src[0, r, j]
                if h > 0:
                    H[r, j, h] = src[0, r, nb + j]
        for k0 in range(1, ni + 1, 16):
            for k in range(k0, min(ni + 1, k0 + 16)):
                for r in range(r0, r1):
                    for j in range(nb):
                        H[r, j, k] = src[k, r, j]
                    for j in range(nb):
                        H[r, j, b - k] = src[k, r, nb + j]


@njit(**_JIT)
def pair_mul(A, B, Z, conj):
    """``Z = A * B`` (``conj(A) * B``) on packed rows (rows, n); zero strides broadcast, and
    ``Z`` may be ``A`` or ``B`` (each pair is read before it is written)."""
    t, n = Z.shape
    ni = (n - 1) // 2
    h = n // 2 if n % 2 == 0 and n > 1 else -1
    sign = -1.0 if conj else 1.0
    for r in range(t):
        z0 = A[r, 0] * B[r, 0]
        Z[r, 0] = z0
        if h > 0:
            zh = A[r, h] * B[r, h]
            Z[r, h] = zh
        for k in range(1, ni + 1):
            ar = A[r, k]
            ai = sign * A[r, n - k]
            br = B[r, k]
            bi = B[r, n - k]
            Z[r, k] = ar * br - ai * bi
            Z[r, n - k] = ar * bi + ai * br


@njit(**_JIT)
def pair_conj_dot(A, B, acc):
    """``acc += sum over rows of conj(A) * B`` (packed, ``acc`` float64 of length n)."""
    t, n = A.shape
    ni = (n - 1) // 2
    h = n // 2 if n % 2 == 0 and n > 1 else -1
    for r in range(t):
        acc[0] += np.float64(A[r, 0]) * B[r, 0]
        if h > 0:
            acc[h] += np.float64(A[r, h]) * B[r, h]
        for k in range(1, ni + 1):
            ar = np.float64(A[r, k])
            ai = np.float64(A[r, n - k])
            br = np.float64(B[r, k])
            bi = np.float64(B[r, n - k])
            acc[k] += ar * br + ai * bi
            acc[n - k] += ar * bi - ai * br
