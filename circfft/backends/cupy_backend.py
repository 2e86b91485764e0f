"""CuPy backend: ``rdfft``/``irdfft`` and the circulant products on the GPU with CUDA kernels.

Importing this module does not import cupy; :meth:`CupyBackend.load` does, and fails with
:class:`~circfft.backends.BackendUnavailable` when cupy or a CUDA device is missing.  The
kernels (``circfft/backends/cuda/*.cu``, see :mod:`._cuda_build` and ``docs/gpu.rst``) are
compiled with NVRTC on first use and cached per device, as are the twiddle tables.

Transforms.  Rows of power-of-two length whose ``n/2`` complex values fit in shared memory
(float32 up to ``n = 2**15`` on an A100/H100, float64 up to ``2**14``) are transformed in one
pass: each element is read once and written once.  Longer rows (up to ``2**24``) take several
passes over a work buffer of ``n`` compute-type elements per row in flight; rows are processed
in chunks of at most ``max(n, WORK_ELEMENTS)`` elements, so the scratch is at most
``4 * max(n, 2**22)`` bytes in float32 (16 MiB; 64 MiB for ``n = 2**24``) and twice that in
float64, independent of the number of rows.  Other lengths go through ``cupy.fft`` and a
repack.  float16 is stored as float16 and computed in float32.  Kernels run on CuPy's current
stream.

The torch hookup: :func:`torch_cuda_kernel` returns the function that
:func:`circfft.backends.torch_backend.set_cuda_kernel` registers for CUDA tensors; it wraps
the tensor with DLPack (zero copy) and launches on torch's current stream.
"""
from __future__ import annotations

import numpy as np

from .._validation import (check_axis, check_device_out, check_norm, check_workers,
                           scale_for, strides_self_overlap)
from ._base import Backend, BackendUnavailable
from ._cuda_build import (device_limits, get_kernel, kernel_instantiations, padded_size,
                          twiddle_bits, twiddle_table)

__all__ = ["CupyBackend", "kernel_instantiations", "torch_cuda_kernel", "max_onepass_log2n",
           "WORK_ELEMENTS", "MAX_LOG2N"]

#: Rows longer than shared memory are processed in chunks of about this many elements.
WORK_ELEMENTS = 1 << 22
#: Longest power-of-two row the kernels handle (longer ones go through cupy.fft).
MAX_LOG2N = 24
#: Threads per block of the grid-strided (one item per thread) kernels.
BLOCK = 256

cupy = None             # bound by CupyBackend.load()


def _compute_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in ("float16", "float32", "float64"):
        raise TypeError(f"the CUDA kernels take float16, float32 or float64 arrays, got {name}")
    return name


def max_onepass_log2n(dtype) -> int:
    """Largest ``log2(n)`` transformed in one shared-memory pass on the current device."""
    limit = device_limits()["smem_optin"]
    size = _compute_dtype(dtype).itemsize
    best = 1
    for log2n in range(1, MAX_LOG2N + 1):
        if 2 * padded_size(1 << (log2n - 1)) * size <= limit:
            best = log2n
    return best


def _grid(items: int) -> int:
    """Blocks for a grid-strided kernel: enough to fill the device, at least one."""
    cap = device_limits()["sm_count"] * 16
    return int(max(1, min(cap, -(-items // BLOCK))))


# ---------------------------------------------------------------------------------------------
# Rows of an array view
# ---------------------------------------------------------------------------------------------
def _row_views(x):
    """2-D views ``(rows, n)`` of ``x`` (transform axis last) covering it without copies.

    Leading axes are merged when their strides allow it (``as_strided`` keeps the same
    memory); otherwise the first axis is looped.
    """
    n = x.shape[-1]
    if x.ndim == 1:
        yield cupy.lib.stride_tricks.as_strided(x, shape=(1, n), strides=(0, x.strides[0]))
        return
    lead = [(s, st) for s, st in zip(x.shape[:-1], x.strides[:-1]) if s != 1]
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    mergeable = all(lead[i][1] == lead[i + 1][1] * lead[i + 1][0] for i in range(len(lead) - 1))
    if mergeable:
        row_stride = lead[-1][1] if lead else 0
        yield cupy.lib.stride_tricks.as_strided(x, shape=(rows, n),
                                                 strides=(row_stride, x.strides[-1]))
        return
    for sub in x:
        yield from _row_views(sub)


def _elem_strides(v):
    size = v.itemsize
    rs, es = v.strides
    if rs % size or es % size:
        raise ValueError("x has strides that are not multiples of its item size")
    return rs // size, es // size


# ---------------------------------------------------------------------------------------------
# Transform launches
# ---------------------------------------------------------------------------------------------
def _transform_rows(v, forward: bool, scale: float) -> None:
    """Transform the ``(rows, n)`` view ``v`` in place (n a power of two, 2 <= n <= 2^24)."""
    rows, n = v.shape
    if rows == 0:
        return
    log2n = n.bit_length() - 1
    name = _dtype_name(v.dtype)
    cd = _compute_dtype(v.dtype)
    C = cd.type
    tw = twiddle_table(n, cd)
    bits = np.int32(twiddle_bits(n))
    rs, es = _elem_strides(v)
    if log2n <= max_onepass_log2n(v.dtype):
        m = n // 2
        per_row = 2 * padded_size(m) * cd.itemsize
        T = min(256, max(1, m // 8))     # __launch_bounds__(256, 3) in rdfft.cu
        rpb = max(1, min(256 // T, device_limits()["smem_optin"] // per_row, rows))
        blocks = int(min(-(-rows // rpb), device_limits()["sm_count"] * 32))
        get_kernel("rdfft_rows", name)(
            (blocks,), (T, rpb), (v, np.int64(rows), np.int64(rs), np.int64(es),
                                  np.int32(log2n), tw, bits, C(scale), np.int32(not forward)),
            shared_mem=rpb * per_row)
        return
    chunk = max(1, WORK_ELEMENTS // n)
    work = cupy.empty(min(chunk, rows) * n, dtype=cd)
    for r0 in range(0, rows, chunk):
        part = v[r0: r0 + chunk]
        _multipass(part, work, log2n, name, cd, tw, bits, rs, es, forward, scale)


def _multipass(v, work, log2n, name, cd, tw, bits, rs, es, forward, scale) -> None:
    rows = v.shape[0]
    C = cd.type
    m_log = log2n - 1
    logS = min(m_log, max_onepass_log2n(cd) - 1)
    args_x = (v, np.int64(rs), np.int64(es))
    inv = np.int32(not forward)
    if not forward:                             # packed x -> 2Z in work (natural order)
        items = rows * (1 << (log2n - 2))
        get_kernel("rdfft_merge", name)((_grid(items),), (BLOCK,), (
            v, np.int64(rows), np.int64(rs), np.int64(es), work, np.int32(log2n), tw, bits))
    h_log = m_log - 1
    first = True
    while h_log + 1 > logS:                     # stages whose blocks exceed a chunk
        r = min(3, h_log + 1 - logS)
        items = rows * (1 << (m_log - r))
        get_kernel("rdfft_pass", name)((_grid(items),), (BLOCK,), (
            *args_x, work, np.int64(rows), np.int32(log2n), np.int32(h_log), np.int32(r),
            tw, bits, inv, np.int32(forward and first)))
        first = False
        h_log -= r
    S = 1 << logS
    threads = min(256, max(32, S // 8))
    chunks = rows * (1 << (m_log - logS))
    blocks = int(min(chunks, device_limits()["sm_count"] * 8))
    get_kernel("rdfft_tail", name)((blocks,), (threads,), (
        work, np.int64(rows), np.int32(log2n), np.int32(logS), tw, bits, inv),
        shared_mem=2 * padded_size(S) * cd.itemsize)
    if forward:
        items = rows * (1 << (log2n - 2))
        get_kernel("rdfft_split", name)((_grid(items),), (BLOCK,), (
            work, v, np.int64(rows), np.int64(rs), np.int64(es), np.int32(log2n), tw, bits,
            C(scale)))
    else:
        items = rows << log2n
        get_kernel("rdfft_unscramble", name)((_grid(items),), (BLOCK,), (
            work, v, np.int64(rows), np.int64(rs), np.int64(es), np.int32(log2n), C(scale)))


def _transform_any_length(v, forward: bool, scale: float) -> None:
    """Non-power-of-two rows (or beyond ``2**MAX_LOG2N``), in place via cupy.fft."""
    n = v.shape[-1]
    work = v.astype(_compute_dtype(v.dtype)) if v.dtype == np.float16 else v
    h, ni = n // 2, (n - 1) // 2
    if forward:
        Y = cupy.fft.rfft(work, axis=-1)
        out = cupy.empty(work.shape, dtype=work.dtype)
        out[..., : h + 1] = Y.real * scale
        if ni:
            out[..., n - ni:] = Y.imag[..., ni:0:-1] * scale
    else:
        Y = work[..., : h + 1].astype(cupy.result_type(work.dtype, np.complex64))
        if ni:
            Y.imag[..., 1: ni + 1] = work[..., n - 1: n - ni - 1: -1]
        out = cupy.fft.irfft(Y, n=n, axis=-1, norm="forward") * scale
    v[...] = out.astype(v.dtype, copy=False)


def execute_inplace(x, forward: bool, scale: float) -> None:
    """Transform the cupy array ``x`` in place along its last axis, times ``scale``."""
    if x.size == 0:
        return
    n = x.shape[-1]
    if n == 1:
        x *= x.dtype.type(scale)
        return
    pow2 = (n & (n - 1)) == 0 and n <= (1 << MAX_LOG2N)
    for v in _row_views(x):
        if pow2:
            _transform_rows(v, forward, scale)
        else:
            _transform_any_length(v, forward, scale)


# ---------------------------------------------------------------------------------------------
# Argument checks (cupy arrays)
# ---------------------------------------------------------------------------------------------
_FLOATS = ("float16", "float32", "float64")


def _result_dtype(dtype, name: str, inplace: bool):
    dtype = np.dtype(dtype)
    if dtype.name in _FLOATS:
        return dtype
    allowed = "float16, float32 or float64"
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real ({allowed}, or integers); got complex dtype "
                        f"{dtype}: rdfft works on real data")
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must be a real floating-point ({allowed}) or integer array, "
                        f"got dtype {dtype}")
    if inplace:
        raise TypeError(f"{name} must be {allowed} to be transformed in place, got {dtype}")
    return np.dtype(np.float64)


def _same_view(a, b) -> bool:
    if a is b:
        return True
    return (isinstance(b, cupy.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and a.strides == b.strides and a.data.ptr == b.data.ptr
            and a.device == b.device)


def _internal_overlap(t) -> bool:
    """True when distinct indices of ``t`` may share memory (e.g. an expanded view)."""
    return strides_self_overlap(t.shape, t.strides)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class CupyBackend(Backend):
    """CuPy arrays on a CUDA device, with the circfft CUDA kernels."""

    name = "cupy"
    family = "cupy"

    def load(self):
        global cupy
        try:
            import cupy as _cupy
        except ImportError as exc:
            raise BackendUnavailable(f"cupy is not installed ({exc})") from exc
        try:
            count = _cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:            # CUDARuntimeError without a driver
            raise BackendUnavailable(f"no CUDA device ({exc})") from exc
        if count < 1:
            raise BackendUnavailable("no CUDA device")
        cupy = _cupy
        return self

    def execute(self, x, *, forward: bool, scale: float, workers: int) -> None:
        """Transform the cupy array ``x`` in place along its last axis (``workers`` unused)."""
        execute_inplace(x, forward, scale)

    def transform(self, x, *, axis=-1, norm=None, out=None, overwrite_x=False, workers=None,
                  forward=True):
        """``rdfft`` (``forward=True``) or ``irdfft`` of a cupy array; see :func:`circfft.rdfft`."""
        if not isinstance(x, cupy.ndarray):
            raise TypeError(f"x must be a cupy.ndarray, got {type(x).__name__}")
        inplace = out is not None and _same_view(x, out)
        dtype = _result_dtype(x.dtype, "x", inplace)
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension, got a 0-d array")
        axis = check_axis(axis, x.ndim)
        norm = check_norm(norm)
        check_workers(workers)
        scale = float(scale_for(norm, x.shape[axis], forward))
        with x.device:
            if inplace:
                if _internal_overlap(x):
                    raise ValueError("x has elements sharing memory (a broadcast view?), so "
                                     "out=x cannot transform it in place")
                result = x
            elif out is not None:
                check_device_out(out, x, dtype, array_type=cupy.ndarray,
                                 type_name="cupy.ndarray", noun="array",
                                 hint="a broadcast view?", self_overlap=_internal_overlap,
                                 overlaps=cupy.shares_memory)
                out[...] = x
                result = out
            elif (overwrite_x and x.dtype == dtype and x.flags.writeable
                  and not _internal_overlap(x)):
                result = x
            else:
                result = cupy.array(x, dtype=dtype, order="C", copy=True)
            execute_inplace(cupy.moveaxis(result, axis, -1), forward, scale)
        return result

    # -- spectral products ------------------------------------------------------------------
    def spectral_mul(self, A, B, *, conj=False, out=None, axis=-1):
        """Pair-wise product of packed spectra (cupy version of :func:`circfft.spectral_mul`)."""
        for nm, t in (("A", A), ("B", B)):
            if not isinstance(t, cupy.ndarray):
                raise TypeError(f"{nm} must be a cupy.ndarray, got {type(t).__name__}")
            if t.dtype.name not in _FLOATS:
                raise TypeError(f"{nm} must be a float16, float32 or float64 array, got dtype "
                                f"{t.dtype}")
            if t.ndim == 0:
                raise ValueError(f"{nm} must have at least one dimension")
        if A.dtype != B.dtype:
            raise TypeError(f"A and B must have the same dtype, got {A.dtype} and {B.dtype}")
        if A.device != B.device:
            raise ValueError(f"A is on {A.device} but B is on {B.device}")
        ndim = max(A.ndim, B.ndim)
        axis = check_axis(axis, ndim)
        Am = cupy.moveaxis(A.reshape((1,) * (ndim - A.ndim) + A.shape), axis, -1)
        Bm = cupy.moveaxis(B.reshape((1,) * (ndim - B.ndim) + B.shape), axis, -1)
        if Am.shape[-1] != Bm.shape[-1]:
            raise ValueError(f"A and B must have the same length along axis {axis}, "
                             f"got {Am.shape[-1]} and {Bm.shape[-1]}")
        try:
            shape = np.broadcast_shapes(Am.shape, Bm.shape)
        except ValueError:
            raise ValueError(f"A and B do not broadcast: shapes {A.shape} and "
                             f"{B.shape}") from None
        with A.device:
            if out is None:
                Z = cupy.empty(shape, dtype=A.dtype)
                result = None
            else:
                if not isinstance(out, cupy.ndarray):
                    raise TypeError(f"out must be a cupy.ndarray, got {type(out).__name__}")
                if out.dtype != A.dtype:
                    raise TypeError(f"out has dtype {out.dtype}, expected {A.dtype}")
                Z = cupy.moveaxis(out, axis, -1) if out.ndim == ndim else None
                if Z is None or Z.shape != shape:
                    raise ValueError(f"out has shape {out.shape}, expected the broadcast shape "
                                     f"{tuple(np.moveaxis(np.empty(shape, 'u1'), -1, axis).shape)}")
                if _internal_overlap(Z):
                    raise ValueError("out has elements sharing memory (a broadcast view?)")
                for nm, t in (("A", Am), ("B", Bm)):
                    if t.shape == shape and cupy.shares_memory(Z, t) and not _same_view(t, Z):
                        raise ValueError(f"out overlaps {nm} partially; pass out={nm} "
                                         "itself for an in-place product")
                result = out
            _spectral_mul_launch(cupy.broadcast_to(Am, shape), cupy.broadcast_to(Bm, shape),
                                 Z, bool(conj))
        return cupy.moveaxis(Z, -1, axis) if result is None else result

    # -- circulant operators (validated by circfft._circulant) -------------------------------
    def block_circulant_matmul(self, w, x, *, transpose=False, pre=None, post=None):
        """``post * C(w) (pre * x)`` (``C(w)^T`` with ``transpose``) on the last axis of ``x``."""
        m, n, b = w.shape
        nx, ny = (m, n) if transpose else (n, m)
        lead = x.shape[:-1]
        with x.device:
            u = x * pre if pre is not None else x
            X = self.transform(u.reshape(-1, nx, b), forward=True)          # (T, nx, b)
            W = self.transform(w, forward=True)                              # (m, n, b)
            T = X.shape[0]
            Y = cupy.empty((T, ny, b), dtype=X.dtype)
            s = W.itemsize
            out_stride, in_stride = W.strides[0] // s, W.strides[1] // s
            if transpose:
                out_stride, in_stride = in_stride, out_stride
            items = T * ny * (b // 2 + 1)
            if items:
                get_kernel("bc_accumulate", _dtype_name(X.dtype))((_grid(items),), (BLOCK,), (
                    X, np.int64(nx * b), W, np.int64(out_stride), np.int64(in_stride), Y,
                    np.int64(ny * b), np.int64(T), np.int32(ny), np.int32(nx), np.int32(b),
                    np.int32(bool(transpose))))
            execute_inplace(Y, False, 1.0 / b)
            y = Y.reshape(*lead, ny * b)
            if post is not None:
                y *= post
        return y

    def block_circulant_dense(self, w):
        """Dense ``(m*b, n*b)`` matrix of the kernel ``w`` (m, n, b) by one index gather."""
        m, n, b = w.shape
        with w.device:
            r = cupy.arange(b)
            idx = (r[:, None] - r[None, :]) % b
            i = cupy.arange(m)[:, None, None, None]
            j = cupy.arange(n)[None, None, :, None]
            return w[i, j, idx[None, :, None, :]].reshape(m * b, n * b)


def _spectral_mul_launch(A, B, Z, conj: bool) -> None:
    """Launch ``spectral_mul`` on same-shape views (broadcast views have zero strides)."""
    if Z.size == 0:
        return
    n = Z.shape[-1]
    if Z.ndim > 2 and not _rows_mergeable(A, B, Z):
        for a, b2, z in zip(A, B, Z):
            _spectral_mul_launch(a, b2, z, conj)
        return
    rows = Z.size // n
    views = []
    for t in (A, B, Z):
        if t.ndim == 1:
            views.append((0, t.strides[-1] // t.itemsize))
        else:
            lead = [st for s, st in zip(t.shape[:-1], t.strides[:-1]) if s != 1]
            views.append(((lead[-1] if lead else 0) // t.itemsize, t.strides[-1] // t.itemsize))
    (ars, aes), (brs, bes), (zrs, zes) = views
    items = rows * (n // 2 + 1)
    get_kernel("spectral_mul", _dtype_name(Z.dtype))((_grid(items),), (BLOCK,), (
        A, np.int64(ars), np.int64(aes), B, np.int64(brs), np.int64(bes),
        Z, np.int64(zrs), np.int64(zes), np.int64(rows), np.int64(n), np.int32(conj)))


def _rows_mergeable(*arrays) -> bool:
    """True when every array's leading axes collapse to one row stride."""
    for t in arrays:
        lead = [(s, st) for s, st in zip(t.shape[:-1], t.strides[:-1]) if s != 1]
        if not all(lead[i][1] == lead[i + 1][1] * lead[i + 1][0]
                   for i in range(len(lead) - 1)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# torch CUDA tensors
# ---------------------------------------------------------------------------------------------
def torch_cuda_kernel():
    """The in-place CUDA transform for :func:`torch_backend.set_cuda_kernel`, or None.

    None when cupy is not importable or no CUDA device is visible; torch then keeps its
    ``torch.fft`` path.  The returned ``fn(x, forward, scale)`` wraps the tensor through DLPack
    (no copy, same memory) and launches on torch's current stream, so it is ordered with the
    surrounding torch work (autograd included).
    """
    try:
        CupyBackend().load()
    except (BackendUnavailable, ImportError, RuntimeError, OSError):
        # cupy missing, no device, or a cupy build that does not match the driver
        return None
    import torch

    def fn(x, forward: bool, scale: float) -> None:
        if x.dtype not in (torch.float32, torch.float64, torch.float16):
            raise TypeError(f"the CUDA kernels take float16/32/64 tensors, got {x.dtype}")
        with cupy.cuda.Device(x.device.index):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(x.device).cuda_stream)
            with stream:
                execute_inplace(cupy.from_dlpack(x.detach()), forward, scale)

    return fn
