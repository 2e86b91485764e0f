"""A KernelSet (circfft.backends._cuda_launch) whose kernels are the CUDA sources compiled for
the CPU: the backends' host code runs unchanged on CPU memory, and every launch is counted.

``build_kernels(build_dir)`` compiles every kernel of ``_cuda_build.KERNELS`` for the storage
dtypes the emulation shim defines; ``EmulatedKernelSet(kernels, smem=..., sm_count=...)`` hands
them out.  Twiddle tables are the host tables of ``_cuda_build``; work buffers are numpy arrays.
"""
from __future__ import annotations

import numpy as np

from circfft.backends import _cuda_build
from circfft.backends._cuda_launch import KernelSet

from .emulator import EmulatedModule, build_module

#: Storage dtypes whose kernels are built (the shim's stand-in headers define all of them).
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: A100/H100-like opt-in shared memory, and a small one that forces the multi-pass path.
BIG_SMEM, SMALL_SMEM = 227 * 1024, 4096


def build_kernels(build_dir) -> dict:
    """``{(kernel, dtype name): EmulatedKernel}`` for every kernel and storage dtype."""
    kernels = {}
    for source, names in _cuda_build.KERNELS.items():
        # One library per source with every dtype's options (the shim defines all storage
        # types); the backend itself builds one module per (source, dtype).
        exprs = sorted({_cuda_build.name_expression(k, d) for k in names for d in DTYPES})
        options = list(_cuda_build.COMPILE_OPTIONS)
        for d in DTYPES:
            options += [o for o in _cuda_build.compile_options(d) if o not in options]
        module = EmulatedModule(build_module(_cuda_build.CUDA_DIR / source, exprs, build_dir,
                                             options=options))
        for k in names:
            for d in DTYPES:
                kernels[(k, d)] = module.get_function(_cuda_build.name_expression(k, d))
    return kernels


class EmulatedKernelSet(KernelSet):
    """Emulated kernels; ``launches`` records ``(kernel, dtype)`` of every launch in order."""

    def __init__(self, kernels, smem=BIG_SMEM, sm_count=1, block=32, work_elements=None):
        self._kernels = kernels
        self._limits = {"smem_optin": smem, "sm_count": sm_count}
        self.block = block                     # fewer emulated threads per launch
        if work_elements is not None:
            self.work_elements = work_elements
        self._tables = {}
        self._keep = []
        self.launches = []

    def kernel(self, name, dtype_name):
        fn = self._kernels[(name, dtype_name)]

        def launch(grid, block, args, shared_mem=0):
            self.launches.append((name, dtype_name))
            fn(grid, block, [int(a) if isinstance(a, int) else a for a in args],
               shared_mem=shared_mem)

        return launch

    def limits(self):
        return self._limits

    def twiddles(self, n, compute_name):
        table = self._tables.get((n, compute_name))
        if table is None:
            table = self._tables[(n, compute_name)] = \
                _cuda_build._twiddle_host(n).astype(compute_name)
        return table.ctypes.data

    def work(self, elements, compute_name, like):
        buf = np.empty(elements, dtype=compute_name)
        self._keep = [buf]
        return buf.ctypes.data, buf
