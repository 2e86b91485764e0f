"""Independent reference implementations for the circfft tests (the ONE place for oracles).

Nothing here imports circfft: every oracle is built from ``numpy.fft`` / ``scipy.fft`` (in
float64) or from cos/sin directly, and packs/unpacks the halfcomplex layout with explicit index
loops written independently of ``circfft._layout``.

Packed (FFTW R2HC) layout, ``Y = numpy.fft.rfft(x)``, ``n = len(x)``::

    X[k]   = Re Y[k]   for 0 <= k <= n // 2
    X[n-k] = Im Y[k]   for 0 <  k <  (n + 1) // 2

Stable API (other test modules import these names):

- ``packed_rfft_oracle(x, axis=-1, norm=None)``   -> float64 packed spectrum
- ``packed_irfft_oracle(X, axis=-1, norm=None)``  -> float64 real signal
- ``dft_matrix_packed(n)``                         -> (n, n) float64 matrix R, ``rdfft(x) == R @ x``
- ``tolerance(n, dtype, norm_of_input)``           -> per-element absolute tolerance
- ``TOL_C``                                        -> the constant ``c`` used by ``tolerance``
- ``pack_complex(Y, n, axis=-1)`` / ``unpack_to_complex(X, axis=-1)`` -> loop-based layout maps
- ``packed_weights(n)``                            -> Parseval weights w (1 or 2 per slot)
- ``full_spectrum_norm(X, axis=-1)``               -> ||full complex DFT||_2 from a packed X
- ``scale_factor(n, norm, forward)``               -> numpy's normalisation factor
- ``circular_convolution_oracle(a, b)``            -> explicit O(n^2) loop, last axis
- ``circular_correlation_oracle(a, b)``            -> sum_j a[j] b[(j + m) mod n] (conj product)
- ``assert_close(actual, expected, atol, err_msg="")`` -> elementwise check, reports worst slot
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "TOL_C", "tolerance", "packed_rfft_oracle", "packed_irfft_oracle", "dft_matrix_packed",
    "pack_complex", "unpack_to_complex", "packed_weights", "full_spectrum_norm",
    "scale_factor", "circular_convolution_oracle", "circular_correlation_oracle",
    "assert_close", "row_norms",
]

# ---------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------
#: Constant ``c`` of the per-element error bound ``c * log2(n) * eps * ||x||_2``.
#:
#: Derivation.  For a radix-2 FFT, Higham (Accuracy and Stability of Numerical Algorithms, 2nd
#: ed., Thm 24.2) bounds the normwise error of the unnormalised transform by
#: ``||fl(F x) - F x||_2 <= log2(n) * eta * ||F x||_2 / (1 - log2(n) * eta)`` with
#: ``eta = mu + gamma_4 * (sqrt(2) + mu)`` where ``mu`` is the relative error of the computed
#: twiddles.  With twiddles correctly rounded (mu <= eps) this is ``eta <= (4*sqrt(2) + 2) eps
#: ~= 7.7 eps``, i.e. at most 8 eps of error per butterfly level.  ``||F x||_2 = sqrt(n) ||x||_2``
#: for the full complex DFT, and the rounding errors of the n outputs are spread over all of
#: them (they are sums of ~n log2 n independent rounding terms), so the error of ONE output is
#: about ``||error||_2 / sqrt(n)``: the per-element figure is ``8 * log2(n) * eps * ||x||_2``.
#: We use c = 8 and add one eps*||x||_2 (the final rounding of each stored element), and for
#: float64 we add the same bound again for the float64 oracle itself.  In practice observed
#: errors are 10-100x below this; an off-by-one in the layout or a wrong twiddle produces errors
#: of order ``||x||_2 / sqrt(n)`` or more, orders of magnitude above it.
TOL_C = 8.0


def tolerance(n: int, dtype, norm_of_input: float) -> float:
    """Per-element absolute tolerance for an unnormalised length-``n`` transform in ``dtype``.

    ``norm_of_input`` is the 2-norm of the transformed row (the largest over the rows of a
    batch).  For the inverse direction pass the 2-norm of the FULL complex spectrum (see
    `full_spectrum_norm`), and multiply the result by the normalisation factor applied
    (`scale_factor`), exactly as for the forward direction.

    ``atol = (TOL_C * max(1, log2 n) + 1) * eps(dtype) * norm_of_input`` (+ the same in float64
    for the oracle's own error when dtype is float64).
    """
    n = max(int(n), 1)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    levels = max(1.0, math.log2(n))
    tol = (TOL_C * levels + 1.0) * eps * float(norm_of_input)
    if np.dtype(dtype) == np.float64:
        tol *= 2.0  # the float64 oracle carries an error of the same order
    # Never return exactly zero: a zero input must still match exactly (checked separately).
    return tol


def row_norms(x, axis=-1) -> np.ndarray:
    """2-norm of each 1-d line along ``axis`` (float64)."""
    x64 = np.asarray(x, dtype=np.float64)
    return np.sqrt(np.sum(x64 * x64, axis=axis))


def scale_factor(n: int, norm, forward: bool) -> float:
    """numpy's normalisation factor for a length-``n`` transform (independent of circfft)."""
    if norm is None or norm == "backward":
        return 1.0 if forward else 1.0 / n
    if norm == "ortho":
        return 1.0 / math.sqrt(n)
    if norm == "forward":
        return 1.0 / n if forward else 1.0
    raise ValueError(f"unknown norm {norm!r}")


def assert_close(actual, expected, atol, err_msg: str = "") -> None:
    """Elementwise ``|actual - expected| <= atol`` (atol broadcasts), with a useful message.

    NaN in ``actual`` fails unless ``expected`` is NaN at the same place.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}. {err_msg}"
    err = np.abs(a - e)
    nan_ok = np.isnan(a) & np.isnan(e)
    bad = ~((err <= atol) | nan_ok)
    if np.any(bad):
        idx = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1))),
                               a.shape)
        atol_b = np.broadcast_to(np.asarray(atol, dtype=np.float64), a.shape)
        raise AssertionError(
            f"{int(bad.sum())} of {a.size} elements differ; worst at {idx}: actual={a[idx]!r} "
            f"expected={e[idx]!r} |err|={err[idx]:.3e} atol={atol_b[idx]:.3e}. {err_msg}")


# ---------------------------------------------------------------------------------------------
# Layout maps, written with explicit loops (independent of circfft._layout)
# ---------------------------------------------------------------------------------------------
#: Above this length the layout maps use index arrays (built explicitly from k) instead of a
#: Python loop per slot; `tests/test_oracles.py` checks both paths agree.
LOOP_LIMIT = 4096


def _slots(n: int):
    """(real_k, imag_k, imag_slot): Re Y[k] -> X[k]; Im Y[k] -> X[n-k], written out explicitly."""
    real_k = np.arange(0, n // 2 + 1)
    imag_k = np.arange(1, (n + 1) // 2)
    return real_k, imag_k, n - imag_k


def pack_complex(Y, n: int, axis: int = -1, *, use_loops: bool | None = None) -> np.ndarray:
    """Complex half spectrum (``numpy.fft.rfft`` form, length n//2+1) -> packed real (length n)."""
    Y = np.moveaxis(np.asarray(Y), axis, -1)
    assert Y.shape[-1] == n // 2 + 1, (Y.shape, n)
    X = np.zeros(Y.shape[:-1] + (n,), dtype=np.float64)
    if use_loops is None:
        use_loops = n <= LOOP_LIMIT
    if use_loops:
        for k in range(0, n // 2 + 1):
            X[..., k] = Y[..., k].real
        for k in range(1, (n + 1) // 2):
            X[..., n - k] = Y[..., k].imag
    else:
        real_k, imag_k, imag_slot = _slots(n)
        X[..., real_k] = Y[..., real_k].real
        X[..., imag_slot] = Y[..., imag_k].imag
    return np.moveaxis(X, -1, axis)


def unpack_to_complex(X, axis: int = -1, *, use_loops: bool | None = None) -> np.ndarray:
    """Packed real spectrum (length n) -> complex half spectrum (length n//2+1)."""
    X = np.moveaxis(np.asarray(X, dtype=np.float64), axis, -1)
    n = X.shape[-1]
    Y = np.zeros(X.shape[:-1] + (n // 2 + 1,), dtype=np.complex128)
    if use_loops is None:
        use_loops = n <= LOOP_LIMIT
    if use_loops:
        for k in range(0, n // 2 + 1):
            Y[..., k] = X[..., k]
        for k in range(1, (n + 1) // 2):
            Y[..., k] += 1j * X[..., n - k]
    else:
        real_k, imag_k, imag_slot = _slots(n)
        Y[..., real_k] = X[..., real_k]
        Y[..., imag_k] += 1j * X[..., imag_slot]
    return np.moveaxis(Y, -1, axis)


def packed_rfft_oracle(x, axis: int = -1, norm=None) -> np.ndarray:
    """Packed spectrum of real ``x`` along ``axis``, computed by ``numpy.fft.rfft`` in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    n = x64.shape[axis]
    if x64.size == 0:
        return np.zeros(x64.shape, dtype=np.float64)
    Y = np.fft.rfft(x64, axis=axis, norm=norm)
    return pack_complex(Y, n, axis=axis)


def packed_irfft_oracle(X, axis: int = -1, norm=None) -> np.ndarray:
    """Inverse of `packed_rfft_oracle`: unpack with loops, then ``scipy.fft.irfft`` in float64."""
    import scipy.fft

    X64 = np.asarray(X, dtype=np.float64)
    n = X64.shape[axis]
    if X64.size == 0:
        return np.zeros(X64.shape, dtype=np.float64)
    Y = unpack_to_complex(X64, axis=axis)
    return scipy.fft.irfft(Y, n, axis=axis, norm=norm)


def dft_matrix_packed(n: int) -> np.ndarray:
    """The n x n real matrix R of the packed transform, from cos/sin directly (O(n^2)).

    Row k (0 <= k <= n//2) is ``cos(2 pi j k / n)``; row n-k (0 < k < (n+1)//2) is
    ``-sin(2 pi j k / n)``.  The angle uses the exact integer residue ``(j*k) mod n`` so the
    matrix is accurate to ~1 ulp even for large n.
    """
    j = np.arange(n, dtype=np.int64)
    R = np.zeros((n, n), dtype=np.float64)
    for k in range(0, n // 2 + 1):
        ang = 2.0 * np.pi * ((j * k) % n) / n
        R[k] = np.cos(ang)
    for k in range(1, (n + 1) // 2):
        ang = 2.0 * np.pi * ((j * k) % n) / n
        R[n - k] = -np.sin(ang)
    return R


def packed_weights(n: int) -> np.ndarray:
    """Parseval weights: ``n * sum x^2 == sum w * X^2`` for the packed spectrum X.

    w = 1 at slot 0 and (n even) at slot n/2; w = 2 at every other slot (each packed slot k and
    n-k carries the real/imag part of a coefficient that appears twice in the full DFT).
    """
    w = np.full(n, 2.0)
    if n:
        w[0] = 1.0
    if n % 2 == 0 and n:
        w[n // 2] = 1.0
    return w


def full_spectrum_norm(X, axis: int = -1) -> np.ndarray:
    """2-norm of the full complex DFT described by the packed spectrum X (per line)."""
    X64 = np.moveaxis(np.asarray(X, dtype=np.float64), axis, -1)
    w = packed_weights(X64.shape[-1])
    return np.sqrt(np.sum(w * X64 * X64, axis=-1))


# ---------------------------------------------------------------------------------------------
# Circular convolution by explicit loops
# ---------------------------------------------------------------------------------------------
def _circular_loop(a, b, sign: int) -> np.ndarray:
    """``c[m] = sum_j a[j] * b[(m + sign*j) mod n]`` along the last axis (broadcasting), O(n^2)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = np.broadcast_arrays(a, b)
    n = a.shape[-1]
    c = np.zeros(a.shape, dtype=np.float64)
    for m in range(n):
        for j in range(n):
            c[..., m] += a[..., j] * b[..., (m + sign * j) % n]
    return c


def circular_convolution_oracle(a, b) -> np.ndarray:
    """``c[m] = sum_j a[j] * b[(m - j) mod n]``: the signal whose spectrum is A * B."""
    return _circular_loop(a, b, -1)


def circular_correlation_oracle(a, b) -> np.ndarray:
    """``c[m] = sum_j a[j] * b[(j + m) mod n]``: the signal whose spectrum is conj(A) * B."""
    return _circular_loop(a, b, +1)
