"""Independent reference implementations for the circfft tests (the ONE place for oracles).

Nothing here imports circfft: every oracle is built from ``numpy.fft`` / ``scipy.fft`` (in
float64) or from cos/sin directly (in float64 or extended precision), and packs/unpacks the
halfcomplex layout with explicit index loops written independently of ``circfft._layout``.

Packed (FFTW R2HC) layout, ``Y = numpy.fft.rfft(x)``, ``n = len(x)``::

    X[k]   = Re Y[k]   for 0 <= k <= n // 2
    X[n-k] = Im Y[k]   for 0 <  k <  (n + 1) // 2

Stable API (other test modules import these names):

- ``packed_rfft_oracle(x, axis=-1, norm=None)``   -> float64 packed spectrum
- ``packed_irfft_oracle(X, axis=-1, norm=None)``  -> float64 real signal
- ``dft_matrix_packed(n)``                         -> (n, n) float64 matrix R, ``rdfft(x) == R @ x``
- ``extended_rdfft_oracle(x)`` / ``extended_irdfft_oracle(X)`` -> O(n^2) DFT in extended
  precision (numpy.longdouble), no FFT at all: independent of numpy.fft for every length
- ``tolerance(n, dtype, norm_of_input)``           -> per-element absolute tolerance
- ``fft_relative_error(n, dtype)``                 -> normwise relative error of one transform
- ``round_trip_tolerance(n, dtype, norm)``         -> per-element bound of irdfft(rdfft(x))
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

import functools
import math

import numpy as np

__all__ = [
    "TOL_C", "tolerance", "fft_relative_error", "round_trip_tolerance", "packed_rfft_oracle",
    "packed_irfft_oracle", "dft_matrix_packed", "extended_rdfft_oracle", "extended_irdfft_oracle",
    "pack_complex", "unpack_to_complex", "packed_weights", "full_spectrum_norm",
    "scale_factor", "circular_convolution_oracle", "circular_correlation_oracle",
    "assert_close", "row_norms",
]

# ---------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------
#: Constant ``c`` of the normwise error bound ``c * log2(n) * eps`` of one transform.
#:
#: Derivation.  Higham (Accuracy and Stability of Numerical Algorithms, 2nd ed., Thm 24.2)
#: bounds the error of a radix-2 FFT normwise: ``||fl(F x) - F x||_2 <= log2(n) * eta *
#: ||F x||_2 / (1 - log2(n) * eta)`` with ``eta = mu + gamma_4 * (sqrt(2) + mu)``, ``mu`` the
#: relative error of the computed twiddles.  Correctly rounded twiddles (mu <= eps) give
#: ``eta <= (4 sqrt(2) + 2) eps ~= 7.7 eps``: at most 8 eps per butterfly level, c = 8.  One
#: more eps covers the final rounding of each stored element (the packing, the scale).
#:
#: The bound is on the 2-norm of the whole error vector, and that is all a per-element check
#: may rely on: ``|err_k| <= ||err||_2``.  The error of ONE output is not ``||err||_2 /
#: sqrt(n)`` in general -- that holds for random inputs, whose rounding errors spread over all
#: outputs, but a concentrated spectrum (a constant row, a pure tone) puts rounding errors of
#: the size of ``eps * max|X|`` into slots whose exact value is 0, and ``max|X|`` can be
#: ``sqrt(n) ||x||_2``.  So the per-element tolerance is the whole normwise bound::
#:
#:     |fl(X)_k - X_k| <= (c log2(n) + 1) * eps * ||F x||_2,   ||F x||_2 = sqrt(n) ||x||_2
#:
#: (``F`` the full complex DFT; a packed slot is the real or imaginary part of one of its
#: entries, so it is bounded the same way).  The other lengths go through ``numpy.fft``'s
#: mixed-radix / Bluestein transforms, whose normwise errors are of the same ``log2(n) eps``
#: order (the constant ``c = 8`` leaves room for it).  For float64 the bound is doubled: the
#: float64 oracles carry an error of the same order.  Observed errors on random rows are
#: 10-1000x below the bound; a layout bug (a slot off by one, a sign) moves O(||x||_2) per
#: element, which is above it for every n up to 2**24 in both dtypes (``test_oracles.py``).
TOL_C = 8.0


def fft_relative_error(n: int, dtype) -> float:
    """Normwise relative error bound of one unnormalised length-``n`` transform in ``dtype``:
    ``||fl(F x) - F x||_2 <= fft_relative_error(n, dtype) * ||F x||_2``.

    ``(TOL_C * max(1, log2 n) + 1) * eps(dtype)``, doubled for float64 (the float64 oracle's
    own error).  See the derivation above `TOL_C`.
    """
    n = max(int(n), 1)
    eps = float(np.finfo(np.dtype(dtype)).eps)
    rel = (TOL_C * max(1.0, math.log2(n)) + 1.0) * eps
    if np.dtype(dtype) == np.float64:
        rel *= 2.0  # the float64 oracle carries an error of the same order
    return rel


def tolerance(n: int, dtype, norm_of_input: float) -> float:
    """Per-element absolute tolerance for an unnormalised length-``n`` transform in ``dtype``.

    ``norm_of_input`` is the 2-norm of the transformed line (the largest over the rows of a
    batch).  For the inverse direction pass the 2-norm of the FULL complex spectrum (see
    `full_spectrum_norm`), and multiply the result by the normalisation factor applied
    (`scale_factor`), exactly as for the forward direction.

    ``atol = fft_relative_error(n, dtype) * sqrt(n) * norm_of_input``: the normwise bound of
    Higham's Thm 24.2 on ``||F x||_2 = sqrt(n) ||x||_2``, which bounds every element of the
    error for every input (see `TOL_C`).  Zero for a zero input: zeros must match exactly.
    """
    n = max(int(n), 1)
    return fft_relative_error(n, dtype) * math.sqrt(n) * float(norm_of_input)


def round_trip_tolerance(n: int, dtype, norm_of_signal: float) -> float:
    """Per-element bound for ``irdfft(rdfft(x))`` (any ``norm``) against ``x``.

    The forward error ``e`` has ``||e||_2 <= rel * sqrt(n) ||x||_2`` (rel =
    `fft_relative_error`; ``sqrt(2)`` more for the full spectrum, each packed pair appearing
    twice in it), and reaches the signal through ``F^* / n``, which shrinks 2-norms by
    ``sqrt(n)``: ``sqrt(2) rel ||x||_2``.  The inverse adds its own ``rel * sqrt(n) *
    ||X_full||_2 / n = rel ||x||_2``.  Normalisations cancel.  Total ``(1 + sqrt 2) rel
    ||x||_2``, per element because it bounds the 2-norm.  ``norm_of_signal`` is ``||x||_2``
    (for ``rdfft(irdfft(X))`` pass ``||X_full||_2`` and multiply by ``sqrt(n)`` -- the same
    argument on the spectrum side).
    """
    return (1.0 + math.sqrt(2.0)) * fft_relative_error(n, dtype) * float(norm_of_signal)


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


#: Rows of the cos/sin index table gathered at once by the extended-precision DFT (memory).
_EXT_BLOCK_ELEMENTS = 2**20


@functools.lru_cache(maxsize=16)
def _extended_cos_sin(n: int):
    """``cos(2 pi m / n)``, ``sin(2 pi m / n)`` for ``m < n`` in ``numpy.longdouble``.

    pi comes from ``4 atan(1)`` in extended precision; the angle of entry ``(j, k)`` is later
    taken at the exact integer residue ``(j * k) mod n``, so no angle is ever larger than
    ``2 pi`` and every table entry is within an ulp of extended precision (~1e-19).
    """
    pi = 4 * np.arctan(np.longdouble(1))
    angle = (2 * pi / np.longdouble(n)) * np.arange(n).astype(np.longdouble)
    c, s = np.cos(angle), np.sin(angle)
    # quarter turns exactly (pi itself is rounded): integer inputs stay exact where the DFT
    # only uses 0 and +-1
    for m, (cv, sv) in enumerate(((1, 0), (0, 1), (-1, 0), (0, -1))):
        if (m * n) % 4 == 0:
            c[m * n // 4], s[m * n // 4] = cv, sv
    c.flags.writeable = False
    s.flags.writeable = False
    return c, s


def _extended_dft_rows(v, n: int, k, table):
    """``v @ table[(k j) mod n].T`` for the frequencies ``k``, in blocks (extended precision)."""
    j = np.arange(n, dtype=np.int64)
    out = np.zeros(v.shape[:-1] + (len(k),), dtype=np.longdouble)
    step = max(1, _EXT_BLOCK_ELEMENTS // max(n, 1))
    for k0 in range(0, len(k), step):
        kk = np.asarray(k[k0:k0 + step], dtype=np.int64)
        out[..., k0:k0 + len(kk)] = v @ table[np.outer(kk, j) % n].T
    return out


def extended_rdfft_oracle(x) -> np.ndarray:
    """Packed spectrum of real ``x`` (last axis) by the O(n^2) DFT sum in extended precision.

    ``X[k] = sum_j x_j cos(2 pi jk/n)`` (0 <= k <= n/2), ``X[n-k] = -sum_j x_j sin(2 pi jk/n)``
    (0 < k < n/2), summed in ``numpy.longdouble`` (64-bit significand on x86-64) with angles at
    exact integer residues: no FFT and no ``numpy.fft`` is involved, so it is independent of
    every transform circfft may call, for every length.  Rounded once to float64 at the end:
    for inputs of at most float64 precision its error is about one float64 ulp of ``||x||_1``
    (n longdouble roundings of 2^-64 each are far below that for n up to 2^16).
    """
    v = np.asarray(x, dtype=np.longdouble)
    n = v.shape[-1]
    out = np.zeros(v.shape, dtype=np.longdouble)
    if n == 0 or v.size == 0:
        return out.astype(np.float64)
    c, s = _extended_cos_sin(n)
    k_re = np.arange(0, n // 2 + 1)
    k_im = np.arange(1, (n + 1) // 2)
    out[..., k_re] = _extended_dft_rows(v, n, k_re, c)
    if k_im.size:
        out[..., n - k_im] = -_extended_dft_rows(v, n, k_im, s)
    return out.astype(np.float64)


def extended_irdfft_oracle(X) -> np.ndarray:
    """Inverse of `extended_rdfft_oracle` (numpy's "backward" normalisation, 1/n), O(n^2).

    ``x_j = (X_0 + (-1)^j X_{n/2} + 2 sum_{0<k<n/2} (Re_k cos(2 pi jk/n) - Im_k sin(2 pi jk/n)))
    / n`` with ``Re_k = X[k]``, ``Im_k = X[n-k]`` (the Nyquist term only for even n), summed in
    extended precision.
    """
    V = np.asarray(X, dtype=np.longdouble)
    n = V.shape[-1]
    if n == 0 or V.size == 0:
        return np.zeros(V.shape, dtype=np.float64)
    c, s = _extended_cos_sin(n)
    k_re = np.arange(0, n // 2 + 1)
    k_im = np.arange(1, (n + 1) // 2)
    w = np.full(k_re.size, 2, dtype=np.longdouble)
    w[0] = 1
    if n % 2 == 0:
        w[-1] = 1
    # x_j = sum_k w_k Re_k cos(2 pi jk/n) - 2 sum_k Im_k sin(2 pi jk/n): the transposed sums,
    # i.e. the same blocked gather with the roles of j and k exchanged.
    j = np.arange(n)
    re = (V[..., k_re] * w)
    out = _extended_dft_rows_transposed(re, n, k_re, j, c)
    if k_im.size:
        out -= _extended_dft_rows_transposed(2 * V[..., n - k_im], n, k_im, j, s)
    return (out / np.longdouble(n)).astype(np.float64)


def _extended_dft_rows_transposed(coef, n: int, k, j, table):
    """``sum_k coef_k table[(k j) mod n]`` for every ``j``, in blocks (extended precision)."""
    out = np.zeros(coef.shape[:-1] + (len(j),), dtype=np.longdouble)
    kk = np.asarray(k, dtype=np.int64)
    step = max(1, _EXT_BLOCK_ELEMENTS // max(len(kk), 1))
    for j0 in range(0, len(j), step):
        jj = np.asarray(j[j0:j0 + step], dtype=np.int64)
        out[..., j0:j0 + len(jj)] = coef @ table[np.outer(kk, jj) % n]
    return out


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


# ---------------------------------------------------------------------------------------------
# Half-precision storage (CUDA emulation tests): rounding oracles independent of the kernels
# ---------------------------------------------------------------------------------------------
#: Machine epsilon of the 16-bit storage formats (spacing of values in [1, 2)).
STORAGE_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def bfloat16_bits_oracle(x) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 ``x``, rounded to nearest, ties to even.

    Written as a choice between the two neighbours (the truncated pattern and the next one up
    in magnitude), compared in float64, rather than the usual add-and-shift bit trick, so it
    checks that trick.  NaN maps to a quiet NaN of the same sign.
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    bits = x32.view(np.uint32)
    low = (bits >> 16).astype(np.uint32)                 # truncation: towards zero
    high = low + 1                                       # next pattern away from zero
    as_f64 = lambda b: (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    v = x32.astype(np.float64)
    with np.errstate(invalid="ignore"):                  # inf - inf, NaN patterns
        d_low = np.abs(v - as_f64(low))
        d_high = np.abs(as_f64(high) - v)
    pick_high = (d_high < d_low) | ((d_high == d_low) & (low % 2 == 1))
    out = np.where(pick_high, high, low).astype(np.uint16)
    nan = np.isnan(x32)
    out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out.reshape(np.shape(x))


def bfloat16_value_oracle(bits) -> np.ndarray:
    """float64 values of bfloat16 bit patterns (uint16)."""
    b = np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << 16
    return b.view(np.float32).astype(np.float64).reshape(np.shape(bits))


def storage_round_oracle(x, storage: str) -> np.ndarray:
    """float64 values of ``x`` after rounding to ``storage`` ("float16"/"bfloat16"/"float32"/
    "float64"), round to nearest even (float16 through numpy's own cast)."""
    x = np.asarray(x, dtype=np.float64)
    if storage == "bfloat16":
        return bfloat16_value_oracle(bfloat16_bits_oracle(x.astype(np.float32)))
    if storage == "float16":
        with np.errstate(over="ignore"):                 # beyond 65504: inf, as on a GPU
            return x.astype(np.float32).astype(np.float16).astype(np.float64)
    return x.astype(storage).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Adapter oracles (circfft.nn layers): dense matrices by explicit index loops, float64
# ---------------------------------------------------------------------------------------------
__all__ += ["block_circulant_matrix_oracle", "block_circulant_fold_oracle",
            "circulant_diagonal_dense_oracle", "fourierft_dense_oracle",
            "c3a_kernel_to_first_column", "adapter_update_tolerance"]


def block_circulant_matrix_oracle(w) -> np.ndarray:
    """Dense block-circulant matrix, ``D[i*b + r, j*b + s] = w[i, j, (r - s) mod b]``.

    ``w`` has shape ``(m, n, b)``; the result ``(m*b, n*b)``, float64, built by an O(b^2) loop
    over ``(r, s)`` (docs/operators.rst, first-column convention).
    """
    w = np.asarray(w, dtype=np.float64)
    m, n, b = w.shape
    D = np.zeros((m, b, n, b), dtype=np.float64)
    for r in range(b):
        for s in range(b):
            D[:, r, :, s] = w[:, :, (r - s) % b]
    return D.reshape(m * b, n * b)


def block_circulant_fold_oracle(G, b: int) -> np.ndarray:
    """Gradient of ``sum(G * D(w))`` w.r.t. ``w``: ``g[i, j, t] = sum_{(r-s) mod b = t} G[...]``.

    ``G`` is a dense ``(m*b, n*b)`` matrix (e.g. ``grad_y^T x`` summed over tokens); the fold is
    the adjoint of `block_circulant_matrix_oracle`, by the same O(b^2) loop.
    """
    G = np.asarray(G, dtype=np.float64)
    m, n = G.shape[0] // b, G.shape[1] // b
    G4 = G.reshape(m, b, n, b)
    g = np.zeros((m, n, b), dtype=np.float64)
    for r in range(b):
        for s in range(b):
            g[:, :, (r - s) % b] += G4[:, r, :, s]
    return g


def circulant_diagonal_dense_oracle(left, kernel, right, inner_kernels=(), inner_diags=()):
    """``diag(D_0) C_1 diag(D_1) C_2 ... C_m diag(D_m)`` densely, float64.

    ``kernel`` is ``C_1``'s kernel, ``inner_kernels[j]`` is ``C_{j+2}``'s, ``inner_diags[j]``
    is ``D_{j+1}``; ``left = D_0``, ``right = D_m``.
    """
    M = block_circulant_matrix_oracle(kernel)
    for k, d in zip(inner_kernels, inner_diags):
        M = (M * np.asarray(d, dtype=np.float64)[None, :]) \
            @ block_circulant_matrix_oracle(k)
    return (np.asarray(left, dtype=np.float64)[:, None] * M
            * np.asarray(right, dtype=np.float64)[None, :])


def fourierft_dense_oracle(spectrum, rows, cols, out_features, in_features, scaling):
    """PEFT FourierFT's ``dW = scaling * Re(ifft2(F))`` with ``numpy.fft`` in float64."""
    F = np.zeros((out_features, in_features), dtype=np.complex128)
    np.add.at(F, (np.asarray(rows), np.asarray(cols)), np.asarray(spectrum, dtype=np.float64))
    return np.fft.ifft2(F).real * float(scaling)


def c3a_kernel_to_first_column(k) -> np.ndarray:
    """PEFT C3A kernel -> first-column kernel of the same map (without C3A's ``1/d_in``).

    C3A computes ``fft(ifft(x) * fft(k))``, i.e. block ``(i, j)`` multiplies by the circulant
    matrix whose first column is ``c[t] = k[(-t) mod b]`` (docs/operators.rst, "Kernels from PEFT's C3A": flip the last axis, then
    roll by one).  Written as an explicit index map.
    """
    k = np.asarray(k, dtype=np.float64)
    b = k.shape[-1]
    return k[..., [(-t) % b for t in range(b)]]


def adapter_update_tolerance(b: int, dtype, scale: float, w, x, stages: int = 3) -> float:
    """Per-element bound for a block-circulant update ``scale * C(w) x`` computed by FFTs.

    One circulant product ``irdfft(W * X) / b`` of a block: the transforms of ``x_j`` and of
    ``w[i, j]`` and the inverse are each off by at most `fft_relative_error` ``r`` normwise;
    with ``max|W| <= ||w||_1 <= sqrt(b) ||w||_2`` (the same for ``X``) and ``F^{-1}/b``
    shrinking 2-norms by ``sqrt(b)``, each of the ``stages`` transforms contributes at most
    ``r sqrt(b) ||w[i, j]||_2 ||x_j||_2`` = `tolerance` ``(b, dtype, ||w_ij|| ||x_j||)`` to the
    2-norm of the output block's error.  Summing the ``nb`` input blocks in the frequency
    domain adds ``(nb + 2) eps`` times the same product (the sum, the product and the scaled
    kernel each round), and by Cauchy-Schwarz ``sum_j ||w_ij|| ||x_j|| <= ||w[i]||_F ||x||_2``.
    The 2-norm of a block's error bounds each of its elements.
    """
    w = np.asarray(w, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    nb = w.shape[1] if w.ndim == 3 else 1
    wnorm = float(np.sqrt((w * w).sum(axis=(1, 2))).max())
    xnorm = float(row_norms(x).max()) if x.size else 0.0
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return abs(scale) * (stages * tolerance(b, dtype, wnorm * xnorm)
                         + (nb + 2) * eps * math.sqrt(b) * wnorm * xnorm)


# ---------------------------------------------------------------------------------------------
# Device oracles (GPU tests): the library's own FFT on the device, in float64
# ---------------------------------------------------------------------------------------------
__all__ += ["device_packed_rfft_oracle"]


def device_packed_rfft_oracle(xp, x):
    """Packed spectrum of the device array ``x`` (last axis) by ``xp.fft.rfft`` in float64.

    ``xp`` is the ``cupy`` or ``torch`` module; the result is a float64 device array/tensor.
    cuFFT does the transform (independent of circfft's kernels); the packing is the explicit
    index map of `_slots`, applied with device index arrays.
    """
    n = int(x.shape[-1])
    x64 = x.astype(xp.float64) if hasattr(x, "astype") else x.to(xp.float64)
    Y = xp.fft.rfft(x64, axis=-1) if xp.__name__ == "cupy" else xp.fft.rfft(x64, dim=-1)
    real_k, imag_k, imag_slot = _slots(n)
    if xp.__name__ == "cupy":
        X = xp.zeros(x64.shape, dtype=xp.float64)
        X[..., xp.asarray(real_k)] = Y[..., xp.asarray(real_k)].real
        X[..., xp.asarray(imag_slot)] = Y[..., xp.asarray(imag_k)].imag
    else:
        dev = x.device
        X = xp.zeros(x64.shape, dtype=xp.float64, device=dev)
        X[..., xp.as_tensor(real_k, device=dev)] = Y[..., xp.as_tensor(real_k, device=dev)].real
        X[..., xp.as_tensor(imag_slot, device=dev)] = Y[..., xp.as_tensor(imag_k, device=dev)].imag
    return X


# ---------------------------------------------------------------------------------------------
# Dense block-circulant matrices (CUDA emulation tests), built entry by entry from docs/operators.rst
# ---------------------------------------------------------------------------------------------
def complex_pair_product_oracle(A, B, conj: bool = False) -> np.ndarray:
    """Packed spectrum of ``A * B`` (``conj(A) * B`` with ``conj``) along the last axis, by
    unpacking to complex (loop-based layout maps), multiplying in complex128 and packing."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    A, B = np.broadcast_arrays(A, B)
    n = A.shape[-1]
    Ya = unpack_to_complex(A)
    Yb = unpack_to_complex(B)
    return pack_complex((np.conj(Ya) if conj else Ya) * Yb, n)


# ---------------------------------------------------------------------------------------------
# FourierFT (functional.fourierft_matmul): PEFT's dense construction, in torch, float64
# ---------------------------------------------------------------------------------------------
__all__ += ["peft_fourierft_positions", "peft_fourierft_delta_weight_oracle",
            "fourierft_matmul_tolerance"]


def peft_fourierft_positions(out_features: int, in_features: int, n: int, seed: int = 777):
    """``(rows, cols)`` int64 tensors drawn exactly as PEFT's ``FourierFTLayer.update_layer``."""
    import torch

    idx = torch.randperm(out_features * in_features,
                         generator=torch.Generator().manual_seed(seed))[:n]
    return idx // in_features, idx % in_features


def peft_fourierft_delta_weight_oracle(spectrum, rows, cols, out_features, in_features,
                                       scaling):
    """``dW`` exactly as PEFT's ``FourierFTLayer.get_delta_weight``, in float64.

    A dense ``(out, in)`` grid gets ``grid[rows, cols] = spectrum`` (assignment, as PEFT: the
    positions must be distinct), then ``torch.fft.ifft2(grid).real * scaling``.
    Differentiable in ``spectrum``.
    """
    import torch

    grid = torch.zeros(out_features, in_features, dtype=torch.float64)
    grid = grid.index_put((rows, cols), spectrum.to(torch.float64))
    return torch.fft.ifft2(grid).real * scaling


def fourierft_matmul_tolerance(spectrum, x, out_features, in_features, scaling, dtype) -> float:
    """Per-element bound for FourierFT's ``x @ dW.T``, ``dW = scaling Re(ifft2(grid))``, in
    ``dtype``.

    ``y_u = (s / (in out)) Re sum_k f_k e^{2 pi i u r_k / out} conj(X[c_k])`` with ``X`` the
    length-``in`` DFT of the row ``x`` (``s`` = scaling, ``r = fft_relative_error``).

    - transform route: ``|err X[c]| <= r_in sqrt(in) ||x||_2`` (normwise bound, see `TOL_C`)
      enters through ``sum_k |f_k|``; the products round ``4 eps |f_k| |X|`` with
      ``|X| <= sqrt(in) ||x||_2``; the length-``out`` transform of the gathered spectrum ``G``
      (``||G||_2 <= ||f||_2 sqrt(in) ||x||_2``, the columns of one row of the grid being
      distinct) is off by ``r_out sqrt(out) ||G||_2`` per element;
    - dense route: ``dW`` from the 2-d transform is off by ``r_2d ||dW||_F`` in Frobenius
      norm (``||dW||_F = s ||f||_2 / sqrt(in out)``, ``r_2d`` of ``log2(in out)`` levels), which
      reaches ``y_u`` through ``||x||_2`` (Cauchy-Schwarz on the row), and the matmul adds
      ``(in + 2) eps ||x||_2 ||dW_u||_2``.

    Both routes are within the sum::

        s ||x||_2 / sqrt(in out) * ((r_in + 4 eps) ||f||_1 / sqrt(out)
                                   + (r_out + r_2d + (in + 2) eps) ||f||_2)

    (``max_row ||x||_2``; ``r`` doubled for float64, the oracle's own error).
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    if np.dtype(dtype) == np.float64:
        eps *= 2.0
    i, o = max(int(in_features), 1), max(int(out_features), 1)
    f = np.abs(np.asarray(spectrum, dtype=np.float64))
    f1, f2 = float(f.sum()), float(np.sqrt((f * f).sum()))
    x64 = np.asarray(x, dtype=np.float64).reshape(-1, in_features)
    xnorm = float(row_norms(x64).max()) if x64.size else 0.0
    r_in, r_out, r_2d = (fft_relative_error(v, dtype) for v in (i, o, i * o))
    return abs(scaling) * xnorm / math.sqrt(i * o) * (
        (r_in + 4 * eps) * f1 / math.sqrt(o) + (r_out + r_2d + (i + 2) * eps) * f2)


__all__ += ["fourierft_grad_tolerance"]


def fourierft_grad_tolerance(gy, x, out_features, in_features, scaling, dtype) -> float:
    """Per-entry bound for the FourierFT coefficient gradient ``sum_t gy_t^T (d dW/d f_k) x_t``.

    ``grad f_k = (s / (in out)) sum_t Re(G_t[r_k] X_t[c_k])`` (up to conjugations) with ``G_t``,
    ``X_t`` the DFTs of ``gy_t`` (length out) and ``x_t`` (length in).  Transform route: the
    errors ``r_in sqrt(in) ||x_t||`` and ``r_out sqrt(out) ||gy_t||`` (normwise bounds) times
    the other factor (``|X_t| <= sqrt(in) ||x_t||``, ``|G_t| <= sqrt(out) ||gy_t||``) and 4
    roundings of the product; dense route: ``gy^T x`` (``T eps`` relative, Frobenius) then a
    2-d transform (``r_2d``).  Both are within
    ``s (r_in + r_out + r_2d + (T + 4) eps) sum_t ||gy_t|| ||x_t|| / sqrt(in out)``.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    if np.dtype(dtype) == np.float64:
        eps *= 2.0
    i, o = max(int(in_features), 1), max(int(out_features), 1)
    g64 = np.asarray(gy, dtype=np.float64).reshape(-1, out_features)
    x64 = np.asarray(x, dtype=np.float64).reshape(-1, in_features)
    T = len(x64)
    pairs = float((row_norms(g64) * row_norms(x64)).sum()) if T else 0.0
    r = sum(fft_relative_error(v, dtype) for v in (i, o, i * o))
    return abs(scaling) * (r + (T + 4) * eps) * pairs / math.sqrt(i * o)


# ---------------------------------------------------------------------------------------------
# Dense products and chains of block-circulant factors (adapter tests)
# ---------------------------------------------------------------------------------------------
__all__ += ["matmul_tolerance", "block_circulant_stage_error", "unit_roundoff"]


def unit_roundoff(dtype) -> float:
    """``eps / 2`` of ``dtype`` (numpy or torch dtype, or its name): the relative error of one
    rounding to nearest."""
    name = str(dtype).split(".")[-1]
    if name == "bfloat16":
        return STORAGE_EPS["bfloat16"] / 2
    return float(np.finfo(np.dtype(name)).eps) / 2


def matmul_tolerance(x, D, dtype) -> float:
    """Per-element bound for ``x @ D.T`` computed in ``dtype`` (any summation order).

    ``|fl(x D^T) - x D^T|_ij <= gamma_k sum_l |x_il| |D_jl| <= (k + 2) eps ||x_i||_2 ||D_j||_2``
    (Higham, Thm 3.5, and Cauchy-Schwarz), ``k`` the inner length; ``+2`` covers rounding the
    entries of ``D`` and adding a bias.  Doubled for float64 (the float64 oracle's own sum).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    D = np.asarray(D, dtype=np.float64)
    k = x.shape[1]
    eps = float(np.finfo(np.dtype(dtype)).eps)
    if np.dtype(dtype) == np.float64:
        eps *= 2.0
    if not x.size or not D.size:
        return 0.0
    return (k + 2) * eps * float(row_norms(x).max()) * float(row_norms(D).max())


def block_circulant_stage_error(b: int, blocks_in: int, dtype) -> float:
    """Normwise relative error of one block-circulant product ``u -> C(w) u`` by transforms.

    ``||fl(C u) - C u||_2 <= rho * ||C(w)||_F ||u||_2`` with ``rho = 3 r + (blocks_in + 2) eps``
    (``r`` = `fft_relative_error` of length ``b``): the derivation of
    `adapter_update_tolerance` per output block, summed over the output blocks in 2-norm, with
    ``sqrt(b) ||w||_F = ||C(w)||_F`` (every kernel entry appears ``b`` times in ``C``).
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return 3 * fft_relative_error(b, dtype) + (blocks_in + 2) * eps


__all__ += ["circulant_diagonal_params_oracle", "circulant_diagonal_gradient_oracle",
            "circulant_diagonal_factor_norms", "circulant_diagonal_chain_error"]


def circulant_diagonal_params_oracle(p):
    """`circulant_diagonal_dense_oracle` of a dict of CirculantDiagonalAdapter tensors
    (``cd_left``, ``cd_kernel``, ``cd_right`` and, for more than one factor,
    ``cd_inner_kernel`` / ``cd_inner_diag`` stacked along their first axis)."""
    inner = len(p.get("cd_inner_kernel", ()))
    return circulant_diagonal_dense_oracle(p["cd_left"], p["cd_kernel"], p["cd_right"],
                                           [p["cd_inner_kernel"][j] for j in range(inner)],
                                           [p["cd_inner_diag"][j] for j in range(inner)])


def circulant_diagonal_gradient_oracle(p, attr, G):
    """``d/dP sum(G * M)`` for the tensor ``attr`` of `circulant_diagonal_params_oracle`'s M.

    M is linear in each factor (each appears once in the product), so entry k is
    ``sum(G * M(factor <- e_k))`` with every other factor as it is (for the stacked inner
    tensors, the other slices too): the gradient from the dense oracle alone, one oracle
    evaluation per entry.  ``G`` is ``d loss / d M``, e.g. ``sum_t g_t x_t^T``.
    """
    P = np.asarray(p[attr], dtype=np.float64)
    stacked = attr in ("cd_inner_kernel", "cd_inner_diag")
    grad = np.zeros(P.shape)
    for k in np.ndindex(P.shape):
        unit = P.copy() if stacked else np.zeros(P.shape)
        if stacked:
            unit[k[0]] = 0.0                       # only factor k[0] becomes the unit
        unit[k] = 1.0
        grad[k] = np.sum(G * circulant_diagonal_params_oracle(dict(p, **{attr: unit})))
    return grad


def circulant_diagonal_factor_norms(p) -> dict:
    """Operator-norm bounds of the factors: ``||C||_F`` of each circulant, ``max|D|`` of each
    diagonal, keyed by tensor name (``(name, j)`` for the stacked inner ones).  Their product
    bounds ``||M||_2``."""
    norms = {"cd_kernel": np.linalg.norm(block_circulant_matrix_oracle(p["cd_kernel"])),
             "cd_left": np.abs(p["cd_left"]).max(), "cd_right": np.abs(p["cd_right"]).max()}
    for j, k in enumerate(p.get("cd_inner_kernel", ())):
        norms[("cd_inner_kernel", j)] = np.linalg.norm(block_circulant_matrix_oracle(k))
        norms[("cd_inner_diag", j)] = np.abs(p["cd_inner_diag"][j]).max()
    return {k: float(v) for k, v in norms.items()}


def circulant_diagonal_chain_error(b: int, blocks_in: int, factors: int, dtype) -> float:
    """Relative normwise error of a computed chain ``D_0 C_1 D_1 ... C_m D_m u``: every
    circulant factor's `block_circulant_stage_error` and one rounding per diagonal scaling,
    each carried to the output by the operator norms of the other factors (first order), so
    ``||err||_2 <= this * prod(factor norms) * ||u||_2``."""
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return factors * block_circulant_stage_error(b, blocks_in, dtype) + (factors + 1) * eps
