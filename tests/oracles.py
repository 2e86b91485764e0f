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

    Output block ``i`` sums ``n`` circulant products; each is a forward transform of ``x_j``
    and of ``w[i, j]``, a product and an inverse transform (``stages`` transforms), each off by
    at most `tolerance` relative to ``||w[i, j]||_2 ||x_j||_2``.  By Cauchy-Schwarz the sum
    over ``j`` is bounded by ``max_i ||w[i]||_F * max_row ||x||_2``.
    """
    w = np.asarray(w, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    wnorm = float(np.sqrt((w * w).sum(axis=(1, 2))).max())
    xnorm = float(row_norms(x).max()) if x.size else 0.0
    return stages * abs(scale) * tolerance(b, dtype, wnorm * xnorm)


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
    """Per-element bound for ``x @ dW.T`` computed through packed transforms in ``dtype``.

    Each output is ``(scaling / (in*out)) sum_k f_k Re(e^{...} conj(X[c_k]))``: a length-``in``
    transform of ``x`` (error `tolerance` relative to ``||x||_2`` per coefficient), ``n``
    products accumulated, and a length-``out`` inverse transform of a spectrum whose entries
    are bounded by ``sum_k |f_k| * |X|``.  Bounding every ``|X[c]|`` error by the per-element
    transform figure and adding the levels of both transforms gives
    ``(TOL_C * (log2 in + log2 out) + 4) * eps * scaling / (in*out) * ||f||_1 * max_row ||x||_2``
    (the dense route has the same structure: two transforms of the sparse grid, then one
    sum over ``in`` per output; its rounding is covered by the same count of levels).
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    levels = max(1.0, math.log2(max(in_features, 1))) + max(1.0, math.log2(max(out_features, 1)))
    f1 = float(np.abs(np.asarray(spectrum, dtype=np.float64)).sum())
    x64 = np.asarray(x, dtype=np.float64).reshape(-1, in_features)
    xnorm = float(row_norms(x64).max()) if x64.size else 0.0
    tol = (TOL_C * levels + 4.0) * eps * abs(scaling) / (in_features * out_features) * f1 * xnorm
    if np.dtype(dtype) == np.float64:
        tol *= 2.0  # the float64 oracle carries an error of the same order
    return tol
