"""Reference backend in plain numpy: the executable specification of the algorithm.

Power-of-two lengths follow the same steps as the compiled backends, vectorised over a block of
rows instead of looped:

1. view the row ``x`` (length ``n = 2m``) as ``m`` complex numbers ``z[p] = x[2p] + 1j*x[2p+1]``;
2. radix-2 decimation-in-frequency FFT of length ``m`` (natural order in, bit-reversed out);
3. split ``Z`` into the half spectrum ``Y`` of ``x`` and store it in the halfcomplex layout.

The inverse runs the three steps backwards (merge, decimation-in-time FFT with conjugate
twiddles, de-interleave).  Other lengths (odd ones too) use ``numpy.fft`` on a block of rows and
repack.  Work happens on chunks of rows (:mod:`circfft._chunking`), so temporaries never grow
with the number of rows.
"""
from __future__ import annotations

import numpy as np

from .._plan import get_plan, is_power_of_two
from ._base import Backend, iter_row_blocks, transform_any_length

__all__ = ["NumpyBackend"]

def _twiddle(plan, step: int, count: int) -> np.ndarray:
    """``exp(-2j*pi*step*j/n)`` for ``j < count`` as complex numbers in the plan's dtype."""
    tw = plan.twiddles
    idx = step * np.arange(count)
    return tw[2 * idx] + 1j * tw[2 * idx + 1]


def _fft_dif(z: np.ndarray, plan) -> np.ndarray:
    """Radix-2 DIF FFT along the last axis of ``z`` (length m): returns Z in bit-reversed order."""
    rows, m = z.shape
    h = m // 2
    while h >= 1:
        w = _twiddle(plan, 2 * (m // (2 * h)), h)          # W_{2h}^j = exp(-2j pi j / (2h))
        g = z.reshape(rows, m // (2 * h), 2, h)
        a, b = g[:, :, 0, :], g[:, :, 1, :]
        z = np.stack((a + b, (a - b) * w), axis=2).reshape(rows, m)
        h //= 2
    return z


def _ifft_dit(z: np.ndarray, plan) -> np.ndarray:
    """Inverse of ``_fft_dif`` times m: bit-reversed in, natural order out, conjugate twiddles."""
    rows, m = z.shape
    h = 1
    while h < m:
        w = np.conj(_twiddle(plan, 2 * (m // (2 * h)), h))
        g = z.reshape(rows, m // (2 * h), 2, h)
        a, c = g[:, :, 0, :], g[:, :, 1, :] * w
        z = np.stack((a + c, a - c), axis=2).reshape(rows, m)
        h *= 2
    return z


def _forward_pow2(x: np.ndarray, scale: float) -> None:
    """In place on the block ``x`` (rows, n), n a power of two >= 2."""
    n = x.shape[1]
    m = n // 2
    plan = get_plan(n, x.dtype)
    Z = _fft_dif(x[:, 0::2] + 1j * x[:, 1::2], plan)[:, plan.bitrev]   # natural order
    k = np.arange(1, (m + 1) // 2)             # pairs (k, m-k) with 1 <= k < m/2
    A, B = Z[:, k], Z[:, m - k]
    E = A + np.conj(B)                          # 2 * even-sample spectrum
    T = (A - np.conj(B)) * -1j * _twiddle(plan, 1, m)[k]    # 2 * W^k * odd-sample spectrum
    half = 0.5 * scale
    Yk, Ymk = E + T, np.conj(E - T)             # 2*Y_k and 2*Y_{m-k}
    out = np.empty_like(x)
    out[:, 0] = scale * (Z[:, 0].real + Z[:, 0].imag)
    out[:, m] = scale * (Z[:, 0].real - Z[:, 0].imag)
    if m >= 2:                                  # Y_{m/2} = conj(Z_{m/2})
        out[:, m // 2] = scale * Z[:, m // 2].real
        out[:, n - m // 2] = -scale * Z[:, m // 2].imag
    out[:, k] = half * Yk.real
    out[:, n - k] = half * Yk.imag
    out[:, m - k] = half * Ymk.real
    out[:, m + k] = half * Ymk.imag
    x[...] = out


def _inverse_pow2(x: np.ndarray, scale: float) -> None:
    """In place on the block ``x`` (rows, n): unnormalised inverse times ``scale``."""
    n = x.shape[1]
    m = n // 2
    plan = get_plan(n, x.dtype)
    ctype = np.result_type(x.dtype, np.complex64)
    Z = np.empty((x.shape[0], m), dtype=ctype)  # 2 * Z, natural order
    Z[:, 0] = (x[:, 0] + x[:, m]) + 1j * (x[:, 0] - x[:, m])
    if m >= 2:
        Z[:, m // 2] = 2 * x[:, m // 2] - 2j * x[:, n - m // 2]
    k = np.arange(1, (m + 1) // 2)
    A = x[:, k] + 1j * x[:, n - k]              # Y_k
    B = x[:, m - k] + 1j * x[:, m + k]          # Y_{m-k}
    E = A + np.conj(B)                          # 2 * E_k
    O = (A - np.conj(B)) * np.conj(_twiddle(plan, 1, m)[k])   # 2 * O_k
    Z[:, k] = E + 1j * O
    Z[:, m - k] = np.conj(E) + 1j * np.conj(O)
    z = _ifft_dit(Z[:, plan.bitrev], plan)      # bit-reversed in, natural order out
    x[:, 0::2] = scale * z.real
    x[:, 1::2] = scale * z.imag


class NumpyBackend(Backend):
    """Plain-numpy reference backend (always available)."""

    name = "numpy"
    family = "numpy"

    def load(self):
        return self

    def execute(self, x: np.ndarray, *, forward: bool, scale: float, workers: int) -> None:
        n = x.shape[-1]
        for block in iter_row_blocks(x):
            if n == 1:
                block *= scale
            elif is_power_of_two(n):
                (_forward_pow2 if forward else _inverse_pow2)(block, scale)
            else:
                transform_any_length(block, forward, scale, workers)
