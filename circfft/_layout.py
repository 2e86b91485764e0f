"""The packed ("halfcomplex") layout: index maps, conversions and the pair-wise product.

For a real row of length ``n`` with ``Y = numpy.fft.rfft(x)``, the packed row ``X`` holds
``X[k] = Re Y_k`` for ``0 <= k <= n//2`` and ``X[n-k] = Im Y_k`` for ``0 < k < (n+1)//2``
(FFTW's R2HC order).  Slot ``k`` (real part) pairs with slot ``n-k`` (imaginary part); slot 0
and, for even ``n``, slot ``n/2`` are real.  The helpers taking an ``ops`` argument work on
any array family (see :mod:`circfft.backends._array_ops`); this module imports no backend.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_axis, check_positive_int

__all__ = ["to_rfft", "from_rfft", "n_imag", "real_slots", "packed_product",
           "pack_half_spectrum", "unpack_half_spectrum"]


def n_imag(n: int) -> int:
    """Number of imaginary slots in a packed row of length ``n``: ``(n - 1) // 2``."""
    return (n - 1) // 2


def real_slots(n: int) -> list[int]:
    """Slots holding a purely real frequency: 0, and ``n/2`` for even ``n >= 2``."""
    return [0] + ([n // 2] if n % 2 == 0 and n > 1 else [])


def packed_product(A, B, Z, conj: bool, ops) -> None:
    """``Z = A * B`` (``conj(A) * B``) pair by pair on packed rows (last axis), any family.

    Slot ``k`` (real part) pairs with slot ``n-k`` (imaginary part); the real slots multiply
    as reals.  Every operand is read before ``Z`` is written, so ``Z`` may be ``A`` or ``B``.
    """
    n = Z.shape[-1]
    if n == 0:
        return
    ni = n_imag(n)
    real = real_slots(n)
    ar, br = A[..., 1: ni + 1], B[..., 1: ni + 1]
    ai, bi = ops.flip_last(A[..., n - ni:]), ops.flip_last(B[..., n - ni:])
    if conj:
        zr, zi = ar * br + ai * bi, ar * bi - ai * br
    else:
        zr, zi = ar * br - ai * bi, ar * bi + ai * br
    zreal = [A[..., k] * B[..., k] for k in real]
    for k, v in zip(real, zreal):
        Z[..., k] = v
    if ni:
        Z[..., 1: ni + 1] = zr
        Z[..., n - ni:] = ops.flip_last(zi)


def pack_half_spectrum(Y, n: int, out, scale: float, ops) -> None:
    """Write complex half spectra ``Y`` (..., n//2+1) into ``out`` (..., n), packed, times
    ``scale`` (any family; ``out`` may be the transform's input)."""
    h, ni = n // 2, n_imag(n)
    ops.mul_into(out[..., : h + 1], Y.real, scale)          # one pass each, no temporaries
    if ni:
        ops.mul_into(out[..., n - ni:], ops.flip_last(Y.imag[..., 1: ni + 1]), scale)


def unpack_half_spectrum(X, ops):
    """Complex half spectra (..., n//2+1) of packed rows ``X`` (..., n), any family."""
    n = X.shape[-1]
    h, ni = n // 2, n_imag(n)
    Y = ops.empty(tuple(X.shape[:-1]) + (h + 1,), ops.complex_dtype(X.dtype), X)
    Y.real[...] = X[..., : h + 1]
    Y.imag[..., 0] = 0
    if ni:
        Y.imag[..., 1: ni + 1] = ops.flip_last(X[..., n - ni:])
    if n % 2 == 0:
        Y.imag[..., h] = 0
    return Y


def _real_array(a, name):
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension")
    return a


def to_rfft(X, axis=-1):
    """Convert a packed spectrum to numpy's complex ``rfft`` form.

    Parameters
    ----------
    X : array_like of float32 or float64
        Packed (halfcomplex) spectrum, for example the output of :func:`circfft.rdfft`.
    axis : int, optional
        Axis holding the packed rows. Default is the last.

    Returns
    -------
    Y : ndarray of complex64 or complex128
        ``n//2 + 1`` entries along ``axis``, equal to ``numpy.fft.rfft`` of the signal whose
        packed transform is ``X``: ``Y[k] = X[k] + 1j*X[n-k]`` for ``0 < k < (n+1)//2``,
        ``Y[0] = X[0]`` and, for even ``n``, ``Y[n/2] = X[n/2]``.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> x = np.array([1.0, 2.0, 3.0, 4.0])
    >>> np.allclose(circfft.to_rfft(circfft.rdfft(x)), np.fft.rfft(x))
    True
    """
    X = _real_array(X, "X")
    axis = check_axis(axis, X.ndim)
    Xm = np.moveaxis(X, axis, -1)
    n = Xm.shape[-1]
    ni = n_imag(n)
    Y = Xm[..., : n // 2 + 1].astype(np.result_type(X.dtype, np.complex64))
    if ni:
        Y.imag[..., 1: ni + 1] = Xm[..., n - 1: n - ni - 1: -1]
    return np.moveaxis(Y, -1, axis)


def from_rfft(Y, n, axis=-1):
    """Convert numpy's complex ``rfft`` form to the packed layout.

    Parameters
    ----------
    Y : array_like of complex
        Half spectrum with ``n//2 + 1`` entries along ``axis``.
    n : int
        Length of the real signal (needed because odd and even ``n`` share ``n//2 + 1``).
    axis : int, optional
        Axis holding the spectra. Default is the last.

    Returns
    -------
    X : ndarray of float32 (from complex64) or float64
        Packed spectrum of length ``n`` along ``axis``: ``X[k] = Re Y[k]`` for
        ``0 <= k <= n//2`` and ``X[n-k] = Im Y[k]`` for ``0 < k < (n+1)//2``.  The imaginary
        parts of ``Y[0]`` and (even ``n``) ``Y[n/2]``, zero for a real signal, are dropped, as
        ``numpy.fft.irfft`` does.
    """
    Y = np.asarray(Y)
    if Y.ndim == 0:
        raise ValueError("Y must have at least one dimension")
    if Y.dtype.kind not in "cfiu":
        raise TypeError(f"Y must be a numeric array, got dtype {Y.dtype}")
    axis = check_axis(axis, Y.ndim)
    n = check_positive_int(n, "n")
    Ym = np.moveaxis(Y, axis, -1)
    if Ym.shape[-1] != n // 2 + 1:
        raise ValueError(f"Y has {Ym.shape[-1]} entries along axis {axis}; "
                         f"n={n} needs n//2+1 = {n // 2 + 1}")
    rdtype = np.float32 if Y.dtype in (np.complex64, np.float32) else np.float64
    X = np.empty(Ym.shape[:-1] + (n,), dtype=rdtype)
    X[..., : n // 2 + 1] = Ym.real
    ni = n_imag(n)
    if ni:
        X[..., n - ni:] = Ym.imag[..., ni:0:-1]
    return np.moveaxis(X, -1, axis)
