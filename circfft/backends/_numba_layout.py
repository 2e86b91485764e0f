"""Numba kernels of the slot layout (:mod:`circfft._blockcirculant`), used by the CPU executor.

The slot layout maps packed rows ``H[t, j, k]`` to frequency-major slots ``out[k, t, j]`` (and
the imaginary parts to ``out[k, t, nb + j]``): a transpose.  Tiles of ``RB`` rows x 16
frequencies keep the strided side in L1 while the other side is read/written in contiguous
runs.  Checked against the plain maps ``slots_from_packed`` / ``packed_from_slots`` of
:mod:`circfft._blockcirculant` by ``tests/test_blockcirculant.py``.  Imported only when the
torch backend's CPU executor runs (it imports numba).
"""
from numba import njit

__all__ = ["to_slots", "from_slots"]

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
