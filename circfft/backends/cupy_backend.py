"""CuPy backend: ``rdfft``/``irdfft``, packed products and circulant operators on cupy arrays.

Importing this module does not import cupy; :meth:`CupyBackend.load` does, and fails with
:class:`~circfft.backends.BackendUnavailable` when cupy or a CUDA device is missing.  The
kernels (``circfft/backends/cuda/*.cu``, :mod:`._cuda_build`) are compiled with NVRTC on first
use and cached per device, as are the twiddle tables; launches go to CuPy's current stream
through the host code shared with CUDA tensors (:mod:`._cuda_launch`,
:mod:`._cuda_circulant`).  Argument checking and ``out`` semantics are the common front ends'.
"""
from __future__ import annotations

import numpy as np

from ._base import Backend, BackendUnavailable

__all__ = ["CupyBackend"]


class CupyBackend(Backend):
    """CuPy arrays on a CUDA device, with the circfft CUDA kernels."""

    name = "cupy"
    family = "cupy"

    def load(self):
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailable(f"cupy is not installed ({exc})") from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:            # CUDARuntimeError without a driver
            raise BackendUnavailable(f"no CUDA device ({exc})") from exc
        if count < 1:
            raise BackendUnavailable("no CUDA device")
        return self

    @staticmethod
    def kernels():
        """The kernel set of CuPy's current device."""
        from ._cuda_launch import cupy_kernel_set

        return cupy_kernel_set()

    def execute(self, x, *, forward: bool, scale: float, workers: int) -> None:
        """Transform the cupy array ``x`` in place along its last axis (``workers`` unused)."""
        from ._cuda_launch import execute

        with x.device:
            execute(self.kernels(), x, forward, scale)

    def pair_mul(self, A, B, Z, *, conj):
        """The ``spectral_mul`` kernel: one launch per mergeable block of rows."""
        from ._cuda_launch import grid_size, row_views

        if Z.size == 0:
            return
        A = self.ops.xp.broadcast_to(A, Z.shape)
        B = self.ops.xp.broadcast_to(B, Z.shape)
        views = [list(row_views(*self.ops.describe(t))) for t in (A, B, Z)]
        if any(len(v) != 1 for v in views):          # leading axes that do not merge
            for a, b, z in zip(A, B, Z):
                self.pair_mul(a, b, z, conj=conj)
            return
        n = Z.shape[-1]
        (ap, rows, ars, aes), (bp, _, brs, bes), (zp, _, zrs, zes) = (v[0] for v in views)
        ks = self.kernels()
        items = rows * (n // 2 + 1)
        with Z.device:
            ks.kernel("spectral_mul", Z.dtype.name)((grid_size(ks, items),), (ks.block,), (
                ap, np.int64(ars), np.int64(aes), bp, np.int64(brs), np.int64(bes),
                zp, np.int64(zrs), np.int64(zes), np.int64(rows), np.int64(n),
                np.int32(conj)))

    def bc_primitives(self, geometry, dtype, like):
        from ._cuda_circulant import CudaPrimitives

        return CudaPrimitives(self.kernels(), geometry, dtype, like)

