"""Functional, differentiable circfft operations on torch tensors.

Every function here takes and returns ``torch.Tensor`` objects, supports autograd for all
tensor arguments, and can be traced by ``torch.compile(fullgraph=True)``: it goes to the
``"torch"`` backend directly (no context-dependent backend lookup) and runs registered custom
operators.

Memory.  The transforms save nothing for backward (each backward is a diagonal scaling plus one
transform on the gradient buffer).  The circulant products save only the packed spectrum of
their input (the size of the input) and process rows in chunks, so forward plus backward of
``block_circulant_matmul`` needs about three buffers of the input's size (saved spectrum,
output, input gradient) and no complex intermediates.
"""
from __future__ import annotations

import torch

from .. import _circulant
from .._transforms import irdfft as _irdfft
from .._transforms import rdfft as _rdfft
from .._dispatch import get_backend

__all__ = ["rdfft", "irdfft", "spectral_mul", "circulant_matmul", "block_circulant_matmul",
           "circulant_diagonal_matmul", "circulant_dense", "block_circulant_dense",
           "c3a_to_block_circulant"]

_BACKEND = "torch"
get_backend(_BACKEND)   # load (and register the custom ops) now, outside any torch.compile trace


def _tensors(**named):
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def rdfft(x, dim=-1, norm=None, *, out=None, workers=None):
    """Packed real DFT of a tensor along ``dim`` (see :func:`circfft.rdfft`).

    Parameters
    ----------
    x : Tensor
        Real input (float32/float64; float16/bfloat16 are computed in float32 and returned in
        their own dtype; integers are promoted to the default dtype).
    dim : int, optional
        Dimension to transform. Default is the last.
    norm : {None, "backward", "ortho", "forward"}, optional
        Normalisation mode, as in `torch.fft.rfft`.
    out : Tensor, optional
        ``out=x`` transforms ``x`` in place (under autograd ``x`` is marked dirty, and a leaf
        that requires grad raises as any in-place torch operation does).
    workers : int, optional
        CPU threads for the transform (None means 1).

    Returns
    -------
    X : Tensor
        Packed spectrum, same shape, dtype and device as ``x``.

    See Also
    --------
    circfft.rdfft : The array-generic version.

    Examples
    --------
    >>> import torch
    >>> from circfft.nn import functional as F
    >>> F.rdfft(torch.tensor([1.0, 2.0, 0.0, -1.0]))
    tensor([ 2.,  1.,  0., -3.])
    """
    _tensors(x=x)
    return _rdfft(x, dim, norm, out=out, workers=workers, backend=_BACKEND)


def irdfft(x, dim=-1, norm=None, *, out=None, workers=None):
    """Inverse of `rdfft` for tensors (see :func:`circfft.irdfft`).

    Parameters
    ----------
    x : Tensor
        Packed spectrum.
    dim : int, optional
        Dimension to transform. Default is the last.
    norm : {None, "backward", "ortho", "forward"}, optional
        Normalisation mode, as in `torch.fft.irfft`.
    out : Tensor, optional
        ``out=x`` transforms in place.
    workers : int, optional
        CPU threads for the transform (None means 1).

    Returns
    -------
    x : Tensor
        Real signal, same shape, dtype and device as the input.

    Examples
    --------
    >>> import torch
    >>> from circfft.nn import functional as F
    >>> F.irdfft(torch.tensor([2.0, 1.0, 0.0, -3.0]))
    tensor([ 1.,  2.,  0., -1.])
    """
    _tensors(x=x)
    return _irdfft(x, dim, norm, out=out, workers=workers, backend=_BACKEND)


def spectral_mul(A, B, *, conj=False, out=None, dim=-1):
    """Pair-wise product of packed spectra (see :func:`circfft.spectral_mul`).

    Parameters
    ----------
    A, B : Tensor
        Packed spectra of equal length along ``dim``; other dimensions broadcast.
    conj : bool, optional
        Compute ``conj(A) * B`` instead of ``A * B``.
    out : Tensor, optional
        Where to write the product.
    dim : int, optional
        Dimension holding the packed rows. Default is the last.

    Returns
    -------
    Z : Tensor
        Packed spectrum of the product (differentiable in ``A`` and ``B``).

    Examples
    --------
    >>> import torch
    >>> from circfft.nn import functional as F
    >>> a, b = torch.tensor([1.0, 2, 3, 4]), torch.tensor([0.0, 1, 0, 0])
    >>> F.irdfft(F.spectral_mul(F.rdfft(a), F.rdfft(b)))
    tensor([4., 1., 2., 3.])
    """
    _tensors(A=A, B=B)
    return get_backend(_BACKEND).spectral_mul(A, B, conj=conj, out=out, axis=dim)


def circulant_matmul(c, x, *, transpose=False):
    """``circ(c) x`` on the last dimension (see :func:`circfft.circulant_matmul`).

    Parameters
    ----------
    c : Tensor, shape (n,)
        First column of the circulant matrix.
    x : Tensor, shape (..., n)
        Input rows.
    transpose : bool, optional
        Multiply by ``circ(c)^T``.

    Returns
    -------
    y : Tensor, shape (..., n)
        Differentiable in ``c`` and ``x``.
    """
    _tensors(c=c, x=x)
    return _circulant.circulant_matmul(c, x, transpose=transpose, backend=_BACKEND)


def block_circulant_matmul(w, x, *, transpose=False):
    """Block-circulant product ``C(w) x`` (see :func:`circfft.block_circulant_matmul`).

    Parameters
    ----------
    w : Tensor, shape (d_out/b, d_in/b, b)
        Kernel; block ``(i, j)`` is ``circ(w[i, j])``.
    x : Tensor, shape (..., d_in)
        Input rows (``(..., d_out)`` with ``transpose=True``).
    transpose : bool, optional
        Multiply by ``C(w)^T``.

    Returns
    -------
    y : Tensor, shape (..., d_out)
        Differentiable in ``w`` and ``x``; backward uses only the saved packed spectrum of
        ``x``.
    """
    _tensors(w=w, x=x)
    return _circulant.block_circulant_matmul(w, x, transpose=transpose, backend=_BACKEND)


def circulant_diagonal_matmul(a, w, g, x, *, transpose=False):
    """``diag(a) C(w) diag(g) x`` (see :func:`circfft.circulant_diagonal_matmul`).

    Parameters
    ----------
    a : Tensor, shape (d_out,)
        Output-side diagonal.
    w : Tensor, shape (d_out/b, d_in/b, b)
        Block-circulant kernel.
    g : Tensor, shape (d_in,)
        Input-side diagonal.
    x : Tensor, shape (..., d_in)
        Input rows (``(..., d_out)`` with ``transpose=True``).
    transpose : bool, optional
        Multiply by ``diag(g) C(w)^T diag(a)``.

    Returns
    -------
    y : Tensor
        Differentiable in ``a``, ``w``, ``g`` and ``x``.
    """
    _tensors(a=a, w=w, g=g, x=x)
    return _circulant.circulant_diagonal_matmul(a, w, g, x, transpose=transpose,
                                                backend=_BACKEND)


def circulant_dense(c):
    """Dense ``circ(c)`` by index gather (see :func:`circfft.circulant_dense`).

    Parameters
    ----------
    c : Tensor, shape (n,)
        First column.

    Returns
    -------
    C : Tensor, shape (n, n)
        Differentiable in ``c``.
    """
    _tensors(c=c)
    return _circulant.circulant_dense(c, backend=_BACKEND)


def block_circulant_dense(w):
    """Dense block-circulant matrix of ``w`` (see :func:`circfft.block_circulant_dense`).

    Parameters
    ----------
    w : Tensor, shape (d_out/b, d_in/b, b)
        Kernel.

    Returns
    -------
    W : Tensor, shape (d_out, d_in)
        ``W[i*b + r, j*b + s] = w[i, j, (r - s) % b]``; differentiable in ``w``.
    """
    _tensors(w=w)
    return _circulant.block_circulant_dense(w, backend=_BACKEND)


def c3a_to_block_circulant(k):
    """Convert a PEFT C3A kernel to the first-column kernel of the same linear map.

    PEFT's C3A computes ``y = BlockCircularConvolution(x, k) / d_in`` with ``k`` of shape
    ``(d_out/b, d_in/b, b)``.  The same map is ``block_circulant_matmul(w, x)`` with
    ``w = roll(flip(k, -1), 1, -1) / d_in`` (DESIGN §5).

    Parameters
    ----------
    k : Tensor, shape (d_out/b, d_in/b, b)
        C3A kernel (``c3a_kernel`` of a PEFT C3A layer).

    Returns
    -------
    w : Tensor, shape (d_out/b, d_in/b, b)
        Kernel for `block_circulant_matmul`; differentiable in ``k``.
    """
    _tensors(k=k)
    if k.ndim != 3:
        raise ValueError(f"k must have shape (d_out/b, d_in/b, b), got shape {tuple(k.shape)}")
    d_in = k.shape[1] * k.shape[2]
    return torch.roll(torch.flip(k, (-1,)), 1, -1) / d_in
