"""Base layer and adapter update in one matmul, ``y = x (W + dW)^T + bias``: the merged route.

Two registered operators with autograd, used by :class:`circfft.nn.CirculantAdapter` and
:class:`circfft.nn.FourierFTAdapter` when the merged route applies (see the layers' module):

``circfft::block_circulant_linear(x, weight, bias, w, scale) -> y``
    ``dW = scale * C(w)`` (block-circulant); the kernel gradient comes from the spectra of ``x``
    and ``grad y`` (one batched complex matmul over frequencies, no ``gy^T x``).
``circfft::fourierft_linear(x, weight, bias, spectrum, rows, cols, scaling) -> (y, W + dW)``
    ``dW`` PEFT's FourierFT update; the coefficient gradient is gathered from the spectra of
    ``x`` and ``grad y`` or read from the 2-d transform of ``gy^T x``.

Only ``x`` (the caller's tensor), the frozen weight and the small adapter tensors are saved; the
merged weight is rebuilt in backward (a ``d_out x d_in`` temporary), so the route adds no
activation memory.  CPU temporaries are chunked by :mod:`circfft._chunking`.
"""
from __future__ import annotations

import torch

from .._chunking import chunk_ranges, rows_per_chunk
from .._config import get_config
from ..backends.torch_backend import define_op
from ._fourierft import fourierft_delta_weight

__all__ = ["block_circulant_linear", "fourierft_linear", "GATHER_GRAD_RATIO"]



def _ranges(x, width):
    """Row chunks on the CPU; all rows at once on a GPU."""
    T = int(x.shape[0])
    if x.device.type != "cpu":
        return [(0, T)] if T else []
    return chunk_ranges(T, width)


# ---------------------------------------------------------------------------------------------
# Block-circulant
# ---------------------------------------------------------------------------------------------
# Up to a few thousand tokens one BLAS matmul with the merged d_out x d_in weight beats the
# transforms and packed products of the update, and the base layer's own matmul is shared.
# Only x (the caller's tensor), the frozen weight and the small kernel are saved; the merged
# weight is rebuilt in backward (a d_out x d_in temporary), so no activation is added.  The
# kernel gradient comes from the spectra of x and gy (no gy^T x matmul).
def _bc_kernel_grad(g2, x2, m, n, b):
    """``gw[i, j] = sum_tokens corr(gy_i, x_j)``: per frequency ``conj(X_j) G_i`` summed over
    the tokens, one batched complex matmul over the ``b/2 + 1`` frequencies (``docs/operators.rst``); the
    full ``d_out x d_in`` product ``gy^T x`` is never formed."""
    acc = None
    for t0, t1 in _ranges(x2, 2 * x2.shape[1] + g2.shape[1]):
        t = t1 - t0
        # Spectra with the tokens last, so both matmul operands are plain strided views:
        # Re and Im of G^T conj(X) are [Gr, Gi] . [Xr, Xi] and [Gr, Gi] . [-Xi, Xr] (the
        # pairs of i X), summed over the tokens by one real batched matmul over frequencies
        # (a complex bmm of such small matrices loops per batch).
        Gf = torch.fft.rfft(g2[t0:t1].t().reshape(m, b, t), dim=1)       # (m, h, t)
        Xf = torch.fft.rfft(x2[t0:t1].t().reshape(n, b, t), dim=1)       # (n, h, t)
        h = Xf.shape[1]
        XX = torch.view_as_real(torch.cat([Xf, Xf * 1j])).contiguous()  # (2n, h, t, 2)
        L = torch.view_as_real(Gf.contiguous()).reshape(m, h, 2 * t).transpose(0, 1)
        R = XX.reshape(2 * n, h, 2 * t).permute(1, 2, 0)                # (h, 2t, 2n)
        M = torch.matmul(L, R)                                          # (h, m, 2n)
        acc = M if acc is None else acc.add_(M)
    if acc is None:                                                   # no tokens
        return g2.new_zeros((m, n, b))
    acc = acc.view(h, m, 2, n).permute(1, 3, 0, 2).contiguous()      # (m, n, h, 2)
    return torch.fft.irfft(torch.view_as_complex(acc), n=b, dim=-1)


def _bc_merged_weight(weight, w, scale):
    """``weight + scale * C(w)``: one contiguous copy of ``weight``, the blocks added in place.

    ``C[i*b + r, j*b + s] = w[i, j, (r - s) % b]``: with ``P[t] = w[(t + 1) % b]``
    (t < 2b - 1), row r of a block is the window ``P[r : r + b]`` reversed, so ``unfold``
    views every window and one ``flip`` copies a few block rows of them out at a time.  This
    took 0.10 against 0.16 ms for a 384 x 384 weight and 0.19 against 0.52 ms for 384 x 1536
    than a gather by a cached index (which also kept 8 bytes per weight entry alive).
    Smaller pieces (2**16 elements), or building and multiplying in block-row pieces to keep
    even the merged weight out of the peak on small batches, made a step of the demo model
    on its own 32 x 6 batch 6-10 % slower (per-call overhead of many small ops).
    """
    m, n, b = w.shape
    ws = w.to(weight.dtype) * scale
    out = weight.clone(memory_format=torch.contiguous_format)
    blocks = out.view(m, b, n, b)
    step = rows_per_chunk(m, b * n * b)     # a few block rows of windows at a time
    for i0 in range(0, m, step):
        blk = ws[i0:i0 + step]
        C = torch.cat([blk[..., 1:], blk], dim=-1).unfold(-1, b, 1).flip(-1)  # (k, n, b, b)
        blocks[i0:i0 + step].add_(C.permute(0, 2, 1, 3))
    return out


def _bc_linear_impl(x, weight, bias, w, scale: float):
    x2 = x.reshape(-1, x.shape[-1])
    wm = _bc_merged_weight(weight, w, scale)
    y = torch.addmm(bias, x2, wm.t()) if bias is not None else x2 @ wm.t()
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _bc_linear_fake(x, weight, bias, w, scale):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _bc_linear_setup(ctx, inputs, output):
    x, weight, bias, w, scale = inputs
    ctx.scale = scale
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, w)


def _bc_linear_backward(ctx, gy):
    x, weight, w = ctx.saved_tensors
    need_x, need_weight, need_bias, need_w = (bool(ctx.needs_input_grad[i]) for i in range(4))
    g2 = gy.reshape(-1, gy.shape[-1]).contiguous()          # (BLAS wants unit strides)
    x2 = x.reshape(-1, x.shape[-1])
    dx = dweight = dbias = dw = None
    if need_x:
        dx = (g2 @ _bc_merged_weight(weight, w, ctx.scale)).reshape(x.shape)
    if need_weight:
        dweight = g2.t() @ x2
    if need_w:
        m, n, b = w.shape
        dw = (_bc_kernel_grad(g2, x2.to(g2.dtype), m, n, b) * ctx.scale).to(w.dtype)
    if need_bias and ctx.has_bias:
        dbias = g2.sum(0)
    return dx, dweight, dbias, dw, None


# ---------------------------------------------------------------------------------------------
# FourierFT
# ---------------------------------------------------------------------------------------------
#: With ``circfft.config(fourierft_grad="auto")`` the merged route's spectrum gradient gathers
#: ``n`` products per token when ``n * GATHER_GRAD_RATIO < d_out * d_in``; otherwise it forms
#: ``gy^T x`` (one matmul of ``tokens * d_out * d_in``) and reads ``n`` entries of its 2-d
#: transform.
GATHER_GRAD_RATIO = 256


def _fourierft_dense_adjoint(G, rows, cols, scaling: float):
    """``(scaling / N) Re(fft2(G))[rows, cols]`` for a real ``G`` (d_out, d_in)."""
    d_out, d_in = G.shape
    R = torch.fft.rfft2(G).real
    r = rows.to(torch.int64)
    c = cols.to(torch.int64)
    right = c > d_in // 2
    r = torch.where(right, (d_out - r) % d_out, r)
    c = torch.where(right, d_in - c, c)
    return R[r, c] * (scaling / (d_out * d_in))


def _spectrum_grad(g2, x2, rows, cols, scaling: float):
    """``d<G, dW>/df_k`` for ``G = gy^T x`` without forming ``G``: ``(scaling / N)
    Re(fft2(G))[r_k, c_k] = (scaling / N) sum_tokens Re(fft(gy)[r_k] fft(x)[c_k])``, gathered
    from the half spectra (``fft(v)[u] = conj(rfft(v)[d - u])`` above ``d/2``), in row chunks
    whose gathered factors stay near the size of a few rows of ``x``."""
    T, d_in = x2.shape
    d_out = g2.shape[1]
    r = rows.to(torch.int64)
    c = cols.to(torch.int64)
    r_hi = r > d_out // 2
    c_hi = c > d_in // 2
    rh = torch.where(r_hi, d_out - r, r)
    ch = torch.where(c_hi, d_in - c, c)
    # Re(a b) with a = conj^p(A), b = conj^q(B): Re A Re B - s Im A Im B, s = (-1)^(p+q)
    sgn = torch.where(r_hi == c_hi, -1.0, 1.0).to(x2.dtype)
    acc = torch.zeros(r.numel(), dtype=x2.dtype, device=x2.device)
    for t0, t1 in _ranges(x2, r.numel()):
        # frequencies first, so each gather copies whole rows (h, t, 2) -> (n, t, 2)
        A = torch.view_as_real(torch.fft.rfft(g2[t0:t1].t(), dim=0)).index_select(0, rh)
        B = torch.view_as_real(torch.fft.rfft(x2[t0:t1].t(), dim=0)).index_select(0, ch)
        P = (A * B).sum(1)                                  # (n, 2): sums of Re*Re, Im*Im
        acc += P[:, 0] + sgn * P[:, 1]
    return acc * (scaling / (d_out * d_in))


def _merged_weight(weight, spectrum, rows, cols, scaling):
    d_out, d_in = weight.shape
    return weight + fourierft_delta_weight(spectrum, rows, cols, d_out, d_in, scaling,
                                           weight.dtype)


def _linear_forward(x, weight, bias, spectrum, rows, cols, scaling):
    x2 = x.reshape(-1, x.shape[-1])
    wm = _merged_weight(weight, spectrum, rows, cols, scaling)
    y = torch.addmm(bias, x2, wm.t()) if bias is not None else x2 @ wm.t()
    return y.reshape(*x.shape[:-1], weight.shape[0]), wm


def _linear_train_impl(x, weight, bias, spectrum, rows, cols, scaling: float):
    return _linear_forward(x, weight, bias, spectrum, rows, cols, scaling)


def _linear_train_fake(x, weight, bias, spectrum, rows, cols, scaling):
    return x.new_empty((*x.shape[:-1], weight.shape[0])), weight.new_empty(weight.shape)


def _linear_setup(ctx, inputs, output):
    x, weight, bias, spectrum, rows, cols, scaling = inputs
    ctx.scaling = scaling
    ctx.has_bias = bias is not None
    # Saving the merged weight (d_out x d_in per layer) would spare one build in backward, but
    # across a model it adds more memory than PEFT's FourierFT peaks above (measured with
    # `python -m circfft bench --adapters`): rebuilt unless config(save_merged_weight=True).
    ctx.save_merged = get_config().save_merged_weight
    ctx.save_for_backward(x, output[1] if ctx.save_merged else weight, spectrum, rows, cols)


def _linear_backward(ctx, gy, gwm):
    x, w_saved, spectrum, rows, cols = ctx.saved_tensors
    wm = w_saved if ctx.save_merged else None
    need_x, need_weight, need_bias, need_f = (bool(ctx.needs_input_grad[i]) for i in range(4))
    g2 = gy.reshape(-1, gy.shape[-1]).contiguous()          # (BLAS wants unit strides)
    x2 = x.reshape(-1, x.shape[-1])
    dx = dweight = dbias = df = None
    if need_x:
        if wm is None:
            wm = _merged_weight(w_saved, spectrum, rows, cols, ctx.scaling)
        dx = (g2 @ wm).reshape(x.shape)
    if need_weight:
        dweight = g2.t() @ x2
    if need_f:
        d_out, d_in = w_saved.shape
        how = get_config().fourierft_grad
        if how == "auto":
            how = "gather" if rows.numel() * GATHER_GRAD_RATIO < d_out * d_in else "dense"
        if how == "gather":
            df = _spectrum_grad(g2, x2.to(g2.dtype), rows, cols, ctx.scaling)
        else:
            df = _fourierft_dense_adjoint(g2.t() @ x2.to(g2.dtype), rows, cols, ctx.scaling)
        df = df.to(spectrum.dtype)
    if need_bias and ctx.has_bias:
        dbias = g2.sum(0)
    return dx, dweight, dbias, df, None, None, None


def fourierft_linear(x, weight, bias, spectrum, rows, cols, scaling: float):
    """``x (weight + dW)^T + bias`` in one matmul (``dW`` PEFT's FourierFT update)."""
    return torch.ops.circfft.fourierft_linear(x, weight, bias, spectrum, rows, cols,
                                              float(scaling))[0]


def block_circulant_linear(x, weight, bias, w, scale: float):
    """``x (weight + scale C(w))^T + bias`` in one matmul."""
    return torch.ops.circfft.block_circulant_linear(x, weight, bias, w, float(scale))


define_op("circfft::block_circulant_linear", _bc_linear_impl,
          "(Tensor x, Tensor weight, Tensor? bias, Tensor w, float scale) -> Tensor",
          _bc_linear_fake, _bc_linear_backward, _bc_linear_setup)
define_op("circfft::fourierft_linear", _linear_train_impl,
          "(Tensor x, Tensor weight, Tensor? bias, Tensor spectrum, Tensor rows, Tensor cols, "
          "float scaling) -> (Tensor, Tensor)",
          _linear_train_fake, _linear_backward, _linear_setup)
