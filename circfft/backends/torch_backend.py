"""PyTorch backend: ``rdfft``/``irdfft`` on tensors as registered operators with autograd.

Importing this module does not import torch; :meth:`TorchBackend.load` does, and registers the
custom operators (namespace ``circfft``) on first use.  They make the transforms work unchanged
in eager mode, under ``torch.no_grad``/``torch.inference_mode`` and inside
``torch.compile(fullgraph=True)``:

``circfft::transform(x, dim, forward, scale, workers, weighted) -> Tensor``
    Out-of-place transform along ``dim``, with an autograd formula.
``circfft::transform_(x!, dim, forward, scale, workers, weighted) -> ()``
    The same, in place (no autograd formula: the in-place public path wraps it in an
    ``autograd.Function`` that marks ``x`` dirty).

The block-circulant operators are registered by :mod:`._torch_circulant`.

Linear algebra of the transform (``docs/operators.rst``, "Gradients without saved buffers").  With ``F`` the unnormalised forward
transform (the matrix ``R``), ``B = n R^{-1}`` the unnormalised inverse and ``D`` the diagonal
with 1 at slots 0 and ``n/2`` and 1/2 elsewhere (``R R^T = n D``): ``F^T = B D`` and
``B^T = D^{-1} F``.  The op computes ``s F``, ``s D^{-1} F`` (forward, weighted), ``s B`` or
``s B D`` (inverse, weighted), and the adjoint of each member is the member with both
``forward`` and ``weighted`` flipped: every backward is a diagonal scaling (two columns) plus
one transform, in place on the gradient buffer; nothing is saved.

Devices.  CPU tensors run the numba kernels (numpy backend without numba) on zero-copy numpy
views; CUDA tensors run circfft's CUDA kernels on torch's current stream when CuPy (which
compiles them) is installed, else ``torch.fft``; so does any tensor under
``circfft.config(torch_fft=True)``.  float16/bfloat16 are stored as such and computed in
float32 (on CUDA the kernels read and write half precision directly).
"""
from __future__ import annotations

import threading

from .._config import get_config
from ._base import Backend, BackendUnavailable, transform_any_length

__all__ = ["TorchBackend"]

torch = None            # the torch module, bound by TorchBackend.load()
_ops = None             # torch.ops.circfft once registered
_register_lock = threading.Lock()
_cpu = None             # the numpy-family backend running the CPU kernels
_HALF = ()              # (torch.float16, torch.bfloat16) once torch is loaded
_InplaceTransform = None


def cpu_backend():
    """The backend whose kernels transform CPU tensors (numba, else the numpy reference)."""
    global _cpu
    if _cpu is None:
        try:
            from .numba_backend import NumbaBackend

            _cpu = NumbaBackend().load()
        except (BackendUnavailable, ImportError):
            from .numpy_backend import NumpyBackend

            _cpu = NumpyBackend().load()
    return _cpu


def cuda_kernels(device):
    """circfft's CUDA kernels for tensors on ``device`` (cached), or None: not a CUDA
    device, CuPy missing or unusable, or ``circfft.config(torch_fft=True)``."""
    if device.type != "cuda" or get_config().torch_fft:
        return None
    from ._cuda_launch import torch_kernel_set

    return torch_kernel_set(device)


# ---------------------------------------------------------------------------------------------
# The transform on a tensor (no autograd: these run inside the custom ops)
# ---------------------------------------------------------------------------------------------
def run_last_axis(xm, forward: bool, scale: float, workers: int) -> None:
    """Unnormalised transform times ``scale`` in place along the last axis of ``xm``."""
    if xm.numel() == 0:
        return
    if xm.device.type == "cpu" and not get_config().torch_fft:
        if xm.dtype in _HALF:
            _via_float32(xm, forward, scale, workers)
        else:
            cpu_backend().execute(xm.detach().numpy(), forward=forward, scale=scale,
                                  workers=workers)
        return
    kernels = cuda_kernels(xm.device)
    if kernels is not None:
        from ._cuda_launch import execute

        execute(kernels, xm, forward, scale)
    elif xm.dtype in _HALF:
        _via_float32(xm, forward, scale, workers)
    else:
        transform_any_length(xm, forward, scale)


def _via_float32(xm, forward, scale, workers) -> None:
    tmp = xm.to(torch.float32)
    run_last_axis(tmp, forward, scale, workers)
    xm.copy_(tmp)


def _kernel(x, dim: int, forward: bool, scale: float, workers: int, weighted: bool) -> None:
    """The member of the transform family selected by (forward, weighted), in place on ``x``."""
    if x.numel() == 0:
        return
    xm = x.movedim(dim, -1)
    n = xm.shape[-1]
    special = [0] + ([n // 2] if n % 2 == 0 and n > 1 else [])
    if weighted and not forward:            # s * B * D: D first
        for k in special:
            xm[..., k] *= 2.0
        run_last_axis(xm, False, 0.5 * scale, workers)
    elif weighted:                          # s * D^{-1} * F: D^{-1} last
        run_last_axis(xm, True, 2.0 * scale, workers)
        for k in special:
            xm[..., k] *= 0.5
    else:
        run_last_axis(xm, forward, scale, workers)


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


def define_op(qualname: str, impl, schema: str, fake, backward=None, setup_context=None,
              mutates_args=()):
    """Register the custom operator ``qualname`` (``torch.library.custom_op``) with its fake
    (meta) implementation and, when given, its autograd formula."""
    op = torch.library.custom_op(qualname, impl, mutates_args=mutates_args, schema=schema)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return op


def _register():
    global _ops, _HALF, _InplaceTransform
    if _ops is not None:
        return
    with _register_lock:
        if _ops is not None:
            return
        _HALF = (torch.float16, torch.bfloat16)
        define_op("circfft::transform", _transform_impl,
                  "(Tensor x, int dim, bool forward, float scale, int workers, "
                  "bool weighted) -> Tensor",
                  _transform_fake, _transform_backward, _transform_setup)
        define_op("circfft::transform_", _transform_inplace_impl,
                  "(Tensor(a!) x, int dim, bool forward, float scale, int workers, "
                  "bool weighted) -> ()",
                  lambda x, dim, forward, scale, workers, weighted: None, mutates_args=("x",))
        _InplaceTransform = _make_inplace_function()
        from . import _torch_circulant

        _torch_circulant.register(torch)
        _ops = torch.ops.circfft


def _make_inplace_function():
    class InplaceTransform(torch.autograd.Function):
        """``x`` transformed in place; backward is the adjoint member of the family."""

        @staticmethod
        def forward(ctx, x, dim, forward, scale, workers):
            torch.ops.circfft.transform_(x, dim, forward, scale, workers, False)
            ctx.mark_dirty(x)
            ctx.dim, ctx.forward, ctx.scale, ctx.workers = dim, forward, scale, workers
            return x

        @staticmethod
        def backward(ctx, g):
            return (torch.ops.circfft.transform(g, ctx.dim, not ctx.forward, ctx.scale,
                                                ctx.workers, True),
                    None, None, None, None)

    return InplaceTransform


def _eager() -> bool:
    """True outside torch.compile tracing (there, the registered operators must be used)."""
    return not torch.compiler.is_compiling()


def check_inplace_allowed(x, name: str = "x") -> None:
    """Raise what torch raises for an in-place operation on ``x``, before anything is written.

    (torch itself checks an ``autograd.Function``'s dirty inputs only after its forward has
    run, i.e. after the data was overwritten.)
    """
    if torch.compiler.is_compiling():
        return                  # traced code: torch's functionalisation checks the graph
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"Inplace update to inference tensor outside InferenceMode is not "
                           f"allowed ({name})")
    if torch.is_grad_enabled() and x.requires_grad:
        if x.is_leaf:
            raise RuntimeError(f"a leaf Variable that requires grad is being used in an "
                               f"in-place operation ({name}).")
        base = x._base
        if base is not None and base.is_leaf:     # torch's own rule (check_inplace)
            raise RuntimeError(f"a view of a leaf Variable that requires grad is being used in "
                               f"an in-place operation ({name}).")


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class TorchBackend(Backend):
    """PyTorch tensors on any device, with autograd and ``torch.compile`` support."""

    name = "torch"
    family = "torch"

    def load(self):
        global torch
        try:
            import torch as _torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailable(f"torch is not installed ({exc})") from exc
        torch = _torch
        _register()
        self.ops                      # created now, never while torch.compile traces
        return self

    def execute(self, x, *, forward: bool, scale: float, workers: int) -> None:
        """Transform the tensor ``x`` in place along its last axis (no autograd)."""
        run_last_axis(x, forward, scale, workers)

    def transform_inplace(self, x, *, axis, forward, scale, workers):
        """In place, with autograd when ``x`` is part of a graph; every autograd error is
        raised before ``x`` is written."""
        check_inplace_allowed(x)
        if torch.is_grad_enabled() and (x.requires_grad or x.grad_fn is not None):
            return _InplaceTransform.apply(x, axis, forward, scale, workers)
        if _eager():
            # Nothing to record: run the kernel without the operator dispatch (about 30 us
            # of host time per call), and bump the version counter as an in-place op does.
            _kernel(x, axis, forward, scale, workers, False)
            torch.autograd.graph.increment_version(x)
        else:
            _ops.transform_(x, axis, forward, scale, workers, False)
        return x

    def transform_copy(self, x, *, dtype, axis, forward, scale, workers):
        if x.dtype != dtype:
            x = x.to(dtype)
        if _eager() and not (torch.is_grad_enabled() and x.requires_grad):
            return _transform_impl(x, axis, forward, scale, workers, False)
        return _ops.transform(x, axis, forward, scale, workers, False)

    def pair_mul(self, A, B, Z, *, conj):
        if Z.dtype in _HALF:                  # stored in half precision, computed in float32
            tmp = torch.empty(Z.shape, dtype=torch.float32, device=Z.device)
            super().pair_mul(A.float(), B.float(), tmp, conj=conj)
            Z.copy_(tmp)
        else:
            super().pair_mul(A, B, Z, conj=conj)

    def block_circulant(self, w, x, *, pre=None, post=None, transpose=False,
                        save_input=False):
        """``post * C(w) (pre * x)`` with autograd: ``circfft::block_circulant``.

        ``save_input=True`` saves ``x`` itself for backward (a view of the caller's tensor
        when ``x`` is contiguous: no new buffer) and recomputes its spectrum there, instead
        of saving a new spectrum buffer of ``x``'s size.
        """
        if not x.is_contiguous():
            x = x.contiguous()
        y, _ = _ops.block_circulant(x, w, pre, post, bool(transpose), bool(save_input))
        return y
