"""Block-circulant primitives for CPU tensors: numba transforms, the slot layout and BLAS matmuls.

The executor (:mod:`._torch_circulant`) runs the algorithm of :mod:`circfft._blockcirculant`
on cache-sized chunks of rows, shared by several Python threads; each thread's primitives keep
one set of chunk-sized scratch buffers.  Everything runs on zero-copy numpy views and releases
the GIL: element-wise work in numpy, transforms and the slot layout and pair products in the
numba kernels (:mod:`._numba_circulant`), the per-frequency products as one real batched
matmul (numpy's BLAS) over the slot layout.  Chunk-sized operations are too small for torch's
fork-join thread pool, and they never touch it: nothing here changes torch's settings.  A
kernel with one block per side (a plain circulant) keeps the packed rows and multiplies them
pair by pair instead.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _blockcirculant as bc
from . import _numba_circulant as nk
from ._array_ops import ops_for_family
from .torch_backend import cpu_backend

__all__ = ["CpuSlotPrimitives", "CpuPairPrimitives"]

_TORCH = ops_for_family("torch")


def _np(t):
    """Zero-copy numpy view of a CPU float32/float64 tensor, else None."""
    if t.dtype in (torch.float32, torch.float64):
        return t.detach().numpy()
    return None


class _CpuPrimitives(bc.Primitives):
    """Scratch, element-wise helpers and transforms shared by both CPU representations."""

    def __init__(self, g: bc.Geometry, dtype, capacity: int, threads: int = 1):
        self.g = g
        self.cd = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.cap = capacity
        # one chunk per thread: serial kernels; a lone thread parallelises its transforms
        self.workers = 1 if threads > 1 else torch.get_num_threads()
        self.cpu = cpu_backend()
        self._scratch = {}

    def _buf(self, name, shape):
        """Scratch of ``shape`` (capacity rows), allocated once per call."""
        t = self._scratch.get(name)
        if t is None or tuple(t.shape) != tuple(shape):
            t = self._scratch[name] = torch.empty(shape, dtype=self.cd)
        return t

    def _transform(self, rows, forward, scale):
        """In place on contiguous compute-dtype rows (t, blocks * b), block by block."""
        t = rows.shape[0]
        if t:
            H = _np(rows).reshape(t, -1, self.g.b)
            self.cpu.execute(H, forward=forward, scale=scale, workers=self.workers)

    def vector(self, v):
        # Copies (d-sized): a numpy view of a tensor makes its storage non-resizable for good,
        # and FSDP2 frees unsharded parameters by resizing their storage to zero.
        return None if v is None else v.to(self.cd, copy=True)

    def scratch_rows(self, name, rows, blocks):
        return self._buf(("rows", name, blocks), (self.cap, blocks * self.g.b))[:rows]

    def mul_rows(self, dst, src, vec):
        d, s = _np(dst), _np(src)
        if d is not None and s is not None:
            if vec is None:
                np.copyto(d, s)
            else:
                np.multiply(s, _np(vec), out=d)
        elif vec is None:
            dst.copy_(src)
        else:
            torch.mul(src, vec, out=dst)

    def _mul_(self, t, vec):
        if vec is not None:
            _np(t)[...] *= _np(vec)

    def row_dot(self, acc, a, b):
        an, bn = _np(a), _np(b)
        if an is not None and bn is not None:
            acc.numpy()[...] += np.einsum("td,td->d", an, bn, dtype=np.float64)
        else:
            acc += (a.to(acc.dtype) * b.to(acc.dtype)).sum(0)

    def vector_acc(self, length):
        return torch.zeros(length, dtype=torch.float64)

    def _packed_kernel(self, w):
        W = w.to(self.cd, copy=True).contiguous()
        self._transform(W.view(-1, self.g.b), True, 1.0)
        return W

    def _to_rows(self, src_fn, out, vec, blocks):
        """Run ``src_fn(dst)`` (which fills compute-dtype rows ``dst``), then ``dst *= vec``
        and copy into ``out`` when ``out`` is not usable directly."""
        t = out.shape[0]
        direct = out.dtype == self.cd and out.is_contiguous()
        dst = out if direct else self.scratch_rows("stage", t, blocks)
        src_fn(dst)
        self._mul_(dst, vec)
        if not direct:
            o = _np(out)
            if o is not None:
                np.copyto(o, _np(dst))
            else:                                   # half precision: torch converts
                out.copy_(dst)

    def kernel_grad(self, P, w):
        m, n, b = self.g.m, self.g.n, self.g.b
        dW = self._packed_grad(P).to(self.cd).contiguous()
        self._transform(dW.view(-1, b), False, 1.0 / b)
        return dW.view(m, n, b).to(w.dtype)


class CpuSlotPrimitives(_CpuPrimitives):
    """Spectra in the slot layout ``(S, t, 2 blocks)``; products are batched real matmuls."""

    def new_spectrum(self, rows, blocks):
        return torch.empty((bc.slot_count(self.g.b), rows, 2 * blocks), dtype=self.cd)

    def scratch_spectrum(self, name, rows, blocks):
        S = bc.slot_count(self.g.b)
        return self._buf(("spec", name, blocks), (S, self.cap, 2 * blocks))[:, :rows]

    def spectrum_rows(self, spec, t0, t1):
        return spec[:, t0:t1]

    def spectra(self, x, vec, blocks, out):
        t = x.shape[0]
        u = self.scratch_rows("u", t, blocks)
        self.mul_rows(u, x, vec)
        self._transform(u, True, 1.0)
        nk.to_slots(_np(u).reshape(t, blocks, self.g.b), _np(out))

    def kernel(self, w, transpose):
        big = _np(bc.slot_matrices(self._packed_kernel(w), _TORCH))     # (S, 2n, 2m)
        return big.transpose(0, 2, 1) if transpose else big

    def product(self, K, spec, out, vec):
        t, blocks, b = spec.shape[1], K.shape[2] // 2, self.g.b
        ysl = self._buf(("ysl", blocks), (bc.slot_count(b), self.cap, 2 * blocks))[:, :t]
        np.matmul(_np(spec), K, out=_np(ysl))

        def fill(dst):
            H = _np(dst).reshape(t, blocks, b)
            nk.from_slots(_np(ysl), H)
            self.cpu.execute(H, forward=False, scale=1.0 / b, workers=self.workers)

        self._to_rows(fill, out, vec, blocks)

    def kernel_products(self):
        g = self.g
        return torch.zeros((bc.slot_count(g.b), 2 * g.m, 2 * g.n), dtype=self.cd)

    def reduce(self, P, spec_in, spec_out):
        _np(P)[...] += np.matmul(_np(spec_out).transpose(0, 2, 1), _np(spec_in))

    def _packed_grad(self, P):
        return bc.packed_from_slot_products(P, self.g.m, self.g.n, self.g.b, _TORCH)


class CpuPairPrimitives(_CpuPrimitives):
    """One block per side: spectra stay packed rows ``(t, b)`` and multiply pair by pair."""

    def new_spectrum(self, rows, blocks):
        return torch.empty((rows, self.g.b), dtype=self.cd)

    def scratch_spectrum(self, name, rows, blocks):
        return self._buf(("spec", name), (self.cap, self.g.b))[:rows]

    def spectrum_rows(self, spec, t0, t1):
        return spec[t0:t1]

    def spectra(self, x, vec, blocks, out):
        self.mul_rows(out, x, vec)
        self._transform(out, True, 1.0)

    def kernel(self, w, transpose):
        return _np(self._packed_kernel(w)).reshape(self.g.b), bool(transpose)

    def product(self, K, spec, out, vec):
        Wp, conj = K
        b = self.g.b

        def fill(dst):
            s = _np(spec)
            nk.pair_mul(np.broadcast_to(Wp, s.shape), s, _np(dst), conj)
            self._transform(dst, False, 1.0 / b)

        self._to_rows(fill, out, vec, 1)

    def kernel_products(self):
        return np.zeros(self.g.b, dtype=np.float64)

    def reduce(self, P, spec_in, spec_out):
        nk.pair_conj_dot(_np(spec_in), _np(spec_out), P)

    def _packed_grad(self, P):
        return torch.from_numpy(P).reshape(1, 1, self.g.b)
