"""Host side of the CUDA transforms: launch geometry on raw device pointers, for cupy and torch.

The kernels (``cuda/rdfft.cu``) take a pointer, a row count and element strides, so one host
routine serves cupy arrays and torch CUDA tensors alike: the array is described by
``(address, shape, byte strides, itemsize)`` (:meth:`~._array_ops.ArrayOps.describe`), never
wrapped or copied.  A :class:`KernelSet` says where kernels, twiddle tables and work buffers
come from and which stream launches go to: :class:`CupyKernelSet` (CuPy's current stream, CuPy
memory) and :class:`TorchKernelSet` (torch's current stream and caching allocator, so that
launches are ordered with torch's work and capturable in a CUDA graph once warmed up).  Both
are cached per device; the hot path does dictionary look-ups only.  The tests drive the same
code with the CUDA sources compiled for the CPU (``tests/cuda_emulation``).

Transforms.  Rows of power-of-two length whose ``n/2`` complex values fit in shared memory
(float32 up to ``n = 2**15`` on an A100/H100, float64 up to ``2**14``) are transformed in one
pass (each element read once and written once, no work buffer).  Longer rows (up to ``2**24``)
take several passes over a work buffer of ``n`` compute-type elements per row in flight, in
chunks of at most ``max(n, WORK_ELEMENTS)`` elements.  Other lengths go through the family's FFT
(:func:`._base.transform_any_length`).  float16/bfloat16 are read and written as such and
computed in float32.
"""
from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np

from ._array_ops import ops_for
from ._base import transform_any_length
from ._cuda_build import (STORAGE_TYPES, device_limits, get_kernel, padded_size,
                          twiddle_bits, twiddle_table)

__all__ = ["KernelSet", "CupyKernelSet", "TorchKernelSet", "cupy_kernel_set",
           "torch_kernel_set", "execute", "transform_rows", "max_onepass_log2n", "grid_size",
           "row_views", "WORK_ELEMENTS", "MAX_LOG2N", "BLOCK"]

#: Rows longer than shared memory are processed in chunks of about this many elements.
WORK_ELEMENTS = 1 << 22
#: Longest power-of-two row the kernels handle (longer ones go through the family's FFT).
MAX_LOG2N = 24
#: Threads per block of the grid-strided (one item per thread) kernels.
BLOCK = 256

_COMPUTE = {"float32": "float32", "float64": "float64", "float16": "float32",
            "bfloat16": "float32"}
_SCALAR = {"float32": np.float32, "float64": np.float64}


class KernelSet:
    """Kernels, tables, work buffers and the stream of one device (see the module notes).

    Subclasses implement :meth:`kernel`, :meth:`limits`, :meth:`twiddles` and :meth:`work`.
    """

    #: Threads per block of the grid-strided (one item per thread) kernels.
    block = BLOCK
    #: Rows longer than shared memory are processed in chunks of about this many elements.
    work_elements = WORK_ELEMENTS

    def kernel(self, name: str, dtype_name: str):
        """``launch(grid, block, args, shared_mem=0)`` of kernel ``name`` for storage dtype
        ``dtype_name`` on this set's stream; pointer arguments are plain ints."""
        raise NotImplementedError

    def limits(self) -> dict:
        """``{"smem_optin": bytes, "sm_count": int}`` of the device."""
        raise NotImplementedError

    def twiddles(self, n: int, compute_name: str) -> int:
        """Address of the cached twiddle table of length ``n`` (``_cuda_build``)."""
        raise NotImplementedError

    def work(self, elements: int, compute_name: str, like):
        """A work buffer of ``elements`` compute-type values; returns ``(address, owner)``."""
        raise NotImplementedError

    def geometry(self, n: int, name: str) -> "_Geometry":
        """The launch constants of length ``n`` and storage dtype ``name`` (cached: the hot
        path does one dictionary look-up)."""
        cache = self.__dict__.setdefault("_geometry", {})
        g = cache.get((n, name))
        if g is None:
            g = cache[(n, name)] = _Geometry.build(self, n, name)
        return g


class _Geometry(NamedTuple):
    """Launch constants of one (length, storage dtype) on one device."""

    log2n: np.int32
    onepass: bool
    threads: int          # per row (one-pass kernel)
    per_row: int          # shared-memory bytes per row
    rows_max: int         # rows per block at most
    tw: int               # twiddle table address
    bits: np.int32
    scalar: type          # compute scalar type
    compute: str

    @classmethod
    def build(cls, ks, n, name):
        if name not in STORAGE_TYPES:
            raise TypeError(f"the CUDA kernels take {', '.join(STORAGE_TYPES)} data, got "
                            f"{name}")
        log2n = n.bit_length() - 1
        cd = _COMPUTE[name]
        m = n // 2
        per_row = 2 * padded_size(m) * np.dtype(cd).itemsize
        T = min(256, max(1, m // 8))     # __launch_bounds__(256, 3) in rdfft.cu
        rows_max = max(1, min(256 // T, ks.limits()["smem_optin"] // per_row))
        return cls(np.int32(log2n), log2n <= max_onepass_log2n(ks, cd), T, per_row, rows_max,
                   ks.twiddles(n, cd), np.int32(twiddle_bits(n)), _SCALAR[cd], cd)


class _Stream(NamedTuple):
    """What CuPy's launcher reads of a stream: its handle (``ptr``)."""

    ptr: int


class CupyKernelSet(KernelSet):
    """CuPy-compiled kernels of one device, on CuPy's current stream and CuPy's memory pool."""

    def __init__(self, device: int):
        self.device = device
        self._fns = {}
        self._tables = {}

    def _raw(self, name, dtype_name):
        fn = self._fns.get((name, dtype_name))
        if fn is None:
            import cupy

            with cupy.cuda.Device(self.device):
                fn = self._fns[(name, dtype_name)] = get_kernel(name, dtype_name)
        return fn

    def kernel(self, name, dtype_name):
        return self._raw(name, dtype_name)

    def limits(self):
        return device_limits(self.device)

    def twiddles(self, n, compute_name):
        table = self._tables.get((n, compute_name))
        if table is None:
            import cupy

            with cupy.cuda.Device(self.device):
                table = self._tables[(n, compute_name)] = twiddle_table(n, compute_name)
        return table.data.ptr

    def work(self, elements, compute_name, like):
        import cupy

        buf = cupy.empty(elements, dtype=compute_name)
        return buf.data.ptr, buf


class TorchKernelSet(CupyKernelSet):
    """CuPy-compiled kernels launched on torch's current stream, work buffers from torch."""

    def __init__(self, device):
        super().__init__(device.index if device.index is not None else 0)
        import torch

        import cupy

        self.torch = torch
        self.torch_device = device
        self._cupy = cupy

    def kernel(self, name, dtype_name):
        raw = self._raw(name, dtype_name)
        stream = _Stream(self.torch.cuda.current_stream(self.torch_device).cuda_stream)
        device = self.device
        runtime = self._cupy.cuda.runtime

        def launch(grid, block, args, shared_mem=0):
            if runtime.getDevice() == device:
                raw(grid, block, args, shared_mem=shared_mem, stream=stream)
            else:                   # the function belongs to its device's context
                with self._cupy.cuda.Device(device):
                    raw(grid, block, args, shared_mem=shared_mem, stream=stream)

        return launch

    def work(self, elements, compute_name, like):
        buf = self.torch.empty(elements, dtype=getattr(self.torch, compute_name),
                               device=self.torch_device)
        return buf.data_ptr(), buf


_sets: dict = {}
_sets_lock = threading.Lock()


def cupy_kernel_set():
    """The kernel set of CuPy's current device (cached)."""
    import cupy

    dev = cupy.cuda.Device().id
    key = ("cupy", dev)
    ks = _sets.get(key)
    if ks is None:
        with _sets_lock:
            ks = _sets.setdefault(key, CupyKernelSet(dev))
    return ks


def torch_kernel_set(device):
    """The kernel set of the torch CUDA ``device`` (cached), or None when CuPy, which compiles
    the kernels, is missing or unusable here."""
    key = ("torch", device.index)
    ks = _sets.get(key)
    if ks is not None or key in _sets:
        return ks
    with _sets_lock:
        if key not in _sets:
            try:
                from .cupy_backend import CupyBackend

                CupyBackend().load()
                _sets[key] = TorchKernelSet(device)
            except (ImportError, RuntimeError, OSError):
                # cupy missing, no device, or a build that does not match the driver
                _sets[key] = None
    return _sets[key]


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def max_onepass_log2n(ks: KernelSet, compute_name: str) -> int:
    """Largest ``log2(n)`` transformed in one shared-memory pass on the set's device."""
    limit = ks.limits()["smem_optin"]
    size = np.dtype(compute_name).itemsize
    best = 1
    for log2n in range(1, MAX_LOG2N + 1):
        if 2 * padded_size(1 << (log2n - 1)) * size <= limit:
            best = log2n
    return best


def grid_size(ks: KernelSet, items: int) -> int:
    """Blocks of ``ks.block`` threads for a grid-strided kernel over ``items``: enough to
    fill the device, at least one."""
    cap = ks.limits()["sm_count"] * 16
    return int(max(1, min(cap, -(-items // ks.block))))


def row_views(ptr: int, shape, strides, itemsize: int):
    """``(address, rows, row stride, element stride)`` (strides in elements) covering a
    strided array with the transform axis last: leading axes merged when their strides allow
    it, else the first axis looped."""
    if any(s % itemsize for s in strides):
        raise ValueError("x has strides that are not multiples of its item size")
    es = strides[-1] // itemsize
    if len(shape) == 1:
        yield ptr, 1, 0, es
        return
    lead = [(s, st) for s, st in zip(shape[:-1], strides[:-1]) if s != 1]
    if all(lead[i][1] == lead[i + 1][1] * lead[i + 1][0] for i in range(len(lead) - 1)):
        rows = math.prod(shape[:-1])
        yield ptr, rows, (lead[-1][1] // itemsize if lead else 0), es
        return
    for i in range(shape[0]):
        yield from row_views(ptr + i * strides[0], shape[1:], strides[1:], itemsize)


# ---------------------------------------------------------------------------------------------
# Transform launches
# ---------------------------------------------------------------------------------------------
def execute(ks: KernelSet, x, forward: bool, scale: float) -> None:
    """Transform ``x`` (cupy array or CUDA tensor) in place along its last axis, times ``scale``."""
    ops = ops_for(x)
    if ops.size(x) == 0:
        return
    n = int(x.shape[-1])
    name = ops.dtype_name(x.dtype)
    if n == 1:
        x *= scale
    elif (n & (n - 1)) == 0 and n <= (1 << MAX_LOG2N):
        ptr, shape, strides, itemsize = ops.describe(x)
        for p, rows, rs, es in row_views(ptr, shape, strides, itemsize):
            transform_rows(ks, p, rows, n, rs, es, name, itemsize, forward, scale, x)
    elif name in ("float16", "bfloat16"):       # the family's FFT computes in float32
        tmp = ops.copy(x, ops.dtype("float32"))
        transform_any_length(tmp, forward, scale)
        ops.assign(x, tmp)
    else:
        transform_any_length(x, forward, scale)


def transform_rows(ks: KernelSet, ptr: int, rows: int, n: int, rs: int, es: int,
                   name: str, itemsize: int, forward: bool, scale: float, like) -> None:
    """Transform ``rows`` rows of power-of-two length ``n`` (2 <= n <= 2^24) of storage dtype
    ``name`` at address ``ptr`` (strides ``rs``, ``es`` in elements) in place; ``like`` is
    an array of the family, for the work buffer of long rows."""
    if rows == 0:
        return
    g = ks.geometry(n, name)
    if g.onepass:
        rpb = min(g.rows_max, rows)
        blocks = min(-(-rows // rpb), ks.limits()["sm_count"] * 32)
        ks.kernel("rdfft_rows", name)(
            (blocks,), (g.threads, rpb), (ptr, np.int64(rows), np.int64(rs), np.int64(es),
                                          g.log2n, g.tw, g.bits, g.scalar(scale),
                                          np.int32(not forward)),
            shared_mem=rpb * g.per_row)
        return
    chunk = max(1, ks.work_elements // n)
    work, owner = ks.work(min(chunk, rows) * n, g.compute, like)
    for r0 in range(0, rows, chunk):
        _multipass(ks, ptr + r0 * rs * itemsize, min(chunk, rows - r0), rs, es, work,
                   int(g.log2n), name, g.compute, g.tw, g.bits, forward, scale)
    del owner                       # the work buffer lives until every pass is queued


def _multipass(ks, ptr, rows, rs, es, work, log2n, name, cd, tw, bits, forward, scale):
    C = _SCALAR[cd]
    m_log = log2n - 1
    logS = min(m_log, max_onepass_log2n(ks, cd) - 1)
    args_x = (ptr, np.int64(rs), np.int64(es))
    inv = np.int32(not forward)
    if not forward:                             # packed x -> 2Z in work (natural order)
        items = rows * (1 << (log2n - 2))
        ks.kernel("rdfft_merge", name)((grid_size(ks, items),), (ks.block,), (
            ptr, np.int64(rows), np.int64(rs), np.int64(es), work, np.int32(log2n), tw, bits))
    h_log = m_log - 1
    first = True
    while h_log + 1 > logS:                     # stages whose blocks exceed a chunk
        r = min(3, h_log + 1 - logS)
        items = rows * (1 << (m_log - r))
        ks.kernel("rdfft_pass", name)((grid_size(ks, items),), (ks.block,), (
            *args_x, work, np.int64(rows), np.int32(log2n), np.int32(h_log), np.int32(r),
            tw, bits, inv, np.int32(forward and first)))
        first = False
        h_log -= r
    S = 1 << logS
    threads = min(256, max(32, S // 8))
    chunks = rows * (1 << (m_log - logS))
    blocks = int(min(chunks, ks.limits()["sm_count"] * 8))
    ks.kernel("rdfft_tail", name)((blocks,), (threads,), (
        work, np.int64(rows), np.int32(log2n), np.int32(logS), tw, bits, inv),
        shared_mem=2 * padded_size(S) * np.dtype(cd).itemsize)
    if forward:
        items = rows * (1 << (log2n - 2))
        ks.kernel("rdfft_split", name)((grid_size(ks, items),), (ks.block,), (
            work, ptr, np.int64(rows), np.int64(rs), np.int64(es), np.int32(log2n), tw, bits,
            C(scale)))
    else:
        items = rows << log2n
        ks.kernel("rdfft_unscramble", name)((grid_size(ks, items),), (ks.block,), (
            work, ptr, np.int64(rows), np.int64(rs), np.int64(es), np.int32(log2n), C(scale)))
