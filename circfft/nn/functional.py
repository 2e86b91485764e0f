"""Functional, differentiable circfft operations on torch tensors.

Every function here takes and returns ``torch.Tensor`` objects, supports autograd for all
tensor arguments, and can be traced by ``torch.compile(fullgraph=True)``: it goes to the
``"torch"`` backend directly (no context-dependent backend lookup) and runs registered custom
operators.

Memory.  The transforms save nothing for backward (each backward is a diagonal scaling plus one
transform on the gradient buffer).  The circulant products save only the packed spectrum of
their input (the size of the input) and process rows in chunks, so forward plus backward of
``block_circulant_matmul`` needs about three buffers of the input's size (saved spectrum,
output, input gradient) and no complex intermediates.  With ``save_input=True`` they save the
input itself instead (the tensor a frozen base layer saves anyway, so an adapter adds no
activation memory) and recompute its spectrum chunk by chunk in backward.
``fourierft_matmul`` always saves only its input.
"""
from __future__ import annotations

import torch

from .. import _circulant
from . import _fourierft as _fft
from .._transforms import irdfft as _irdfft
from .._transforms import rdfft as _rdfft
from ..backends import get_backend

__all__ = ["rdfft", "irdfft", "spectral_mul", "circulant_matmul", "block_circulant_matmul",
           "circulant_diagonal_matmul", "circulant_dense", "block_circulant_dense",
           "c3a_to_block_circulant", "fourierft_matmul", "fourierft_delta_weight"]

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
    return _circulant.spectral_mul(A, B, conj=conj, out=out, axis=dim, backend=_BACKEND)


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


def block_circulant_matmul(w, x, *, transpose=False, save_input=False):
    """Block-circulant product ``C(w) x`` (see :func:`circfft.block_circulant_matmul`).

    Parameters
    ----------
    w : Tensor, shape (d_out/b, d_in/b, b)
        Kernel; block ``(i, j)`` is ``circ(w[i, j])``.
    x : Tensor, shape (..., d_in)
        Input rows (``(..., d_out)`` with ``transpose=True``).
    transpose : bool, optional
        Multiply by ``C(w)^T``.
    save_input : bool, optional
        Save ``x`` itself for backward (no copy when ``x`` is contiguous) and recompute its
        spectrum there, instead of saving a new spectrum buffer of ``x``'s size.  Use it in
        adapters whose frozen base layer saves ``x`` anyway: the adapter then adds no
        activation memory, at the cost of one more transform of ``x`` in backward.

    Returns
    -------
    y : Tensor, shape (..., d_out)
        Differentiable in ``w`` and ``x``; backward uses only the saved packed spectrum of
        ``x`` (or ``x`` itself with ``save_input=True``).
    """
    _tensors(w=w, x=x)
    return _circulant.apply_block_circulant(w, x, transpose=transpose, backend=_BACKEND,
                                            save_input=save_input)


def circulant_diagonal_matmul(a, w, g, x, *, transpose=False, save_input=False):
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
    save_input : bool, optional
        Save ``x`` itself (no copy when contiguous) instead of the spectrum of ``g * x`` and
        recompute that spectrum in backward (see `block_circulant_matmul`).

    Returns
    -------
    y : Tensor
        Differentiable in ``a``, ``w``, ``g`` and ``x``.
    """
    _tensors(a=a, w=w, g=g, x=x)
    return _circulant.apply_block_circulant(w, x, a=a, g=g, transpose=transpose,
                                            backend=_BACKEND, save_input=save_input)


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
    ``w = roll(flip(k, -1), 1, -1) / d_in`` (docs/operators.rst, "Kernels from PEFT's C3A").

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


# ---------------------------------------------------------------------------------------------
# FourierFT (docs/finetuning.rst, "The adapters")
# ---------------------------------------------------------------------------------------------
_ROUTES = ("auto", "fft", "dense")


def _fourierft_args(spectrum, rows, cols, out_features, in_features, scaling):
    """Validate the FourierFT description; return ``(rows, cols, out_features, scaling)``."""
    _tensors(spectrum=spectrum)
    if not spectrum.is_floating_point() or spectrum.ndim != 1:
        raise TypeError(f"spectrum must be a 1-d real floating-point tensor, got dtype "
                        f"{spectrum.dtype} and shape {tuple(spectrum.shape)}")
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"out_features must be a positive int, got {out_features!r}")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling must be a real number, got {type(scaling).__name__}")
    n = spectrum.shape[0]
    idx = []
    for name, v, bound in (("rows", rows, out_features), ("cols", cols, in_features)):
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v, device=spectrum.device)
        if v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer indices, got dtype {v.dtype}")
        if v.ndim != 1 or v.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n},) like spectrum, got "
                             f"{tuple(v.shape)}")
        if v.device != spectrum.device:
            raise ValueError(f"{name} is on {v.device} but spectrum is on {spectrum.device}")
        if n and not torch.compiler.is_compiling():
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= bound:
                raise ValueError(f"{name} must lie in [0, {bound}), got values in "
                                 f"[{lo}, {hi}]")
        idx.append(v)
    return idx[0], idx[1], int(out_features), float(scaling)


def fourierft_delta_weight(spectrum, rows, cols, out_features, in_features, scaling):
    """The dense FourierFT update ``dW = scaling * Re(ifft2(F))`` (PEFT's ``get_delta_weight``).

    Parameters
    ----------
    spectrum : Tensor, shape (n,)
        Real coefficients ``f``.
    rows, cols : Tensor of int, shape (n,)
        Grid positions: ``F[rows[k], cols[k]] = spectrum[k]`` (repeated positions add).
    out_features, in_features : int
        Grid shape ``(out_features, in_features)``, the ``nn.Linear`` weight orientation.
    scaling : float
        Multiplies the update.

    Returns
    -------
    dW : Tensor, shape (out_features, in_features)
        In the dtype of ``spectrum`` (float32 for float16/bfloat16); differentiable in
        ``spectrum``.  Built with one real 2-d transform of the grid's Hermitian part.

    Examples
    --------
    >>> import torch
    >>> from circfft.nn import functional as F
    >>> F.fourierft_delta_weight(torch.tensor([4.0]), torch.tensor([0]), torch.tensor([0]),
    ...                          2, 2, 1.0)
    tensor([[1., 1.],
            [1., 1.]])
    """
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    rows, cols, out_features, scaling = _fourierft_args(spectrum, rows, cols, out_features,
                                                        in_features, scaling)
    cd = _fft._compute_dtype(spectrum.dtype)
    return _fft.fourierft_delta_weight(spectrum, rows, cols, out_features, in_features, scaling,
                                       cd)


def fourierft_matmul(x, spectrum, rows, cols, out_features, scaling, *, route="auto"):
    """FourierFT update applied to rows: ``x @ dW.T`` without forming ``dW`` (docs/finetuning.rst, "The adapters").

    ``dW = scaling * Re(ifft2(F))`` is PEFT's FourierFT update, ``F`` the
    ``(out_features, in_features)`` grid with ``F[rows[k], cols[k]] = spectrum[k]``.

    Parameters
    ----------
    x : Tensor, shape (..., in_features)
        Input rows (float16/bfloat16 are computed in float32).
    spectrum : Tensor, shape (n,)
        Real coefficients (PEFT's ``fourierft_spectrum``).
    rows, cols : Tensor of int, shape (n,)
        Grid positions (PEFT: ``idx // in_features`` and ``idx % in_features``); repeated
        positions add.
    out_features : int
        Number of grid rows, the length of the result's last dimension.
    scaling : float
        PEFT's ``scaling``.
    route : {"auto", "fft", "dense"}, optional
        ``"fft"``: one packed transform of each row, ``2n`` gathered multiply-adds and one
        inverse transform, ``tokens * (in log in + out log out + 2n)`` flops, nothing built.
        ``"dense"``: build ``dW`` with one real 2-d transform and multiply
        (``out*in*(log out + log in) + tokens*out*in``).  ``"auto"`` picks the smaller count,
        the dense one weighted by ``circfft.nn._fourierft.DENSE_FLOP_WEIGHT`` (BLAS runs more
        flops per second than transforms and gathers).

    Returns
    -------
    y : Tensor, shape (..., out_features)
        In the promoted dtype of ``x`` and ``spectrum`` (float32 for half precision);
        differentiable in ``x`` and ``spectrum``.

    Raises
    ------
    TypeError
        Non-tensor ``x``/``spectrum``, non-integer ``rows``/``cols``, a non-real ``scaling``.
    ValueError
        Positions out of range, lengths that differ from ``spectrum``'s, a bad ``route``.

    Notes
    -----
    With ``X = fft(x)``, ``dW x = (scaling/in) Re(ifft(z))``, ``z[u] = sum_{rows[k]=u}
    spectrum[k] conj(X[cols[k]])``; ``Re(ifft(z))`` is the inverse real transform of the
    Hermitian part of ``z``, so the whole map is a sparse real matrix between packed spectra.
    The ``"fft"`` route saves only ``x`` for backward (the tensor the frozen base layer saves
    anyway) and recomputes its spectrum; the gradient of ``spectrum`` is the gathered
    correlation of the output-gradient spectrum with that of ``x``.

    Examples
    --------
    >>> import torch
    >>> from circfft.nn import functional as F
    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> F.fourierft_matmul(x, torch.tensor([6.0]), torch.tensor([0]), torch.tensor([0]), 2, 1.0)
    tensor([[6., 6.]])
    """
    _tensors(x=x)
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {_ROUTES}, got {route!r}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension (..., in_features)")
    d_in = x.shape[-1]
    rows, cols, d_out, scaling = _fourierft_args(spectrum, rows, cols, out_features, d_in,
                                                 scaling)
    if x.device != spectrum.device:
        raise ValueError(f"x is on {x.device} but spectrum is on {spectrum.device}")
    lead = x.shape[:-1]
    tokens = x.numel() // max(d_in, 1)
    if route == "auto":
        route = _fft.choose_route(tokens, d_out, d_in, spectrum.shape[0])
    if route == "dense":
        cd = _fft._compute_dtype(x.dtype, spectrum.dtype)
        dW = _fft.fourierft_delta_weight(spectrum, rows, cols, d_out, d_in, scaling, cd)
        return torch.nn.functional.linear(x.to(cd), dW)
    plan = _fft.fourierft_plan(rows, cols, d_out, d_in)
    x2 = x.reshape(-1, d_in)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    return _fft.fourierft_apply(x2, spectrum, plan, d_out, scaling).reshape(*lead, d_out)
