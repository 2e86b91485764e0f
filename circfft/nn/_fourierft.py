"""FourierFT (PEFT-compatible) products without building the dense update (docs/finetuning.rst, "The adapters").

PEFT's FourierFT update is ``dW = scaling * Re(ifft2(F))`` where ``F`` is the ``d_out x d_in``
grid holding real coefficients ``f_k`` at ``(rows[k], cols[k])`` and zeros elsewhere.  For a
real row ``x``::

    dW x = (scaling / d_in) * Re(ifft(z)),   z[u] = sum_{k: rows[k] = u} f_k conj(X[cols[k]])

with ``X = fft(x)`` (length ``d_in``) and ``ifft`` of length ``d_out``.  Everything stays real
in the packed (halfcomplex) layout:

* ``conj(X[c])`` is read from the packed spectrum ``Xp = rdfft(x)``: ``Re = Xp[c']`` and
  ``Im = sigma * Xp[d_in - c']`` with ``c' = min(c, d_in - c)``, ``sigma = -1`` for
  ``c < d_in/2``, ``+1`` above it, and no imaginary part at ``c = 0`` or ``c = d_in/2``.
* ``Re(ifft(z)) = irdfft(H)`` where ``H[v] = (z[v] + conj(z[-v])) / 2`` is the Hermitian part
  of ``z``, whose packed form takes ``Re z[u]`` into slot ``min(u, d_out - u)`` and ``Im z[u]``
  into slot ``d_out - u`` (sign +) or ``u`` (sign -), halved except at the real slots
  ``0, d_out/2``, where the imaginary part drops out.

So ``Yp = M(f) Xp`` with a sparse real ``d_out x d_in`` matrix ``M`` of at most ``2 n``
entries ``M[dst_j, src_j] += coef_j f[kidx_j]`` (the *plan* below), and
``y = (scaling / d_in) irdfft(Yp)``.  The transposes needed by backward follow docs/operators.rst, "Gradients without saved buffers":
``rdfft^T = B D`` and ``irdfft^T = D^{-1} F / n`` (``F``/``B`` the unnormalised forward /
inverse, ``D`` the Parseval diagonal), i.e. the ``weighted`` members of ``circfft::transform``.

The forward/backward pair is registered as custom operators (``circfft::fourierft`` and
``circfft::fourierft_backward``) so that the chunk loop stays opaque to ``torch.compile``.
Only ``x`` itself is saved for backward (the tensor the frozen base layer saves anyway); the
backward recomputes its spectrum chunk by chunk.  Temporaries are bounded by the chunk size.
"""
from __future__ import annotations

import math

import torch

from .._chunking import chunk_ranges
from ..backends import get_backend
from ..backends.torch_backend import define_op

__all__ = ["fourierft_plan", "fourierft_apply", "fourierft_delta_weight", "choose_route",
           "DENSE_FLOP_WEIGHT"]

_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(*dtypes):
    dt = dtypes[0]
    for d in dtypes[1:]:
        dt = torch.promote_types(dt, d)
    return torch.float32 if dt in _HALF else dt


# ---------------------------------------------------------------------------------------------
# The plan: sparse packed-domain matrix M(f) as index/coefficient vectors
# ---------------------------------------------------------------------------------------------
def fourierft_plan(rows, cols, d_out: int, d_in: int):
    """Index form of the packed-domain map ``Yp = M(f) Xp`` (see the module docstring).

    Returns
    -------
    src, dst, kidx : LongTensor, shape (J,)
        Packed slot read in ``Xp``, slot written in ``Yp`` and entry of ``f`` for each of the
        ``J <= 2 n`` terms (terms with a zero coefficient are dropped).
    coef : Tensor (float64), shape (J,)
        ``0.5``, ``-0.5`` or ``1`` (Hermitian folding and the conjugation sign).
    """
    dev = rows.device
    r = rows.to(torch.int64)
    c = cols.to(torch.int64)
    k = torch.arange(r.numel(), device=dev)
    # -- the gathered factor conj(X[c]) = Xp[re_slot] + i * sigma * Xp[im_slot] ---------------
    cm = torch.minimum(c, d_in - c)                       # folded input frequency
    re_slot = cm
    im_slot = d_in - cm
    has_im = (cm != 0) & (2 * cm != d_in)
    sigma = torch.where(c > cm, 1.0, -1.0).to(torch.float64)   # c > d_in/2 reads X[d_in-c]
    # -- the Hermitian part of z over the output frequency u = rows -----------------------------
    um = torch.minimum(r, d_out - r)
    real_row = (um == 0) | (2 * um == d_out)
    half = torch.where(real_row, 1.0, 0.5).to(torch.float64)
    # Im z[u] goes to slot d_out - u (u below d_out/2, sign +) or u (above, sign -)
    out_im_slot = torch.where(r > um, r, d_out - r)
    out_im_sign = torch.where(r > um, -0.5, 0.5).to(torch.float64)
    keep_im = has_im & ~real_row
    src = torch.cat([re_slot, im_slot[keep_im]])
    dst = torch.cat([um, out_im_slot[keep_im]])
    coef = torch.cat([half, (sigma * out_im_sign)[keep_im]])
    kidx = torch.cat([k, k[keep_im]])
    return src, dst, kidx, coef


# ---------------------------------------------------------------------------------------------
# Custom operators: chunked forward and backward
# ---------------------------------------------------------------------------------------------
def _transform_(buf, forward, scale, weighted):
    torch.ops.circfft.transform_(buf, 1, forward, scale, torch.get_num_threads(), weighted)


def _ranges(x, width):
    """Row chunks on the CPU (:mod:`circfft._chunking`); all rows at once on a GPU."""
    T = int(x.shape[0])
    if x.device.type != "cpu":
        return [(0, T)] if T else []
    return chunk_ranges(T, width)


def _fwd_impl(x, spectrum, src, dst, kidx, coef, d_out: int, scale: float):
    T, d_in = x.shape
    cd = _compute_dtype(x.dtype, spectrum.dtype)
    y = torch.zeros((T, d_out), dtype=cd, device=x.device)
    if T == 0:
        return y
    vals = spectrum.to(cd)[kidx] * coef.to(cd)              # (J,) entries of M(f)
    for t0, t1 in _ranges(x, max(d_in, d_out, src.numel())):
        Xp = x[t0:t1].to(cd, copy=True)
        _transform_(Xp, True, 1.0, False)                   # Xp = rdfft(x)
        g = torch.index_select(Xp, 1, src).mul_(vals)       # (faster than Xp[:, src])
        Yp = y[t0:t1]
        Yp.index_add_(1, dst, g)                            # Yp = M(f) Xp
        _transform_(Yp, False, scale / d_out, False)        # y = scale * irdfft(Yp)
    return y


def _fwd_fake(x, spectrum, src, dst, kidx, coef, d_out, scale):
    cd = _compute_dtype(x.dtype, spectrum.dtype)
    return x.new_empty((x.shape[0], d_out), dtype=cd)


def _bwd_impl(gy, x, spectrum, src, dst, kidx, coef, scale: float, need_x: bool,
              need_f: bool):
    T, d_in = x.shape
    d_out = gy.shape[1]
    cd = _compute_dtype(x.dtype, spectrum.dtype)
    dev = x.device
    dx = torch.empty((T, d_in) if need_x else (0,), dtype=x.dtype, device=dev)
    acc_dt = torch.float64 if dev.type == "cpu" or cd == torch.float64 else cd
    J = src.numel()
    vals = spectrum.to(cd)[kidx] * coef.to(cd)
    acc = torch.zeros(J if need_f else 0, dtype=acc_dt, device=dev)
    if need_x or need_f:
        for t0, t1 in _ranges(x, max(d_in, d_out, J)):
            # gY = irdfft^T(scale * gy) = (scale / d_out) D^{-1} F gy
            gY = gy[t0:t1].to(cd, copy=True)
            _transform_(gY, True, scale / d_out, True)
            gd = torch.index_select(gY, 1, dst)             # (t, J)
            if need_f:
                Xp = x[t0:t1].to(cd, copy=True)             # recompute rdfft(x)
                _transform_(Xp, True, 1.0, False)
                acc += (gd * torch.index_select(Xp, 1, src)).sum(0, dtype=acc_dt)
            if need_x:
                dXp = torch.zeros((t1 - t0, d_in), dtype=cd, device=dev)
                dXp.index_add_(1, src, gd.mul_(vals))       # M(f)^T gY
                _transform_(dXp, False, 1.0, True)          # rdfft^T = B D
                dx[t0:t1] = dXp
    if need_f:
        df = torch.zeros(spectrum.shape[0], dtype=acc_dt, device=dev)
        df.index_add_(0, kidx, acc * coef.to(acc_dt))
        df = df.to(spectrum.dtype)
    else:
        df = spectrum.new_empty((0,))
    return dx, df


def _bwd_fake(gy, x, spectrum, src, dst, kidx, coef, scale, need_x, need_f):
    return (x.new_empty(tuple(x.shape) if need_x else (0,)),
            spectrum.new_empty(tuple(spectrum.shape) if need_f else (0,)))


def _setup(ctx, inputs, output):
    x, spectrum, src, dst, kidx, coef, d_out, scale = inputs
    ctx.scale = scale
    # x is the caller's tensor (or a view of it): saving it adds no activation memory.
    ctx.save_for_backward(x, spectrum, src, dst, kidx, coef)


def _backward(ctx, gy):
    x, spectrum, src, dst, kidx, coef = ctx.saved_tensors
    need_x, need_f = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    if not (need_x or need_f):
        return (None,) * 8
    dx, df = torch.ops.circfft.fourierft_backward(gy.contiguous(), x, spectrum, src, dst, kidx,
                                                  coef, ctx.scale, need_x, need_f)
    return (dx if need_x else None, df if need_f else None) + (None,) * 6


# ---------------------------------------------------------------------------------------------
# The dense update
# ---------------------------------------------------------------------------------------------
# dW = scaling * Re(ifft2(F)) for the real sparse grid F equals scaling * ifft2(H) with the
# Hermitian (real, point-symmetric) grid H = (F + F[-r, -c]) / 2, so one real 2-d transform
# of H builds it.
def fourierft_delta_weight(spectrum, rows, cols, d_out: int, d_in: int, scaling: float,
                           dtype):
    """Dense ``dW = scaling * Re(ifft2(F))`` (d_out, d_in) in ``dtype``, ``F[rows_k, cols_k]``
    = ``spectrum_k`` (repeated positions add), differentiable in ``spectrum``.

    One ``rfft2`` of the Hermitian grid: 0.5 / 1.3 ms for 384 x 384 / 384 x 1536 with
    n = 1000 on one core, against 1.6 / 5.0 ms for two packed transforms of the grid and
    0.5 / 5.1 ms for ``ifft2`` of the sparse grid.  The one builder of ``dW``: merging,
    the merged route, the dense route and `circfft.nn.functional.fourierft_delta_weight`.
    """
    r = rows.to(torch.int64)
    c = cols.to(torch.int64)
    # H = (F + F[-r, -c]) / 2 by a flat index_add (index_put with accumulate is far slower)
    flat = torch.cat([r * d_in + c, ((d_out - r) % d_out) * d_in + (d_in - c) % d_in])
    half = spectrum.to(dtype) * (0.5 * scaling / (d_out * d_in))
    H = torch.zeros(d_out * d_in, dtype=dtype, device=spectrum.device)
    H.index_add_(0, flat, torch.cat([half, half]))
    # H is real and point-symmetric, so ifft2(H) = fft2(H) / N is real and point-symmetric:
    # the forward real transform (cheaper than the inverse one) gives columns 0..d_in/2, the
    # rest is dW[i, j] = dW[-i, d_in - j].
    R = torch.fft.rfft2(H.view(d_out, d_in)).real
    h = d_in // 2 + 1
    if d_in - h == 0:
        return R.contiguous()
    neg = (-torch.arange(d_out, device=R.device)) % d_out
    right = R.index_select(0, neg)[:, 1:d_in - h + 1].flip(1)
    return torch.cat([R, right], dim=1)


# The torch backend, loaded first, registers circfft::transform_ used by the operators.
get_backend("torch")
define_op("circfft::fourierft", _fwd_impl,
          "(Tensor x, Tensor spectrum, Tensor src, Tensor dst, Tensor kidx, Tensor coef, "
          "int d_out, float scale) -> Tensor", _fwd_fake, _backward, _setup)
define_op("circfft::fourierft_backward", _bwd_impl,
          "(Tensor gy, Tensor x, Tensor spectrum, Tensor src, Tensor dst, Tensor kidx, "
          "Tensor coef, float scale, bool need_x, bool need_f) -> (Tensor, Tensor)",
          _bwd_fake)


# ---------------------------------------------------------------------------------------------
# Public helpers used by circfft.nn.functional
# ---------------------------------------------------------------------------------------------
def fourierft_apply(x2, spectrum, plan, d_out: int, scaling: float):
    """``(scaling / d_in) * irdfft(M(f) rdfft(x2))`` for rows ``x2`` (T, d_in), contiguous."""
    src, dst, kidx, coef = plan
    d_in = x2.shape[1]
    return torch.ops.circfft.fourierft(x2, spectrum, src, dst, kidx, coef, int(d_out),
                                       float(scaling) / d_in)


#: Dense (matmul) flops are counted at this fraction in `choose_route`: a BLAS matmul runs
#: about this many times more flops per second than the transforms and the gather/scatter of
#: the fft route (measured on a 2-core x86 CPU with float32: 768x768 and 768x3072 weights
#: with n=1000 are faster on the fft route, 64x64 with n=1000 on the dense route).
DENSE_FLOP_WEIGHT = 1.0 / 8.0


def choose_route(tokens: int, d_out: int, d_in: int, n: int) -> str:
    """``"dense"`` when building dW and one matmul costs fewer flops than the sparse route.

    dense: ``(d_out d_in (log2 d_out + log2 d_in) + tokens d_out d_in) * DENSE_FLOP_WEIGHT``;
    fft:   ``tokens (d_in log2 d_in + d_out log2 d_out + 2 n)``.
    """
    lo, li = math.log2(max(d_out, 2)), math.log2(max(d_in, 2))
    dense = (d_out * d_in * (lo + li) + tokens * d_out * d_in) * DENSE_FLOP_WEIGHT
    sparse = tokens * (d_in * li + d_out * lo + 2 * n)
    return "dense" if dense < sparse else "fft"
