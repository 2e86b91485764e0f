"""Block-circulant primitives on the GPU: whole arrays, a constant number of launches per call.

Used for cupy arrays (:meth:`.cupy_backend.CupyBackend.bc_primitives`) and CUDA tensors (the
torch executor, :mod:`._torch_circulant`), which take all rows at once.  Spectra stay packed
rows ``(t, blocks * b)`` in the compute dtype:

- spectra: one element-wise launch (``pre * x`` or a copy) and one in-place transform;
- product: the fused pair-product-accumulate kernel ``bc_accumulate`` (``cuda/circulant.cu``:
  per token, output block and frequency, the sum over input blocks, conjugated for the other
  orientation), one in-place inverse transform, and ``post *`` when given;
- kernel-gradient reduction: the spectra gathered into the slot layout of
  :mod:`circfft._blockcirculant` and one batched matmul of the family (cuBLAS), whose inner
  dimension is the number of tokens.

Nothing here depends on the number of rows, so a forward plus backward issues the same launches
for 64 tokens as for 8192 (``tests/test_blockcirculant.py::test_gpu_launches_do_not_grow_with_rows``
counts them through the CPU emulation of the kernels).
"""
from __future__ import annotations

import numpy as np

from .. import _blockcirculant as bc
from ._array_ops import ops_for
from ._cuda_launch import execute, grid_size

__all__ = ["CudaPrimitives"]


class CudaPrimitives(bc.Primitives):
    """See the module notes.

    Parameters
    ----------
    kernels : KernelSet
        The device's kernels (:mod:`._cuda_launch`).
    geometry : Geometry
    dtype
        The caller's dtype; spectra use its compute dtype (float32 for half precision).
    like
        An array of the family on the device.
    """

    def __init__(self, kernels, geometry: bc.Geometry, dtype, like):
        self.ks, self.g, self.like = kernels, geometry, like
        self.ops = ops_for(like)
        name = self.ops.dtype_name(dtype)
        self.cd = self.ops.dtype("float32") if name in ("float16", "bfloat16") else dtype
        self.cd_name = self.ops.dtype_name(self.cd)

    # -- buffers ----------------------------------------------------------------------------
    def new_spectrum(self, rows, blocks):
        return self.ops.empty((rows, blocks * self.g.b), self.cd, self.like)

    def spectrum_rows(self, spec, t0, t1):
        return spec[t0:t1]

    def scratch_rows(self, name, rows, blocks):
        return self.ops.empty((rows, blocks * self.g.b), self.cd, self.like)

    def vector(self, v):
        return None if v is None else self.ops.copy(v, self.cd)

    def vector_acc(self, length):
        return self.ops.zeros((length,), self.cd, self.like)

    # -- transforms and element-wise work ---------------------------------------------------
    def _transform(self, rows, forward, scale):
        t = int(rows.shape[0])
        if t:
            execute(self.ks, rows.reshape(-1, self.g.b), forward, scale)

    def mul_rows(self, dst, src, vec):
        if vec is None:
            self.ops.assign(dst, src)
        else:
            self.ops.mul_into(dst, src, vec)

    def row_dot(self, acc, a, b):
        acc += (a * b).sum(0)

    def spectra(self, x, vec, blocks, out):
        self.mul_rows(out, x, vec)
        self._transform(out, True, 1.0)

    # -- the block products -----------------------------------------------------------------
    def kernel(self, w, transpose):
        Wp = self.ops.copy(w, self.cd)                 # (m, n, b), contiguous
        self._transform(Wp.reshape(-1, self.g.b), True, 1.0)
        return Wp, bool(transpose)

    def product(self, K, spec, out, vec):
        Wp, transpose = K
        g = self.g
        t = int(spec.shape[0])
        nin, nout = (g.m, g.n) if transpose else (g.n, g.m)
        direct = out.dtype == self.cd and _contiguous(self.ops, out)
        Y = out if direct else self.scratch_rows("stage", t, nout)
        # W[o, i] of the orientation: o steps the output blocks, i the input blocks
        out_stride, in_stride = (g.b, g.n * g.b) if transpose else (g.n * g.b, g.b)
        items = t * nout * (g.b // 2 + 1)
        if items:
            self.ks.kernel("bc_accumulate", self.cd_name)((grid_size(self.ks, items),), (self.ks.block,), (
                _ptr(self.ops, spec), np.int64(nin * g.b), _ptr(self.ops, Wp),
                np.int64(out_stride), np.int64(in_stride), _ptr(self.ops, Y),
                np.int64(nout * g.b), np.int64(t), np.int32(nout), np.int32(nin),
                np.int32(g.b), np.int32(transpose)))
        self._transform(Y, False, 1.0 / g.b)
        if vec is not None:
            Y *= vec
        if not direct:
            self.ops.assign(out, Y)

    def kernel_products(self):
        g = self.g
        return self.ops.zeros((bc.slot_count(g.b), 2 * g.m, 2 * g.n), self.cd, self.like)

    def _slots(self, spec, blocks):
        t = int(spec.shape[0])
        out = self.ops.empty((bc.slot_count(self.g.b), t, 2 * blocks), self.cd, self.like)
        bc.slots_from_packed(spec.reshape(t, blocks, self.g.b), out, self.ops)
        return out

    def reduce(self, P, spec_in, spec_out):
        g = self.g
        n_in, n_out = (g.n, g.m)
        A = self._slots(spec_out, n_out)                   # (S, t, 2m)
        B = self._slots(spec_in, n_in)                     # (S, t, 2n)
        P += self.ops.matmul(self.ops.permute(A, (0, 2, 1)), B)

    def kernel_grad(self, P, w):
        g = self.g
        dW = bc.packed_from_slot_products(P, g.m, g.n, g.b, self.ops)
        self._transform(dW.reshape(-1, g.b), False, 1.0 / g.b)
        return self.ops.copy(dW, w.dtype)


def _ptr(ops, a) -> int:
    return ops.describe(a)[0]


def _contiguous(ops, a) -> bool:
    _, shape, strides, itemsize = ops.describe(a)
    expect = itemsize
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expect:
            return False
        expect *= size
    return True
