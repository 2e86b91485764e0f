"""The block-circulant operators on tensors: custom operators with autograd, and their executors.

``circfft::block_circulant(x, w, pre, post, transpose, save_input=False) -> (y, spec)``
    ``y = post * C(w) (pre * x)`` (or ``C(w)^T``) on rows of ``x``; ``spec`` is the spectrum
    of ``pre * x`` in the executor's representation, the only tensor saved for backward.
    With ``save_input`` ``spec`` is empty and ``x`` itself is saved instead.
``circfft::block_circulant_backward(...) -> (dx, dw, dpre, dpost)``
    The gradients, from ``spec`` (with ``save_input``: from ``x``, whose spectrum is
    recomputed).

Both run the algorithm of :mod:`circfft._blockcirculant`; the *executor* picks its primitives
and how the rows are split:

- CPU tensors: chunks of rows (:mod:`circfft._chunking`) shared by ``torch.get_num_threads()``
  Python threads (read, never changed), each with its own scratch and accumulators, summed in
  a fixed order, with the primitives of :mod:`._torch_cpu` (numba transforms, slot layout and
  pair products, BLAS batched matmuls);
- CUDA tensors with circfft's kernels: all rows at once, a constant number of launches
  (:mod:`._cuda_circulant`);
- otherwise (``circfft.config(torch_fft=True)``, no numba, CUDA without CuPy): the reference
  primitives (``torch.fft`` and complex matmuls), chunked on the CPU.
"""
from __future__ import annotations

from .. import _blockcirculant as bc
from .._chunking import chunk_ranges
from .._config import get_config

__all__ = ["register", "executor", "Executor"]

torch = None


class Executor:
    """Runs the algorithm over row ranges: several CPU threads, or one pass.

    ``make_prims()`` gives a primitives object with its own scratch; with ``threads > 1``
    each thread takes every ``threads``-th chunk with its own primitives and accumulators,
    and the accumulators are summed in thread order afterwards: results depend on the inputs
    and ``threads`` only, never on what other Python threads do.
    """

    def __init__(self, make_prims, ranges, threads=1):
        self.make_prims, self.ranges = make_prims, ranges
        self.threads = max(1, min(threads, len(ranges)))
        self.prims = [make_prims(self.threads) for _ in range(self.threads)]

    def run(self, body):
        """``body(prims, t0, t1)`` for every range; returns the primitives used."""
        if self.threads == 1:
            for t0, t1 in self.ranges:
                body(self.prims[0], t0, t1)
            return
        from concurrent.futures import ThreadPoolExecutor

        def work(i):
            # grad mode is thread-local and on in a new thread: off, as in the caller (an
            # operator's implementation)
            with torch.no_grad():
                for t0, t1 in self.ranges[i::self.threads]:
                    body(self.prims[i], t0, t1)

        with ThreadPoolExecutor(self.threads) as pool:
            for f in [pool.submit(work, i) for i in range(self.threads)]:
                f.result()


def executor(t, g: bc.Geometry) -> Executor:
    """The executor for a call whose rows live in tensor ``t`` (see the module notes)."""
    from . import torch_backend as tb

    T = int(t.shape[0])
    if t.device.type == "cpu":
        ranges = chunk_ranges(T, max(g.nx, g.ny) * g.b)
        cap = max((b - a for a, b in ranges), default=0)
        if not get_config().torch_fft and tb.cpu_backend().name == "numba":
            from ._torch_cpu import CpuPairPrimitives, CpuSlotPrimitives

            cls = CpuPairPrimitives if g.single else CpuSlotPrimitives
            # torch's own thread count, read, never changed
            return Executor(lambda k: cls(g, t.dtype, cap, threads=k), ranges,
                            torch.get_num_threads())
    else:
        ranges = [(0, T)] if T else []
        kernels = tb.cuda_kernels(t.device)
        if kernels is not None:
            from ._cuda_circulant import CudaPrimitives

            return Executor(lambda k: CudaPrimitives(kernels, g, t.dtype, t), ranges)
    from ._registry import get_backend

    be = get_backend("torch")
    return Executor(lambda k: bc.ReferencePrimitives(be, g, t.dtype, t), ranges)


# ---------------------------------------------------------------------------------------------
# Operator implementations
# ---------------------------------------------------------------------------------------------
def _forward_impl(x, w, pre, post, transpose: bool, save_input: bool = False):
    g = bc.Geometry(w.shape, transpose)
    ex = executor(x, g)
    p = ex.prims[0]
    T = int(x.shape[0])
    spec = x.new_empty((0,)) if save_input else p.new_spectrum(T, g.nx)
    y = torch.empty((T, g.ny * g.b), dtype=x.dtype, device=x.device)
    if T:
        K = p.kernel(w, transpose)
        pre_v, post_v = p.vector(pre), p.vector(post)
        saved = None if save_input else spec
        ex.run(lambda q, t0, t1: bc.forward_rows(q, g, K, x, pre_v, post_v, y, saved, t0, t1))
    return y, spec


def _forward_fake(x, w, pre, post, transpose, save_input=False):
    g = bc.Geometry(w.shape, transpose)
    p = executor(x, g).prims[0]
    T = int(x.shape[0])
    return (x.new_empty((T, g.ny * g.b)),
            x.new_empty((0,)) if save_input else p.new_spectrum(T, g.nx))


def _backward_impl(gy, spec, w, x, pre, post, transpose: bool, need_x: bool, need_w: bool,
                   need_pre: bool, need_post: bool, save_input: bool = False):
    g = bc.Geometry(w.shape, transpose)
    ex = executor(gy, g)
    p = ex.prims[0]
    T, dev = int(gy.shape[0]), gy.device
    dx = torch.empty((T, g.nx * g.b) if need_x else (0,), dtype=gy.dtype, device=dev)
    # one set of accumulators per thread, summed in thread order below
    outs = [bc.Gradients(q, g, dx if need_x else None, need_w, need_pre, need_post)
            for q in ex.prims]
    if T and (need_x or need_w or need_pre or need_post):
        Kf = p.kernel(w, transpose) if need_post else None
        Kb = p.kernel(w, not transpose) if (need_x or need_pre) else None
        pre_v, post_v = p.vector(pre), p.vector(post)
        saved = None if save_input else spec
        acc = {id(q): o for q, o in zip(ex.prims, outs)}
        ex.run(lambda q, t0, t1: bc.backward_rows(q, g, Kf, Kb, gy, x, pre_v, post_v, saved,
                                                  acc[id(q)], t0, t1))
    out = outs[0]
    for other in outs[1:]:
        out.add(other)
    dw = p.kernel_grad(out.P, w) if need_w else w.new_empty((0,))
    pdt = gy.dtype if pre is None else pre.dtype
    qdt = gy.dtype if post is None else post.dtype
    dpre = out.dpre.to(pdt) if need_pre else gy.new_empty((0,), dtype=pdt)
    dpost = out.dpost.to(qdt) if need_post else gy.new_empty((0,), dtype=qdt)
    return dx, dw, dpre, dpost


def _backward_fake(gy, spec, w, x, pre, post, transpose, need_x, need_w, need_pre, need_post,
                   save_input=False):
    g = bc.Geometry(w.shape, transpose)
    T = int(gy.shape[0])
    dx = gy.new_empty((T, g.nx * g.b) if need_x else (0,))
    dw = w.new_empty((g.m, g.n, g.b) if need_w else (0,))
    pdt = gy.dtype if pre is None else pre.dtype
    qdt = gy.dtype if post is None else post.dtype
    dpre = gy.new_empty((g.nx * g.b,) if need_pre else (0,), dtype=pdt)
    dpost = gy.new_empty((g.ny * g.b,) if need_post else (0,), dtype=qdt)
    return dx, dw, dpre, dpost


def _setup(ctx, inputs, output):
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


def _backward(ctx, gy, gspec):
    spec, w, x, pre, post = ctx.saved_tensors
    need_x, need_w, need_pre, need_post = (bool(v) for v in ctx.needs_input_grad[:4])
    need_pre = need_pre and ctx.has_pre
    need_post = need_post and ctx.has_post
    if gy is None or not (need_x or need_w or need_pre or need_post):
        return None, None, None, None, None, None
    dx, dw, dpre, dpost = torch.ops.circfft.block_circulant_backward(
        gy.contiguous(), spec, w, x, pre, post, ctx.transpose, need_x, need_w, need_pre,
        need_post, ctx.save_input)
    return (dx if need_x else None, dw if need_w else None,
            dpre if need_pre else None, dpost if need_post else None, None, None)


def register(torch_module) -> None:
    """Register the two operators (called once by the torch backend's ``load``)."""
    from .torch_backend import define_op

    global torch
    torch = torch_module
    define_op("circfft::block_circulant", _forward_impl,
              "(Tensor x, Tensor w, Tensor? pre, Tensor? post, bool transpose, "
              "bool save_input=False) -> (Tensor, Tensor)",
              _forward_fake, _backward, _setup)
    define_op("circfft::block_circulant_backward", _backward_impl,
              "(Tensor gy, Tensor spec, Tensor w, Tensor? x, Tensor? pre, Tensor? post, "
              "bool transpose, bool need_x, bool need_w, bool need_pre, bool need_post, "
              "bool save_input=False) -> (Tensor, Tensor, Tensor, Tensor)",
              _backward_fake)
