"""The packed ("halfcomplex") layout: conversions and pair-wise spectral products.

For a real row of length ``n`` with ``Y = numpy.fft.rfft(x)``, the packed row ``X`` holds
``X[k] = Re Y_k`` for ``0 <= k <= n//2`` and ``X[n-k] = Im Y_k`` for ``0 < k < (n+1)//2``
(FFTW's R2HC order).  Slot ``k`` (real part) pairs with slot ``n-k`` (imaginary part); slot 0
and, for even ``n``, slot ``n/2`` are real.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_axis

__all__ = ["to_rfft", "from_rfft", "spectral_mul", "n_imag"]


def n_imag(n: int) -> int:
    """Number of imaginary slots in a packed row of length ``n``: ``(n - 1) // 2``."""
    return (n - 1) // 2


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
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
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


def spectral_mul(A, B, *, conj=False, out=None, axis=-1):
    """Pair-wise product of two packed spectra: the spectrum of a circular convolution.

    Parameters
    ----------
    A, B : array_like of float32 or float64
        Packed spectra of equal length along ``axis``; other axes broadcast.
    conj : bool, optional
        If True compute ``conj(A) * B`` (the spectrum of a circular cross-correlation, used by
        every transpose and backward pass); otherwise ``A * B``.
    out : ndarray, optional
        Where to write the product; may be ``A`` or ``B`` itself (the product is computed
        pair by pair, so it runs in place on either operand).
    axis : int, optional
        Axis holding the packed rows. Default is the last.

    Returns
    -------
    Z : ndarray
        Packed spectrum of the product: ``Z[k] + 1j*Z[n-k] = A_k * B_k`` (or
        ``conj(A_k) * B_k``) for ``0 < k < (n+1)//2``, ``Z[0] = A[0]*B[0]`` and, for even
        ``n``, ``Z[n/2] = A[n/2]*B[n/2]``.

    Examples
    --------
    >>> import numpy as np, circfft
    >>> a, b = np.array([1., 2, 0, 0]), np.array([0., 1, 0, 0])
    >>> c = circfft.irdfft(circfft.spectral_mul(circfft.rdfft(a), circfft.rdfft(b)))
    >>> np.allclose(c, [0, 1, 2, 0])          # a shifted by one place, up to rounding
    True
    """
    A = _real_array(A, "A")
    B = _real_array(B, "B")
    if A.dtype != B.dtype:
        raise TypeError(f"A and B must have the same dtype, got {A.dtype} and {B.dtype}")
    ndim = max(A.ndim, B.ndim)
    axis = check_axis(axis, ndim)
    A = np.moveaxis(A.reshape((1,) * (ndim - A.ndim) + A.shape), axis, -1)
    B = np.moveaxis(B.reshape((1,) * (ndim - B.ndim) + B.shape), axis, -1)
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(f"A and B must have the same length along axis {axis}, "
                         f"got {A.shape[-1]} and {B.shape[-1]}")
    try:
        shape = np.broadcast_shapes(A.shape, B.shape)
    except ValueError:
        raise ValueError(f"A and B do not broadcast: shapes {A.shape} and {B.shape} "
                         f"(packed axis moved last)") from None
    if out is None:
        Z = np.empty(shape, dtype=A.dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != A.dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected {A.dtype}")
        Z = np.moveaxis(out, axis, -1) if out.ndim == ndim else None
        if Z is None or Z.shape != shape:
            raise ValueError(f"out has shape {out.shape}, expected the broadcast shape "
                             f"{np.moveaxis(np.empty(shape, dtype=bool), -1, axis).shape}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
    n = shape[-1]
    ni = n_imag(n)
    # Temporaries before any write, so that out may alias A or B.
    ar, ai = A[..., 1: ni + 1], A[..., n - 1: n - ni - 1: -1]
    br, bi = B[..., 1: ni + 1], B[..., n - 1: n - ni - 1: -1]
    if conj:
        zr, zi = ar * br + ai * bi, ar * bi - ai * br
    else:
        zr, zi = ar * br - ai * bi, ar * bi + ai * br
    real = [0] + ([n // 2] if n % 2 == 0 else [])
    Z[..., real] = A[..., real] * B[..., real]
    Z[..., 1: ni + 1] = zr
    Z[..., n - 1: n - ni - 1: -1] = zi
    return np.moveaxis(Z, -1, axis) if out is None else out
