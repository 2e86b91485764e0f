"""Numba CPU backend: the reference algorithm, compiled, on SIMD lane vectors.

Rows of up to ``MAX_LANED_N`` elements are transformed ``V`` at a time, one row per lane of a
64-byte vector (``V`` = 16 float32 or 8 float64 rows; :mod:`._numba_kernels`): transpose a
block of rows into a scratch buffer, the complex FFT of length ``n/2`` in place
(:mod:`._numba_fft`: radix-8 passes depth first down to blocks that fit in L1, then radix-4),
the split into the half spectrum in place, and gathered transposes back into the rows in
halfcomplex order.  The inverse runs the same steps backwards.  Longer rows are transformed
one at a time with their ``V`` decimated sub-sequences in the lanes (:mod:`._numba_long`).
The lane vectors are explicit (:mod:`._numba_simd`), so every butterfly is vector code on
any target.  The caller's array is read once and written once, whatever its strides.

Compilation: one entry point per dtype, direction and size class (laned or long), compiled on
its first call (2-3 s) and cached on disk by numba (``NUMBA_CACHE_DIR``); helpers are shared
between the entry points of a process and are not inlined at numba's level, which is what kept
the first call at 27 s before.

Threads: ``workers > 1`` cuts the blocks of rows into contiguous shares, one per worker, run
by a pool of Python threads (the kernels release the GIL; the calling thread runs the first
share).  Each row is computed by the same instructions in whichever lane and thread it lands,
so results do not depend on ``workers``.

Scratch per worker thread: two buffers of ``n * V`` elements, ``2 * 64 * n`` bytes (at most
2 MiB) for ``n <= MAX_LANED_N = 2**14`` (the laned kernels work in the first and keep two offset tables in
the second), and two rows (``2 * n`` elements) beyond; it never grows with the number of rows.
Each calling thread keeps its last scratch (up to ``KEEP_SCRATCH_BYTES``) for its next call:
see ``get_scratch``.  Buffers start on 64-byte boundaries.

Non-power-of-two lengths go through :func:`._base.transform_any_length`.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._plan import get_lane_twiddles, get_plan, is_power_of_two, release_plans
from ._base import (Backend, BackendUnavailable, as_rows, iter_row_blocks, merged_rows,
                    transform_any_length)

__all__ = ["NumbaBackend"]

#: Bytes of lanes per scratch element: 16 float32 or 8 float64 rows side by side.  The
#: compiled kernels are written for 64-byte lane vectors; any other value is refused.
LANE_BYTES = 64
#: Longest row transformed with many lanes (a scratch buffer of 64 * n bytes = 1 MiB).  Rows
#: of 2**15 and 2**16 elements ran 10-40 % faster one at a time (the long-row kernels), with
#: two rows of scratch instead of 8 MiB per worker.
MAX_LANED_N = 1 << 14
#: Fewest elements per worker thread: handing work to another thread costs 0.1-0.4 ms on the
#: 2-core test machine, as much as transforming 2**18 float32 elements.
MIN_WORK = 1 << 18


def lanes_for(n: int, dtype) -> int:
    """Rows transformed together: ``LANE_BYTES`` of them for ``n <= MAX_LANED_N``, else 1
    (longer rows go one at a time, their sub-sequences in the lanes)."""
    return LANE_BYTES // np.dtype(dtype).itemsize if n <= MAX_LANED_N else 1


def scratch_bytes(n: int, dtype) -> int:
    """Scratch the numba backend allocates per worker thread for length ``n`` (two buffers)."""
    return 2 * n * lanes_for(n, dtype) * np.dtype(dtype).itemsize


_scratch = threading.local()
#: Largest scratch pair kept between calls (two workers' buffers at n = 2**16).
KEEP_SCRATCH_BYTES = 32 << 20


def get_scratch(n: int, dtype, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The two scratch buffers, ``(workers, n * V)`` each, of the calling thread.

    A pair of at most ``KEEP_SCRATCH_BYTES`` is kept for the next call from the same thread
    (one pair per thread, so concurrent callers never share): allocated afresh, the 8 MiB per
    worker of n = 65536 came back from the kernel as about 2,000 new zeroed pages on every
    call, 10-15 % of the transform's time.  Larger pairs (long rows, where
    the faults are a small part of the work) are freed after the call.
    :func:`release_scratch` frees the kept pair.
    """
    dtype = np.dtype(dtype)
    shape = (workers, n * lanes_for(n, dtype))
    pair = getattr(_scratch, "pair", None)
    if pair is not None and pair[0].shape == shape and pair[0].dtype == dtype:
        return pair
    _scratch.pair = None                # free the old pair before allocating the new one
    pair = (_aligned_empty(shape, dtype), _aligned_empty(shape, dtype))
    if workers * scratch_bytes(n, dtype) <= KEEP_SCRATCH_BYTES:
        _scratch.pair = pair
    return pair


def _aligned_empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on a 64-byte boundary (numpy gives 16): the
    kernels' lane vectors are 64 bytes, and a vector straddling two cache lines costs two."""
    size = int(np.prod(shape))
    buf = np.empty(size * dtype.itemsize + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start: start + size * dtype.itemsize].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Free the scratch buffers that the calling thread keeps between calls, and the cached
    plan tables (:func:`circfft._plan.release_plans`)."""
    _scratch.pair = None
    release_plans()


class NumbaBackend(Backend):
    """Compiled CPU backend (needs ``numba``)."""

    name = "numba"
    family = "numpy"

    def load(self):
        try:
            import numba  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailable(f"numba is not installed ({exc})") from exc
        return self

    def execute(self, x: np.ndarray, *, forward: bool, scale: float, workers: int) -> None:
        n = x.shape[-1]
        if n == 1:
            x *= scale
            return
        if not is_power_of_two(n):
            for block in iter_row_blocks(x):
                transform_any_length(block, forward, scale, workers)
            return
        import numba

        from ._numba_simd import LANE_BYTES as KERNEL_LANE_BYTES

        if LANE_BYTES != KERNEL_LANE_BYTES:     # before anything is written
            raise ValueError(f"LANE_BYTES = {LANE_BYTES} is not supported: the compiled numba "
                             f"kernels work on {KERNEL_LANE_BYTES}-byte lane vectors")

        dtype = x.dtype
        scale = dtype.type(scale)
        if n <= MAX_LANED_N:
            from . import _numba_kernels as K

            plan = get_plan(n, dtype)
            kernel = K.forward_rows if forward else K.inverse_rows
            tables = (plan.twiddles, plan.bitrev, scale)
        else:
            from . import _numba_long as K

            lanes = LANE_BYTES // dtype.itemsize
            plan = get_plan(n // lanes, dtype)
            lt = get_lane_twiddles(n, lanes, dtype)
            kernel = K.forward_long if forward else K.inverse_long
            tables = (plan.twiddles, plan.bitrev, lt.A, lt.B, lt.R, scale)
        V = lanes_for(n, dtype)
        # No more workers than numba's thread limit, nor than blocks of V rows (an idle
        # worker's scratch would go unused), nor than shares of MIN_WORK elements.
        workers = max(1, min(workers, numba.config.NUMBA_NUM_THREADS,
                             -(-(x.size // n) // V), x.size // MIN_WORK))
        sa, sb = get_scratch(n, dtype, workers)
        for rows in as_rows(x):
            _run_rows(kernel, rows, tables, sa, sb, V, workers)

    def pair_mul(self, A, B, Z, *, conj):
        """Packed products in one compiled pass per block of rows (no temporaries)."""
        if Z.size == 0:
            return
        from ._numba_circulant import pair_mul

        A = np.broadcast_to(A, Z.shape)
        B = np.broadcast_to(B, Z.shape)
        for a, b, z in _joint_rows(A, B, Z):
            pair_mul(a, b, z, bool(conj))


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _worker_pool(size: int) -> ThreadPoolExecutor:
    """The process's pool of worker threads (at least ``size``), made on first use."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(
                max_workers=size, thread_name_prefix="circfft-numba"), size
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _forget_pool() -> None:
    """After ``fork``: the child has none of the parent's threads."""
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run_rows(kernel, rows, tables, sa, sb, V, workers) -> None:
    """Transform the (rows, n) view ``rows`` in place: its blocks of V rows cut into at most
    ``workers`` contiguous shares, share c on scratch row c; share 0 on the calling thread,
    the others on the worker pool (the kernels release the GIL)."""
    count = rows.shape[0]
    blocks = -(-count // V)
    workers = max(1, min(workers, blocks))
    s0, s1 = rows.strides
    base = rows.ctypes.data

    def share(c):
        r0 = min(count, (c * blocks // workers) * V)
        r1 = min(count, ((c + 1) * blocks // workers) * V)
        if r1 > r0:
            kernel(base + r0 * s0, r1 - r0, rows.shape[1], s0, s1, *tables, sa[c], sb[c])

    if workers == 1:
        share(0)
        return
    futures = [_worker_pool(workers - 1).submit(share, c) for c in range(1, workers)]
    try:
        share(0)
    finally:
        for f in futures:
            f.result()


def _joint_rows(*arrays):
    """``(rows, n)`` views of same-shape arrays covering them together, without copies."""
    if arrays[0].ndim == 1:
        yield tuple(a[np.newaxis, :] for a in arrays)
        return
    merged = [merged_rows(a) for a in arrays]
    if all(m is not None for m in merged):
        yield tuple(merged)
        return
    for parts in zip(*arrays):
        yield from _joint_rows(*parts)
