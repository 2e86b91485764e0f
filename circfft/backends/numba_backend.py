"""Numba CPU backend: the reference algorithm, compiled and vectorised across rows.

Each worker thread owns two scratch buffers of ``n * V`` elements.  A block of ``V`` rows is
copied in transposed (element ``k`` of the ``V`` rows side by side, one SIMD vector per element),
so that every butterfly operates on ``V`` contiguous lanes.  Per block of rows:

1. transpose the rows into scratch (8x8 register transposes of float32, 4x4 of float64);
2. complex FFT of length ``m = n/2`` in constant-geometry radix-4 stages, ping-ponging between
   the two buffers (see :mod:`._numba_kernels` for why this form vectorises); when log2 m is
   odd the last radix-2 stage is left to step 3;
3. split ``Z`` into the half spectrum ``Y`` of the real rows, one contiguous group of lane
   vectors per frequency pair (k, m-k);
4. transpose back into the rows, putting the groups into halfcomplex order on the way.

The inverse runs: transpose in (plain: the scratch holds the halfcomplex columns), merge into
``conj(2Z)``, the same FFT, conjugate and un-bit-reverse (with the pending radix-2 stage),
transpose out.  The caller's array is read once and written once,
and any strides cost nothing extra.

``V`` is 64 bytes of lanes (16 float32 or 8 float64 rows: two AVX2 registers; narrower lane
loops are not vectorised by LLVM) for ``n <= MAX_LANED_N``; longer rows use one lane.  Scratch
per worker thread is therefore ``2 * 64 * n`` bytes (at most 8 MiB) for ``n <= 2**16`` and two
rows (``2 * n`` elements) beyond; it never grows with the number of rows.  Each calling thread
keeps its last scratch (up to ``KEEP_SCRATCH_BYTES``) for its next call: see ``get_scratch``.

Non-power-of-two lengths go through :func:`._base.transform_any_length`.
"""
from __future__ import annotations

import threading

import numpy as np

from .._plan import get_plan, is_power_of_two, release_plans
from ._base import (Backend, BackendUnavailable, as_rows, iter_row_blocks, merged_rows,
                    transform_any_length)

__all__ = ["NumbaBackend"]

#: Bytes of lanes per scratch element: 16 float32 or 8 float64 rows side by side.
LANE_BYTES = 64
#: Longest row transformed with many lanes (a scratch buffer of 64 * n bytes = 4 MiB).
MAX_LANED_N = 1 << 16

def lanes_for(n: int, dtype) -> int:
    """Rows transformed together: ``LANE_BYTES`` of them for ``n <= MAX_LANED_N``, else 1."""
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
    call, 10-15 % of the transform's time.  Larger pairs (one-lane rows beyond 2**16, where
    the faults are a small part of the work) are freed after the call.
    :func:`release_scratch` frees the kept pair.
    """
    dtype = np.dtype(dtype)
    shape = (workers, n * lanes_for(n, dtype))
    pair = getattr(_scratch, "pair", None)
    if pair is not None and pair[0].shape == shape and pair[0].dtype == dtype:
        return pair
    _scratch.pair = None                # free the old pair before allocating the new one
    pair = (np.empty(shape, dtype), np.empty(shape, dtype))
    if workers * scratch_bytes(n, dtype) <= KEEP_SCRATCH_BYTES:
        _scratch.pair = pair
    return pair


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
                transform_any_length(block, forward, scale)
            return
        import numba

        from . import _numba_kernels as K

        plan = get_plan(n, x.dtype)
        V = lanes_for(n, x.dtype)
        scale = x.dtype.type(scale)
        lanes = (0,) * V
        # No more workers than threads, nor than blocks of V rows (an idle worker's scratch
        # would go unused).
        workers = max(1, min(workers, numba.config.NUMBA_NUM_THREADS, -(-(x.size // n) // V)))
        sa, sb = get_scratch(n, x.dtype, workers)
        if workers > 1:
            # Parallel kernels keep the GIL: numba's workqueue layer is not re-entrant.
            numba.set_num_threads(workers)
            for rows in as_rows(x):
                K.rows_parallel(rows, plan.twiddles, plan.bitrev, scale, forward,
                                workers, sa, sb, lanes)
        else:
            for rows in as_rows(x):
                K.rows_serial(rows, plan.twiddles, plan.bitrev, scale, forward,
                              sa[0], sb[0], lanes)

    def pair_mul(self, A, B, Z, *, conj):
        """Packed products in one compiled pass per block of rows (no temporaries)."""
        if Z.size == 0:
            return
        from ._numba_circulant import pair_mul

        A = np.broadcast_to(A, Z.shape)
        B = np.broadcast_to(B, Z.shape)
        for a, b, z in _joint_rows(A, B, Z):
            pair_mul(a, b, z, bool(conj))


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
