"""PyTorch backend: ``rdfft``/``irdfft`` and the circulant operators on tensors, with autograd.

Importing this module does not import torch; :meth:`TorchBackend.load` does, and registers the
custom operators (namespace ``circfft``) on first use.  Those operators are what makes the
transforms work unchanged in eager mode, under ``torch.no_grad``/``torch.inference_mode`` and
inside ``torch.compile(fullgraph=True)``:

``circfft::transform(x, dim, forward, scale, workers, weighted) -> Tensor``
    Out-of-place transform along ``dim``, with an autograd formula.
``circfft::transform_(x!, dim, forward, scale, workers, weighted) -> ()``
    The same, in place (no autograd formula: the in-place public path wraps it in an
    ``autograd.Function`` that marks ``x`` dirty).
``circfft::block_circulant(x, w, pre, post, transpose, save_input=False) -> (y, spec)``
    ``y = post * C(w) (pre * x)`` (or ``C(w)^T``) on rows of ``x``; ``spec`` is the packed
    spectrum of ``pre * x`` in the slot layout below, the only tensor saved for backward.
    With ``save_input`` ``spec`` is empty and ``x`` itself is saved instead.
``circfft::block_circulant_backward(..., save_input=False) -> (dx, dw, dpre, dpost)``
    The gradients, computed chunk by chunk from ``spec`` (with ``save_input``: from ``x``,
    whose spectrum is recomputed chunk by chunk).

Linear algebra of the transform (DESIGN §2).  Write ``F`` for the unnormalised forward
transform (the matrix ``R``), ``B = n R^{-1}`` for the unnormalised inverse and ``D`` for the
diagonal with 1 at slots 0 and ``n/2`` and 1/2 elsewhere, so that ``R R^T = n D``.  Then
``F^T = B D`` and ``B^T = D^{-1} F``.  The op computes ``s F``, ``s D^{-1} F`` (forward,
weighted), ``s B`` or ``s B D`` (inverse, weighted), and the adjoint of each member of this
family is the member with both ``forward`` and ``weighted`` flipped.  So every backward is a
diagonal scaling (two columns touched) plus one transform, run in place on the one buffer that
becomes the gradient; nothing is saved.

Devices.  CPU tensors (float32/float64) are transformed by the numba kernels (numpy backend if
numba is missing) on zero-copy numpy views of the tensor's memory.  CUDA tensors use the kernel
set with :func:`set_cuda_kernel` when one is registered (the hook for a GPU backend), and
otherwise a correct ``torch.fft`` path.  float16/bfloat16 are computed in float32 and returned
in their own dtype.

Slot layout of a block spectrum.  For rows of ``nb`` blocks of length ``b`` the packed spectra
are stored frequency-major as ``spec[S, T, 2 nb]`` with ``S = ceil(b/2)``: slot ``k >= 1`` holds
``[Re X_k of every block, Im X_k of every block]``; slot 0 holds ``[X_0, X_{b/2}]`` (both real;
zeros for odd ``b``).  The block-circulant product is then one real batched matmul per chunk,
``(S, t, 2 nb_in) @ (S, 2 nb_in, 2 nb_out)``, whose ``2 x 2`` block structure
``[[Wr, Wi], [-Wi, Wr]]`` is the complex product of DESIGN §3, and the same buffer has exactly
the size of ``x`` for even ``b``.  A kernel with a single block (``m = n = 1``: a plain
circulant, or ``b = d``) keeps the packed rows as they are, ``spec[T, b]``, and multiplies them
pair by pair.

Chunks and threads.  Rows are processed in chunks of about `CHUNK_ELEMENTS` elements, so the
temporaries never grow with the number of rows.  On the CPU the chunks are shared among
``torch.get_num_threads()`` Python threads (the numba kernels, numpy copies and BLAS calls
release the GIL) while torch's own intra-op pool is set to one thread for the duration of the
call (restored afterwards): chunk-sized operations are too small for a fork-join pool.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from .._validation import (check_axis, check_device_out, check_norm, check_workers,
                           scale_for, strides_self_overlap)
from ._base import Backend, BackendUnavailable

__all__ = ["TorchBackend", "set_cuda_kernel", "CHUNK_ELEMENTS"]

#: Rows of ``x`` are processed in chunks of about this many elements (per side), so that the
#: temporaries of the circulant operators never grow with the number of tokens.
CHUNK_ELEMENTS = 1 << 18
#: At most this many threads share the chunks of one circulant operator call.
MAX_THREADS = 8

torch = None            # the torch module, bound by TorchBackend.load()
_ops = None             # torch.ops.circfft once registered
_register_lock = threading.Lock()
_cpu = None             # the numpy-family backend running the CPU kernels
_cuda_kernel = None     # optional GPU kernel: fn(x, forward, scale) in place on the last axis
_force_torch_fft = False  # tests: run the torch.fft path on CPU tensors too

_HALF = ()              # (torch.float16, torch.bfloat16) once torch is loaded
_FLOATS = ()


def set_cuda_kernel(fn) -> None:
    """Register the in-place GPU transform used for CUDA tensors (the GPU backend's hook).

    ``fn(x, forward, scale)`` must transform the float32/float64 CUDA tensor ``x`` in place
    along its last axis (any strides of the other axes), unnormalised and multiplied by
    ``scale``, exactly as :meth:`circfft.backends.Backend.execute` does for numpy views.
    ``None`` restores the ``torch.fft`` fallback.
    """
    global _cuda_kernel
    _cuda_kernel = fn


# ---------------------------------------------------------------------------------------------
# Kernels on tensors (no autograd here: these run inside the custom ops)
# ---------------------------------------------------------------------------------------------
def _cpu_backend():
    global _cpu
    if _cpu is None:
        try:
            from .numba_backend import NumbaBackend

            _cpu = NumbaBackend().load()
        except (BackendUnavailable, ImportError):
            from .numpy_backend import NumpyBackend

            _cpu = NumpyBackend().load()
    return _cpu


def _torch_fft_inplace(xm, forward: bool, scale: float) -> None:
    """Unnormalised packed transform of ``xm`` in place along its last axis via torch.fft."""
    n = xm.shape[-1]
    h, ni = n // 2, (n - 1) // 2
    if forward:
        Y = torch.fft.rfft(xm, dim=-1)
        if scale != 1.0:
            Y = Y * scale
        xm[..., : h + 1] = Y.real
        if ni:
            xm[..., n - ni:] = Y.imag[..., 1: ni + 1].flip(-1)
    else:
        imag = torch.zeros_like(xm[..., : h + 1])
        if ni:
            imag[..., 1: ni + 1] = xm[..., n - ni:].flip(-1)
        Y = torch.complex(xm[..., : h + 1], imag)
        r = torch.fft.irfft(Y, n=n, dim=-1, norm="forward")
        if scale != 1.0:
            r = r * scale
        xm.copy_(r)


def _kernel_last(xm, forward: bool, scale: float, workers: int) -> None:
    """Unnormalised transform times ``scale`` in place along the last axis (float32/64)."""
    if xm.numel() == 0:
        return
    if xm.device.type == "cpu" and not _force_torch_fft:
        arr = xm.detach().numpy()
        _cpu_backend().execute(arr, forward=forward, scale=scale, workers=workers)
    elif xm.device.type == "cuda" and _cuda_kernel is not None:
        _cuda_kernel(xm, forward, scale)
    else:
        _torch_fft_inplace(xm, forward, scale)


def _kernel(x, dim: int, forward: bool, scale: float, workers: int, weighted: bool) -> None:
    """The member of the transform family selected by (forward, weighted), in place on ``x``."""
    if x.numel() == 0:
        return
    if x.dtype in _HALF:
        tmp = x.to(torch.float32)
        _kernel(tmp, dim, forward, scale, workers, weighted)
        x.copy_(tmp)
        return
    xm = x.movedim(dim, -1)
    n = xm.shape[-1]
    special = [0] + ([n // 2] if n % 2 == 0 and n > 1 else [])
    if weighted and not forward:            # s * B * D: D first
        for k in special:
            xm[..., k] *= 2.0
        _kernel_last(xm, False, 0.5 * scale, workers)
    elif weighted:                          # s * D^{-1} * F: D^{-1} last
        _kernel_last(xm, True, 2.0 * scale, workers)
        for k in special:
            xm[..., k] *= 0.5
    else:
        _kernel_last(xm, forward, scale, workers)


def _transform_impl(x, dim: int, forward: bool, scale: float, workers: int,
                    weighted: bool):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    y.copy_(x)
    _kernel(y, dim, forward, scale, workers, weighted)
    return y


def _transform_fake(x, dim, forward, scale, workers, weighted):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _transform_inplace_impl(x, dim: int, forward: bool, scale: float, workers: int,
                            weighted: bool) -> None:
    _kernel(x, dim, forward, scale, workers, weighted)


def _transform_setup(ctx, inputs, output):
    _, ctx.dim, ctx.forward, ctx.scale, ctx.workers, ctx.weighted = inputs


def _transform_backward(ctx, grad):
    g = _ops.transform(grad, ctx.dim, not ctx.forward, ctx.scale, ctx.workers,
                       not ctx.weighted)
    return g, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Block-circulant products
# ---------------------------------------------------------------------------------------------
def _compute_dtype(dtype):
    return torch.float32 if dtype in _HALF else dtype


def _np(t):
    """Zero-copy numpy view of a CPU float32/float64 tensor, else None."""
    if (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and not _force_torch_fft):
        return t.detach().numpy()
    return None


def _mul_into(dst, src, vec) -> None:
    """``dst[...] = src * vec`` (a copy when ``vec`` is None).

    On CPU this runs in numpy: the operands are chunk-sized and memory-bound, and a
    round trip through torch's thread pool per call costs more than it saves.
    """
    d, s = _np(dst), _np(src)
    v = None if vec is None else _np(vec)
    if d is not None and s is not None and (vec is None or v is not None):
        if v is None:
            np.copyto(d, s)
        else:
            np.multiply(s, v, out=d)
    elif vec is None:
        dst.copy_(src)
    else:
        torch.mul(src, vec, out=dst)


def _mul_(t, vec) -> None:
    if vec is None:
        return
    a, v = _np(t), _np(vec)
    if a is not None and v is not None:
        a *= v
    else:
        t.mul_(vec)


def _acc_rowdot(acc, a, b) -> None:
    """``acc += sum over rows of a * b`` (``acc`` float64 for numpy-able operands)."""
    an, bn = _np(a), _np(b)
    if an is not None and bn is not None and acc.dtype == torch.float64:
        acc.numpy()[...] += np.einsum("td,td->d", an, bn, dtype=np.float64)
    else:
        acc += (a.to(acc.dtype) * b.to(acc.dtype)).sum(0)


def _packed_w(w, cd):
    W = torch.empty(tuple(w.shape), dtype=cd, device=w.device)
    W.copy_(w)
    _kernel(W, 2, True, 1.0, 1, False)
    return W


def _wbig(w, cd):
    """``(S, 2n, 2m)`` real matrices of the packed spectrum of ``w`` (m, n, b), normal orientation.

    Row-vector convention: a slot row ``[Xr, Xi]`` of the ``n`` input blocks times ``Wbig[k]``
    gives ``[Yr, Yi]`` of the ``m`` output blocks, ``Y = W X`` per frequency.
    """
    m, n, b = w.shape
    S, ni = (b + 1) // 2, (b - 1) // 2
    Wp = _packed_w(w, cd).permute(2, 1, 0)    # (b, n, m): Wp[k] = W[:, :, k]^T
    big = torch.zeros((S, 2 * n, 2 * m), dtype=cd, device=w.device)
    big[0, :n, :m] = Wp[0]
    if b % 2 == 0 and b > 1:
        big[0, n:, m:] = Wp[b // 2]
    if ni:
        wr = Wp[1: ni + 1]
        wi = Wp[b - ni:].flip(0)
        big[1:, :n, :m] = wr
        big[1:, :n, m:] = wi
        big[1:, n:, :m] = -wi
        big[1:, n:, m:] = wr
    return big


def _dw_from_products(P, m, n, b, cd):
    """Packed ``dW`` (m, n, b) from ``P[k] = A_k^T B_k`` (``A`` on the d_out side)."""
    ni = (b - 1) // 2
    dW = torch.zeros((m, n, b), dtype=cd, device=P.device)
    dW[:, :, 0] = P[0, :m, :n]
    if b % 2 == 0 and b > 1:
        dW[:, :, b // 2] = P[0, m:, n:]
    if ni:
        re = P[1:, :m, :n] + P[1:, m:, n:]          # (ni, m, n)
        im = P[1:, m:, :n] - P[1:, :m, n:]
        dW[:, :, 1: ni + 1] = re.permute(1, 2, 0)
        dW[:, :, b - ni:] = im.flip(0).permute(1, 2, 0)
    return dW


# -- layout kernels: numpy reference versions and numba-compiled ones --------------------------
def _slots_numpy(H, out):
    """Packed rows ``H`` (t, nb, b) -> slots ``out`` (S, t, 2 nb)."""
    t, nb, b = H.shape
    ni = (b - 1) // 2
    out[0, :, :nb] = H[:, :, 0]
    out[0, :, nb:] = H[:, :, b // 2] if b % 2 == 0 and b > 1 else 0.0
    if ni:
        out[1:, :, :nb] = H[:, :, 1: ni + 1].transpose(2, 0, 1)
        out[1:, :, nb:] = H[:, :, b - 1: b - ni - 1: -1].transpose(2, 0, 1)


def _unslots_numpy(src, H):
    """Inverse of `_slots_numpy`: slots ``src`` (S, t, 2 nb) -> packed rows ``H`` (t, nb, b)."""
    t, nb, b = H.shape
    ni = (b - 1) // 2
    H[:, :, 0] = src[0, :, :nb]
    if b % 2 == 0 and b > 1:
        H[:, :, b // 2] = src[0, :, nb:]
    if ni:
        H[:, :, 1: ni + 1] = src[1:, :, :nb].transpose(1, 2, 0)
        H[:, :, b - 1: b - ni - 1: -1] = src[1:, :, nb:].transpose(1, 2, 0)


def _hc_mul_numpy(X, W, Y, conj):
    """``Y = W * X`` (``conj(W) * X``) for packed rows ``X``, ``Y`` (t, b) and one ``W`` (b,)."""
    b = X.shape[-1]
    ni = (b - 1) // 2
    sign = -1.0 if conj else 1.0
    xr, xi = X[:, 1: ni + 1], X[:, b - 1: b - ni - 1: -1]
    wr, wi = W[1: ni + 1], sign * W[b - 1: b - ni - 1: -1]
    yr, yi = xr * wr - xi * wi, xr * wi + xi * wr
    Y[:, 0] = X[:, 0] * W[0]
    if b % 2 == 0 and b > 1:
        Y[:, b // 2] = X[:, b // 2] * W[b // 2]
    Y[:, 1: ni + 1] = yr
    Y[:, b - 1: b - ni - 1: -1] = yi


def _hc_conj_dot_numpy(A, B, acc):
    """``acc += sum over rows of conj(A) * B`` in the packed layout (``acc`` float64 (b,))."""
    b = A.shape[-1]
    ni = (b - 1) // 2
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    acc[0] += A64[:, 0] @ B64[:, 0]
    if b % 2 == 0 and b > 1:
        acc[b // 2] += A64[:, b // 2] @ B64[:, b // 2]
    if ni:
        ar, ai = A64[:, 1: ni + 1], A64[:, b - 1: b - ni - 1: -1]
        br, bi = B64[:, 1: ni + 1], B64[:, b - 1: b - ni - 1: -1]
        acc[1: ni + 1] += (ar * br + ai * bi).sum(0)
        acc[b - 1: b - ni - 1: -1] += (ar * bi - ai * br).sum(0)


_layout_fns = None


def _layout_kernels():
    """(to_slots, from_slots, hc_mul, hc_conj_dot): numba-compiled when available."""
    global _layout_fns
    if _layout_fns is not None:
        return _layout_fns
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - depends on the environment
        _layout_fns = (_slots_numpy, _unslots_numpy, _hc_mul_numpy, _hc_conj_dot_numpy)
        return _layout_fns
    jit = njit(cache=True, nogil=True, boundscheck=False)

    # Both layout maps are transposes; tiles of RB tokens x 16 frequencies keep the strided
    # side in the L1 cache while the other side is written/read in contiguous runs.
    @jit
    def to_slots(H, out):
        t, nb, b = H.shape
        ni = (b - 1) // 2
        h = b // 2 if b % 2 == 0 and b > 1 else -1
        RB = max(1, 256 // nb)
        for r0 in range(0, t, RB):
            r1 = min(t, r0 + RB)
            for r in range(r0, r1):
                for j in range(nb):
                    out[0, r, j] = H[r, j, 0]
                    out[0, r, nb + j] = H[r, j, h] if h > 0 else 0.0
            for k0 in range(1, ni + 1, 16):
                for k in range(k0, min(ni + 1, k0 + 16)):
                    for r in range(r0, r1):
                        for j in range(nb):
                            out[k, r, j] = H[r, j, k]
                        for j in range(nb):
                            out[k, r, nb + j] = H[r, j, b - k]

    @jit
    def from_slots(src, H):
        t, nb, b = H.shape
        ni = (b - 1) // 2
        h = b // 2 if b % 2 == 0 and b > 1 else -1
        RB = max(1, 256 // nb)
        for r0 in range(0, t, RB):
            r1 = min(t, r0 + RB)
            for r in range(r0, r1):
                for j in range(nb):
                    H[r, j, 0] = src[0, r, j]
                    if h > 0:
                        H[r, j, h] = src[0, r, nb + j]
            for k0 in range(1, ni + 1, 16):
                for k in range(k0, min(ni + 1, k0 + 16)):
                    for r in range(r0, r1):
                        for j in range(nb):
                            H[r, j, k] = src[k, r, j]
                        for j in range(nb):
                            H[r, j, b - k] = src[k, r, nb + j]

    @jit
    def hc_mul(X, W, Y, conj):
        t, b = X.shape
        ni = (b - 1) // 2
        h = b // 2 if b % 2 == 0 and b > 1 else -1
        sign = -1.0 if conj else 1.0
        for r in range(t):
            Y[r, 0] = X[r, 0] * W[0]
            if h > 0:
                Y[r, h] = X[r, h] * W[h]
            for k in range(1, ni + 1):
                wr = W[k]
                wi = sign * W[b - k]
                xr = X[r, k]
                xi = X[r, b - k]
                Y[r, k] = xr * wr - xi * wi
                Y[r, b - k] = xr * wi + xi * wr

    @jit
    def hc_conj_dot(A, B, acc):
        t, b = A.shape
        ni = (b - 1) // 2
        h = b // 2 if b % 2 == 0 and b > 1 else -1
        for r in range(t):
            acc[0] += np.float64(A[r, 0]) * B[r, 0]
            if h > 0:
                acc[h] += np.float64(A[r, h]) * B[r, h]
            for k in range(1, ni + 1):
                ar = np.float64(A[r, k])
                ai = np.float64(A[r, b - k])
                br = np.float64(B[r, k])
                bi = np.float64(B[r, b - k])
                acc[k] += ar * br + ai * bi
                acc[b - k] += ar * bi - ai * br

    _layout_fns = (to_slots, from_slots, hc_mul, hc_conj_dot)
    return _layout_fns


def _gpu_kernel_for(t):
    """The registered CUDA transform (:func:`set_cuda_kernel`) for a CUDA tensor, else None."""
    return _cuda_kernel if t.device.type == "cuda" else None


def _to_slots(buf, nb, b, sc):
    """Packed spectra of the rows of ``buf`` (t, nb*b) into the slots ``sc`` (S, t, 2 nb).

    ``buf`` (compute dtype, contiguous rows) is transformed in place and so destroyed.
    """
    t = buf.shape[0]
    kernel = _gpu_kernel_for(buf)
    if kernel is not None:
        # CUDA kernels: packed transform in place, then gather the pairs into the slots
        H = buf.view(t, nb, b)
        kernel(H, True, 1.0)
        ni = (b - 1) // 2
        sc[0, :, :nb] = H[..., 0]
        if b % 2 == 0 and b > 1:
            sc[0, :, nb:] = H[..., b // 2]
        else:
            sc[0, :, nb:] = 0.0
        if ni:
            sc[1:, :, :nb] = H[..., 1: ni + 1].permute(2, 0, 1)
            sc[1:, :, nb:] = H[..., b - ni:].flip(-1).permute(2, 0, 1)
        return
    H, out = _np(buf), _np(sc)
    if H is not None and out is not None:
        H = H.reshape(t, nb, b)
        _cpu_backend().execute(H, forward=True, scale=1.0, workers=1)
        _layout_kernels()[0](H, out)
        return
    ni = (b - 1) // 2
    Y = torch.fft.rfft(buf.reshape(t, nb, b), dim=-1)          # (t, nb, b//2+1)
    sc[0, :, :nb] = Y[..., 0].real
    if b % 2 == 0 and b > 1:
        sc[0, :, nb:] = Y[..., b // 2].real
    else:
        sc[0, :, nb:] = 0.0
    if ni:
        Yk = Y[..., 1: ni + 1].permute(2, 0, 1)
        sc[1:, :, :nb] = Yk.real
        sc[1:, :, nb:] = Yk.imag


def _from_slots(sl, nb, b, dst):
    """Inverse of `_to_slots` including irdfft's ``1/b``: slots ``sl`` -> rows of ``dst``."""
    t = dst.shape[0]
    kernel = _gpu_kernel_for(dst)
    if kernel is not None:
        # CUDA kernels: scatter the slots into packed rows, then the inverse in place
        H = dst.view(t, nb, b)
        ni = (b - 1) // 2
        H[..., 0] = sl[0, :, :nb]
        if b % 2 == 0 and b > 1:
            H[..., b // 2] = sl[0, :, nb:]
        if ni:
            H[..., 1: ni + 1] = sl[1:, :, :nb].permute(1, 2, 0)
            H[..., b - ni:] = sl[1:, :, nb:].permute(1, 2, 0).flip(-1)
        kernel(H, False, 1.0 / b)
        return
    H, src = _np(dst), _np(sl)
    if H is not None and src is not None:
        H = H.reshape(t, nb, b)
        _layout_kernels()[1](src, H)
        _cpu_backend().execute(H, forward=False, scale=1.0 / b, workers=1)
        return
    ni, h = (b - 1) // 2, b // 2
    ctype = torch.complex64 if dst.dtype == torch.float32 else torch.complex128
    Y = torch.zeros((t, nb, h + 1), dtype=ctype, device=dst.device)
    Y[..., 0] = sl[0, :, :nb]
    if b % 2 == 0 and b > 1:
        Y[..., h] = sl[0, :, nb:]
    if ni:
        Y[..., 1: ni + 1] = torch.complex(sl[1:, :, :nb], sl[1:, :, nb:]).permute(1, 2, 0)
    dst.view(t, nb, b).copy_(torch.fft.irfft(Y, n=b, dim=-1))


def _apply_slots(sl, M, out):
    """``out = sl @ M`` per slot."""
    torch.bmm(sl, M, out=out)
    return out


def _hc_mul(X, W, Y, conj):
    """Packed rows ``Y = W * X`` (or ``conj(W) * X``) with one spectrum ``W`` (b,)."""
    xn, wn, yn = _np(X), _np(W), _np(Y)
    if xn is not None and wn is not None and yn is not None:
        _layout_kernels()[2](xn, wn, yn, conj)
        return
    b = X.shape[-1]
    ni = (b - 1) // 2
    xr, xi = X[:, 1: ni + 1], X[:, b - ni:].flip(-1)
    wr, wi = W[1: ni + 1], W[b - ni:].flip(-1)
    if conj:
        wi = -wi
    yr, yi = xr * wr - xi * wi, xr * wi + xi * wr
    Y[:, 0] = X[:, 0] * W[0]
    if b % 2 == 0 and b > 1:
        Y[:, b // 2] = X[:, b // 2] * W[b // 2]
    Y[:, 1: ni + 1] = yr
    if ni:
        Y[:, b - ni:] = yi.flip(-1)


def _hc_conj_dot(A, B, acc):
    """``acc += sum over rows of conj(A) * B`` (packed layout, ``acc`` (b,))."""
    an, bn = _np(A), _np(B)
    if an is not None and bn is not None and acc.dtype == torch.float64 and _np(acc) is not None:
        _layout_kernels()[3](an, bn, acc.numpy())
        return
    b = A.shape[-1]
    ni = (b - 1) // 2
    A, B = A.to(acc.dtype), B.to(acc.dtype)
    acc[0] += (A[:, 0] * B[:, 0]).sum()
    if b % 2 == 0 and b > 1:
        acc[b // 2] += (A[:, b // 2] * B[:, b // 2]).sum()
    if ni:
        ar, ai = A[:, 1: ni + 1], A[:, b - ni:].flip(-1)
        br, bi = B[:, 1: ni + 1], B[:, b - ni:].flip(-1)
        acc[1: ni + 1] += (ar * br + ai * bi).sum(0)
        acc[b - ni:] += (ar * bi - ai * br).sum(0).flip(-1)


def _chunk_rows(T, width):
    """Rows per chunk: about `CHUNK_ELEMENTS` elements, and at most 1/32 of the rows so that
    the per-thread chunk buffers stay a small fraction of the input's size."""
    return max(1, min(T, CHUNK_ELEMENTS // max(1, width), max(16, T // 32)))


def _run_chunks(T, tc, make_state, body, nthreads):
    """Call ``body(state, t0, t1)`` for every chunk of rows; return the per-thread states.

    The chunks are shared among ``nthreads`` Python threads (numba kernels, numpy copies and
    BLAS calls all release the GIL).  Callers run this under `_torch_single_threaded`:
    chunk-sized operations are too small for torch's fork-join thread pool, whose barriers cost
    milliseconds each on a busy machine.
    """
    starts = list(range(0, T, tc))
    nthreads = max(1, min(nthreads, len(starts), MAX_THREADS))
    if nthreads == 1:
        state = make_state()
        for t0 in starts:
            body(state, t0, min(T, t0 + tc))
        return [state]
    states = [make_state() for _ in range(nthreads)]

    def run(i):
        # Grad mode is thread-local and on in a new thread: off here, as in the caller (a
        # custom op's kernel), or torch ops on inputs that require grad record graphs/raise.
        with torch.no_grad():
            for t0 in starts[i::nthreads]:
                body(states[i], t0, min(T, t0 + tc))

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(nthreads) as pool:
        for f in [pool.submit(run, i) for i in range(nthreads)]:
            f.result()
    return states


def _chunk_threads(device) -> int:
    """Threads for the chunk loop: torch's CPU thread count; one stream of chunks on GPUs."""
    return torch.get_num_threads() if device.type == "cpu" else 1


_openmp_flag = None


def _openmp() -> bool:
    global _openmp_flag
    if _openmp_flag is None:
        _openmp_flag = "OpenMP" in torch.__config__.parallel_info()
    return _openmp_flag


_threads_lock = threading.Lock()
_threads_depth = 0
_threads_saved = 1


@contextmanager
def _torch_single_threaded():
    """``torch.set_num_threads(1)`` for the duration; nested or concurrent uses restore once."""
    global _threads_depth, _threads_saved
    if not _openmp():
        # torch's native thread pool cannot be resized once used (it warns): leave it alone.
        yield
        return
    with _threads_lock:
        if _threads_depth == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_depth += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_depth -= 1
            if _threads_depth == 0:
                torch.set_num_threads(_threads_saved)


class _Geometry:
    """Shapes of one block-circulant call: ``w`` (m, n, b), input/output block counts."""

    def __init__(self, w, transpose, dtype, T):
        self.m, self.n, self.b = (int(s) for s in w.shape)
        self.nx, self.ny = (self.m, self.n) if transpose else (self.n, self.m)
        self.S = (self.b + 1) // 2
        # One block per side: the packed rows themselves are the layout (no slot transpose).
        self.hc = self.m == 1 and self.n == 1
        self.cd = _compute_dtype(dtype)
        self.T = T
        self.tc = _chunk_rows(T, max(self.nx, self.ny) * self.b)

    def spec_shape(self):
        return (self.T, self.b) if self.hc else (self.S, self.T, 2 * self.nx)

    def buffer(self, device, *shape):
        return torch.empty(shape, dtype=self.cd, device=device)

    def chunk_spec(self, device):
        """Scratch for the spectrum of one chunk of rows (the save_input mode)."""
        shape = (self.tc, self.b) if self.hc else (self.S, self.tc, 2 * self.nx)
        return self.buffer(device, *shape)


def _bc_forward_impl(x, w, pre, post, transpose: bool, save_input: bool = False):
    nthreads = _chunk_threads(x.device)
    with _torch_single_threaded():
        return _bc_forward_chunks(x, w, pre, post, transpose, nthreads, save_input)


def _bc_forward_chunks(x, w, pre, post, transpose, nthreads, save_input=False):
    G = _Geometry(w, transpose, x.dtype, x.shape[0])
    b, cd, dev, tc = G.b, G.cd, x.device, G.tc
    # save_input: the spectrum lives in per-chunk scratch only, and an empty tensor is returned
    spec = torch.empty((0,) if save_input else G.spec_shape(), dtype=cd, device=dev)
    y = torch.empty((G.T, G.ny * b), dtype=x.dtype, device=dev)
    if G.T == 0:
        return y, spec
    # Copies (d-sized): a numpy view of a tensor makes its storage non-resizable for good,
    # and FSDP2 frees unsharded parameters by resizing their storage to zero.
    pre_c = None if pre is None else pre.to(cd, copy=True)
    post_c = None if post is None else post.to(cd, copy=True)
    if G.hc:
        Wp = _packed_w(w, cd).reshape(b)
    else:
        big = _wbig(w, cd)
        M = big.transpose(1, 2) if transpose else big

    def make_state():
        return {
            "ybuf": None if y.dtype == cd else G.buffer(dev, tc, G.ny * b),
            "scratch": None if G.hc else G.buffer(dev, tc, G.nx * b),
            "ysl": None if G.hc else G.buffer(dev, G.S, tc, 2 * G.ny),
            "spec": G.chunk_spec(dev) if save_input else None,
        }

    def body(st, t0, t1):
        k = t1 - t0
        dst = y[t0:t1] if st["ybuf"] is None else st["ybuf"][:k]
        if G.hc:
            sc = st["spec"][:k] if save_input else spec[t0:t1]
            _mul_into(sc, x[t0:t1], pre_c)
            _kernel_last(sc, True, 1.0, 1)
            _hc_mul(sc, Wp, dst, transpose)
            _kernel_last(dst, False, 1.0 / b, 1)
        else:
            xs = st["scratch"][:k]
            _mul_into(xs, x[t0:t1], pre_c)
            sc = st["spec"][:, :k] if save_input else spec[:, t0:t1]
            _to_slots(xs, G.nx, b, sc)
            _from_slots(_apply_slots(sc, M, st["ysl"][:, :k]), G.ny, b, dst)
        _mul_(dst, post_c)
        if st["ybuf"] is not None:
            y[t0:t1].copy_(dst)

    _run_chunks(G.T, tc, make_state, body, nthreads)
    return y, spec


def _bc_forward_fake(x, w, pre, post, transpose, save_input=False):
    G = _Geometry(w, transpose, x.dtype, x.shape[0])
    return (x.new_empty((G.T, G.ny * G.b)),
            x.new_empty((0,) if save_input else G.spec_shape(), dtype=G.cd))


def _bc_backward_impl(gy, spec, w, x, pre, post, transpose: bool, need_x: bool,
                      need_w: bool, need_pre: bool, need_post: bool, save_input: bool = False):
    nthreads = _chunk_threads(gy.device)
    with _torch_single_threaded():
        return _bc_backward_chunks(gy, spec, w, x, pre, post, transpose, need_x, need_w,
                                   need_pre, need_post, nthreads, save_input)


def _bc_backward_chunks(gy, spec, w, x, pre, post, transpose, need_x, need_w, need_pre,
                        need_post, nthreads, save_input=False):
    G = _Geometry(w, transpose, gy.dtype, gy.shape[0])
    m, n, b, cd, dev = G.m, G.n, G.b, G.cd, gy.device
    T, tc = G.T, G.tc
    acc_dt = torch.float64
    pre_c = None if pre is None else pre.to(cd, copy=True)     # copies: see the forward
    post_c = None if post is None else post.to(cd, copy=True)
    need_u = need_x or need_pre
    dx = torch.empty((T, G.nx * b) if need_x else (0,), dtype=gy.dtype, device=dev)
    if G.hc:
        Wp = _packed_w(w, cd).reshape(b)
        p_shape, p_dtype = (b,), acc_dt
    else:
        big = _wbig(w, cd)
        Mf = big.transpose(1, 2) if transpose else big        # x side -> y side
        Mb = Mf.transpose(1, 2)                                 # y side -> x side
        p_shape, p_dtype = (G.S, 2 * m, 2 * n), cd

    def make_state():
        st = {
            "P": torch.zeros(p_shape, dtype=p_dtype, device=dev) if need_w else None,
            "dpre": torch.zeros(G.nx * b, dtype=acc_dt, device=dev) if need_pre else None,
            "dpost": torch.zeros(G.ny * b, dtype=acc_dt, device=dev) if need_post else None,
            "g": G.buffer(dev, tc, G.ny * b),
            "u": (G.buffer(dev, tc, G.nx * b)
                  if need_u and (not need_x or dx.dtype != cd) else None),
            "yp": G.buffer(dev, tc, G.ny * b) if need_post else None,
        }
        if save_input:
            # save_input: the spectrum of pre * x is recomputed per chunk into this scratch
            st["spec"] = G.chunk_spec(dev)
            st["xs"] = None if G.hc else G.buffer(dev, tc, G.nx * b)
        if not G.hc:
            st["gsl"] = G.buffer(dev, G.S, tc, 2 * G.ny)
            st["usl"] = G.buffer(dev, G.S, tc, 2 * G.nx) if need_u else None
            st["ypsl"] = G.buffer(dev, G.S, tc, 2 * G.ny) if need_post else None
        return st

    def body(st, t0, t1):
        k = t1 - t0
        gc = gy[t0:t1]
        g = st["g"][:k]
        _mul_into(g, gc, post_c)
        if save_input and G.hc:
            sc = st["spec"][:k]
            _mul_into(sc, x[t0:t1], pre_c)
            _kernel_last(sc, True, 1.0, 1)
        elif save_input:
            sc = st["spec"][:, :k]
            _mul_into(st["xs"][:k], x[t0:t1], pre_c)
            _to_slots(st["xs"][:k], G.nx, b, sc)
        else:
            sc = spec[t0:t1] if G.hc else spec[:, t0:t1]
        if need_post:
            # d post = sum_t gy * (C (pre x)): recompute C (pre x) from the saved spectrum
            yp = st["yp"][:k]
            if G.hc:
                _hc_mul(sc, Wp, yp, transpose)
                _kernel_last(yp, False, 1.0 / b, 1)
            else:
                _from_slots(_apply_slots(sc, Mf, st["ypsl"][:, :k]), G.ny, b, yp)
            _acc_rowdot(st["dpost"], yp, gc)
        du = None
        if need_u:
            du = st["u"][:k] if st["u"] is not None else dx[t0:t1]
        if G.hc:
            _kernel_last(g, True, 1.0, 1)
            if need_w:
                # dW = sum_t A conj(B), A on the d_out side, B on the d_in side
                if transpose:
                    _hc_conj_dot(g, sc, st["P"])
                else:
                    _hc_conj_dot(sc, g, st["P"])
            if need_u:
                _hc_mul(g, Wp, du, not transpose)
                _kernel_last(du, False, 1.0 / b, 1)
        else:
            gs = st["gsl"][:, :k]
            _to_slots(g, G.ny, b, gs)
            if need_w:
                if transpose:
                    st["P"].baddbmm_(sc.transpose(1, 2), gs)
                else:
                    st["P"].baddbmm_(gs.transpose(1, 2), sc)
            if need_u:
                _from_slots(_apply_slots(gs, Mb, st["usl"][:, :k]), G.nx, b, du)
        if need_pre:
            _acc_rowdot(st["dpre"], x[t0:t1], du)
        if need_x:
            _mul_(du, pre_c)
            if st["u"] is not None:
                dx[t0:t1].copy_(du)

    if T > 0 and (need_u or need_w or need_post):
        states = _run_chunks(T, tc, make_state, body, nthreads)
    else:
        states = [make_state()]

    def total(key):
        parts = [st[key] for st in states]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)

    if need_w:
        P = total("P")
        dW = P.to(cd).reshape(1, 1, b) if G.hc else _dw_from_products(P, m, n, b, cd)
        _kernel(dW, 2, False, 1.0 / b, 1, False)
        dw = dW.to(w.dtype)
    else:
        dw = torch.empty((0,), dtype=w.dtype, device=dev)
    pdt = gy.dtype if pre is None else pre.dtype
    qdt = gy.dtype if post is None else post.dtype
    dpre = total("dpre").to(pdt) if need_pre else torch.empty((0,), dtype=pdt, device=dev)
    dpost = total("dpost").to(qdt) if need_post else torch.empty((0,), dtype=qdt, device=dev)
    return dx, dw, dpre, dpost


def _bc_backward_fake(gy, spec, w, x, pre, post, transpose, need_x, need_w, need_pre,
                      need_post, save_input=False):
    G = _Geometry(w, transpose, gy.dtype, gy.shape[0])
    dx = gy.new_empty((G.T, G.nx * G.b) if need_x else (0,))
    dw = w.new_empty((G.m, G.n, G.b) if need_w else (0,))
    pdt = gy.dtype if pre is None else pre.dtype
    qdt = gy.dtype if post is None else post.dtype
    dpre = gy.new_empty((G.nx * G.b,) if need_pre else (0,), dtype=pdt)
    dpost = gy.new_empty((G.ny * G.b,) if need_post else (0,), dtype=qdt)
    return dx, dw, dpre, dpost


def _bc_setup(ctx, inputs, output):
    x, w, pre, post, transpose, save_input = inputs
    y, spec = output
    ctx.mark_non_differentiable(spec)
    ctx.set_materialize_grads(False)
    ctx.transpose = transpose
    ctx.save_input = save_input
    ctx.has_pre = pre is not None
    ctx.has_post = post is not None
    # save_input: x itself (the caller's tensor, no copy) replaces the spectrum buffer
    keep_x = x if (save_input or (pre is not None and ctx.needs_input_grad[2])) else None
    ctx.save_for_backward(spec, w, keep_x, pre, post)


def _bc_backward(ctx, gy, gspec):
    spec, w, x, pre, post = ctx.saved_tensors
    need_x, need_w, need_pre, need_post = (bool(v) for v in ctx.needs_input_grad[:4])
    need_pre = need_pre and ctx.has_pre
    need_post = need_post and ctx.has_post
    if gy is None or not (need_x or need_w or need_pre or need_post):
        return None, None, None, None, None, None
    dx, dw, dpre, dpost = _ops.block_circulant_backward(
        gy.contiguous(), spec, w, x, pre, post, ctx.transpose, need_x, need_w, need_pre,
        need_post, ctx.save_input)
    return (dx if need_x else None, dw if need_w else None,
            dpre if need_pre else None, dpost if need_post else None, None, None)

# ---------------------------------------------------------------------------------------------
# Base layer and block-circulant update in one matmul: y = x (W + s C(w))^T + bias
# ---------------------------------------------------------------------------------------------
# Up to a few thousand tokens one BLAS matmul with the merged d_out x d_in weight beats the
# transforms and packed products of the update, and the base layer's own matmul is shared.
# Only x (the caller's tensor), the frozen weight and the small kernel are saved; the merged
# weight is rebuilt in backward (a d_out x d_in temporary), so no activation is added.  The
# kernel gradient comes from the spectra of x and gy (no gy^T x matmul).
#: Rows per chunk of the kernel gradient of the merged route bound its spectra to about this
#: many elements (a fraction of x's size: the route adds no activation-sized temporaries).
LINEAR_CHUNK_ELEMENTS = 1 << 18


def _row_chunks(T, width):
    tc = max(1, min(T, LINEAR_CHUNK_ELEMENTS // max(1, width)))
    return [(t0, min(T, t0 + tc)) for t0 in range(0, T, tc)]


def _bc_kernel_grad(g2, x2, m, n, b):
    """``gw[i, j] = sum_tokens corr(gy_i, x_j)``: per frequency ``conj(X_j) G_i`` summed over
    the tokens, one batched complex matmul over the ``b/2 + 1`` frequencies (DESIGN §4); the
    full ``d_out x d_in`` product ``gy^T x`` is never formed."""
    acc = None
    for t0, t1 in _row_chunks(x2.shape[0], 2 * x2.shape[1] + g2.shape[1]):
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


#: The kernel's circulant blocks are added to the merged weight this many elements at a time
#: (the windows of ``_bc_merged_weight`` are a temporary of that size, not of the weight's).
MERGED_PIECE_ELEMENTS = 1 << 18


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
    step = max(1, MERGED_PIECE_ELEMENTS // (b * n * b))
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
# Registration
# ---------------------------------------------------------------------------------------------
def _register():
    global _ops, _HALF, _FLOATS
    if _ops is not None:
        return
    with _register_lock:
        if _ops is not None:
            return
        _HALF = (torch.float16, torch.bfloat16)
        _FLOATS = (torch.float32, torch.float64) + _HALF
        lib = torch.library
        t = lib.custom_op(
            "circfft::transform", _transform_impl, mutates_args=(),
            schema="(Tensor x, int dim, bool forward, float scale, int workers, "
                   "bool weighted) -> Tensor")
        t.register_fake(_transform_fake)
        t.register_autograd(_transform_backward, setup_context=_transform_setup)
        ti = lib.custom_op(
            "circfft::transform_", _transform_inplace_impl, mutates_args=("x",),
            schema="(Tensor(a!) x, int dim, bool forward, float scale, int workers, "
                   "bool weighted) -> ()")
        ti.register_fake(lambda x, dim, forward, scale, workers, weighted: None)
        bc = lib.custom_op(
            "circfft::block_circulant", _bc_forward_impl, mutates_args=(),
            schema="(Tensor x, Tensor w, Tensor? pre, Tensor? post, bool transpose, "
                   "bool save_input=False) -> (Tensor, Tensor)")
        bc.register_fake(_bc_forward_fake)
        bc.register_autograd(_bc_backward, setup_context=_bc_setup)
        bcb = lib.custom_op(
            "circfft::block_circulant_backward", _bc_backward_impl, mutates_args=(),
            schema="(Tensor gy, Tensor spec, Tensor w, Tensor? x, Tensor? pre, Tensor? post, "
                   "bool transpose, bool need_x, bool need_w, bool need_pre, bool need_post, "
                   "bool save_input=False) -> (Tensor, Tensor, Tensor, Tensor)")
        bcb.register_fake(_bc_backward_fake)
        bl = lib.custom_op(
            "circfft::block_circulant_linear", _bc_linear_impl, mutates_args=(),
            schema="(Tensor x, Tensor weight, Tensor? bias, Tensor w, float scale) -> Tensor")
        bl.register_fake(_bc_linear_fake)
        bl.register_autograd(_bc_linear_backward, setup_context=_bc_linear_setup)
        _ops = torch.ops.circfft


def _make_inplace_function():
    class InplaceTransform(torch.autograd.Function):
        """``x`` transformed in place; backward is the adjoint member of the family."""

        @staticmethod
        def forward(ctx, x, dim, forward, scale, workers):
            _ops.transform_(x, dim, forward, scale, workers, False)
            ctx.mark_dirty(x)
            ctx.dim, ctx.forward, ctx.scale, ctx.workers = dim, forward, scale, workers
            return x

        @staticmethod
        def backward(ctx, g):
            return (_ops.transform(g, ctx.dim, not ctx.forward, ctx.scale, ctx.workers, True),
                    None, None, None, None)

    return InplaceTransform


_InplaceTransform = None


# ---------------------------------------------------------------------------------------------
# Argument checking helpers
# ---------------------------------------------------------------------------------------------
def _result_dtype(dtype, name: str, inplace: bool):
    if dtype in _FLOATS:
        return dtype
    allowed = "float32, float64, float16 or bfloat16"
    if dtype.is_complex:
        raise TypeError(f"{name} must be real ({allowed}, or integers); got complex dtype "
                        f"{dtype}: rdfft works on real data")
    if dtype == torch.bool:
        raise TypeError(f"{name} must be a real floating-point ({allowed}) or integer tensor, "
                        f"got dtype {dtype}")
    if inplace:
        raise TypeError(f"{name} must be {allowed} to be transformed in place, got {dtype}")
    return torch.get_default_dtype()


def _same_view(a, b) -> bool:
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def _span(t):
    """Byte interval ``[lo, hi)`` spanned by a tensor's elements."""
    if t.numel() == 0:
        return (0, 0)
    lo = hi = 0
    for size, stride in zip(t.shape, t.stride()):
        if stride < 0:
            lo += (size - 1) * stride
        else:
            hi += (size - 1) * stride
    e = t.element_size()
    base = t.data_ptr()
    return base + lo * e, base + (hi + 1) * e


def _overlap(a, b) -> bool:
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _internal_overlap(t) -> bool:
    """True when distinct indices of ``t`` may share memory (e.g. an expanded view)."""
    return strides_self_overlap(t.shape, t.stride())


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class TorchBackend(Backend):
    """PyTorch tensors on any device, with autograd and ``torch.compile`` support."""

    name = "torch"
    family = "torch"

    def load(self):
        global torch, _InplaceTransform
        try:
            import torch as _torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailable(f"torch is not installed ({exc})") from exc
        torch = _torch
        _register()
        if _cuda_kernel is None and torch.cuda.is_available():
            # The CUDA kernels of the cupy backend, zero-copy through DLPack on torch's
            # current stream; None (torch.fft path) when cupy is missing.
            from .cupy_backend import torch_cuda_kernel

            set_cuda_kernel(torch_cuda_kernel())
        if _InplaceTransform is None:
            _InplaceTransform = _make_inplace_function()
        return self

    # -- low level --------------------------------------------------------------------------
    def execute(self, x, *, forward: bool, scale: float, workers: int) -> None:
        """Transform the tensor ``x`` in place along its last axis (no autograd)."""
        _kernel_last(x, forward, scale, workers)

    # -- rdfft / irdfft ---------------------------------------------------------------------
    def transform(self, x, *, axis=-1, norm=None, out=None, overwrite_x=False, workers=None,
                  forward=True):
        """``rdfft`` (``forward=True``) or ``irdfft`` of a tensor; see :func:`circfft.rdfft`."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        inplace = out is not None and _same_view(out, x)
        dtype = _result_dtype(x.dtype, "x", inplace)
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension, got a 0-d tensor")
        axis = check_axis(axis, x.ndim)
        norm = check_norm(norm)
        workers = check_workers(workers)
        scale = float(scale_for(norm, x.shape[axis], forward))
        if inplace:
            if _internal_overlap(x):
                raise ValueError("x has elements sharing memory (an expanded tensor?), so "
                                 "out=x cannot transform it in place")
            return self._inplace(x, axis, forward, scale, workers)
        if out is not None:
            check_device_out(out, x, dtype, array_type=torch.Tensor, type_name="torch.Tensor",
                             noun="tensor", hint="an expanded tensor?",
                             self_overlap=_internal_overlap, overlaps=_overlap)
            out.copy_(x)
            return self._inplace(out, axis, forward, scale, workers)
        if (overwrite_x and x.dtype == dtype and x.dtype in (torch.float32, torch.float64)
                and not (torch.is_grad_enabled() and x.requires_grad)
                and not _internal_overlap(x)):
            return self._inplace(x, axis, forward, scale, workers)
        if x.dtype != dtype:
            x = x.to(dtype)
        return _ops.transform(x, axis, forward, scale, workers, False)

    @staticmethod
    def _inplace(x, axis, forward, scale, workers):
        if torch.is_grad_enabled() and (x.requires_grad or x.grad_fn is not None):
            return _InplaceTransform.apply(x, axis, forward, scale, workers)
        _ops.transform_(x, axis, forward, scale, workers, False)
        return x

    # -- spectral products ------------------------------------------------------------------
    def spectral_mul(self, A, B, *, conj=False, out=None, axis=-1):
        """Pair-wise product of packed spectra (torch version of :func:`circfft.spectral_mul`)."""
        for name, t in (("A", A), ("B", B)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in _FLOATS:
                raise TypeError(f"{name} must be a real floating-point tensor, got dtype "
                                f"{t.dtype}")
            if t.ndim == 0:
                raise ValueError(f"{name} must have at least one dimension")
        if A.dtype != B.dtype:
            raise TypeError(f"A and B must have the same dtype, got {A.dtype} and {B.dtype}")
        if A.device != B.device:
            raise ValueError(f"A is on {A.device} but B is on {B.device}")
        ndim = max(A.ndim, B.ndim)
        axis = check_axis(axis, ndim)
        Am = A.reshape((1,) * (ndim - A.ndim) + tuple(A.shape)).movedim(axis, -1)
        Bm = B.reshape((1,) * (ndim - B.ndim) + tuple(B.shape)).movedim(axis, -1)
        if Am.shape[-1] != Bm.shape[-1]:
            raise ValueError(f"A and B must have the same length along axis {axis}, "
                             f"got {Am.shape[-1]} and {Bm.shape[-1]}")
        try:
            shape = torch.broadcast_shapes(Am.shape, Bm.shape)
        except RuntimeError:
            raise ValueError(f"A and B do not broadcast: shapes {tuple(A.shape)} and "
                             f"{tuple(B.shape)}") from None
        n = shape[-1]
        ni = (n - 1) // 2
        ar, br = Am[..., 1: ni + 1], Bm[..., 1: ni + 1]
        ai, bi = Am[..., n - ni:].flip(-1), Bm[..., n - ni:].flip(-1)
        if conj:
            zr, zi = ar * br + ai * bi, ar * bi - ai * br
        else:
            zr, zi = ar * br - ai * bi, ar * bi + ai * br
        real = [0] + ([n // 2] if n % 2 == 0 and n > 1 else [])
        zreal = Am[..., real] * Bm[..., real]
        if out is None:
            Z = torch.empty(shape, dtype=A.dtype, device=A.device)
        else:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
            if out.dtype != A.dtype:
                raise TypeError(f"out has dtype {out.dtype}, expected {A.dtype}")
            Z = out.movedim(axis, -1) if out.ndim == ndim else None
            if Z is None or Z.shape != shape:
                raise ValueError(f"out has shape {tuple(out.shape)}, expected the broadcast "
                                 f"shape {tuple(torch.empty(shape, device='meta').movedim(-1, axis).shape)}")
        Z[..., real] = zreal
        Z[..., 1: ni + 1] = zr
        if ni:
            Z[..., n - ni:] = zi.flip(-1)
        return Z.movedim(-1, axis) if out is None else out

    # -- circulant operators (validated by circfft._circulant) -------------------------------
    def block_circulant_matmul(self, w, x, *, transpose=False, pre=None, post=None,
                               save_input=False):
        """``post * C(w) (pre * x)`` (``C(w)^T`` with ``transpose``) on the last axis of ``x``.

        ``save_input=True`` saves ``x`` itself for backward (a view of the caller's tensor when
        ``x`` is contiguous: no new buffer) and recomputes its spectrum there, instead of
        saving a new spectrum buffer of ``x``'s size.
        """
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y, _ = _ops.block_circulant(x2, w, pre, post, bool(transpose), bool(save_input))
        return y.reshape(*lead, y.shape[-1])

    def block_circulant_dense(self, w):
        """Dense ``(m*b, n*b)`` matrix of the kernel ``w`` (m, n, b) by one index gather."""
        m, n, b = w.shape
        dev = w.device
        r = torch.arange(b, device=dev)
        idx = (r[:, None] - r[None, :]) % b
        i = torch.arange(m, device=dev)[:, None, None, None]
        j = torch.arange(n, device=dev)[None, None, :, None]
        return w[i, j, idx[None, :, None, :]].reshape(m * b, n * b)
