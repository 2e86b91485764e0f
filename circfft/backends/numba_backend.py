"""Numba CPU backend: the reference algorithm, compiled and vectorised across rows.

Layout of the work: each worker thread owns one scratch buffer of ``n * V`` elements.  It copies
``V`` rows into it transposed (element ``k`` of the ``V`` rows side by side), so that every
butterfly below operates on ``V`` contiguous lanes that LLVM turns into SIMD instructions; then
it runs the in-place complex FFT of length ``m = n/2`` (radix-4 stages, one radix-2 stage when
``log2 m`` is odd) and writes the split spectrum straight back into the rows in halfcomplex
order.  The transposes double as the input/output permutations, so the caller's array is read
once and written once, and arbitrary strides cost nothing extra.

``V`` is a compile-time constant per kernel (16 lanes for float32, 8 for float64, fewer for long
rows so the scratch stays in the L2 cache): the kernels are generated once per lane count.
Per-thread scratch is ``min(V*n, max(n, 2**17))`` elements, allocated per call and freed after.

Non-power-of-two lengths go through :func:`numpy_backend.transform_any_length`.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from .._plan import get_plan, is_power_of_two
from ._base import Backend, BackendUnavailable, as_rows
from .numpy_backend import BLOCK_ELEMENTS, transform_any_length
from ._base import iter_row_blocks

__all__ = ["NumbaBackend"]

#: Scratch budget per thread (elements); rows longer than this use one lane.
SCRATCH_ELEMENTS = 1 << 17
#: Lane counts compiled; the widest that fits the scratch budget is used.
LANES = (16, 8, 4, 2, 1)

_kernels = {}
_kernels_lock = threading.Lock()


def _build(V: int):
    """Compile (or load from numba's cache) the forward and inverse kernels for ``V`` lanes."""
    import numba
    from numba import njit, prange

    jit = dict(cache=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)
    inl = dict(jit, inline="always")
    del inl["cache"]

    @njit(**inl)
    def dif_radix2(buf, m, tw):
        # span h = m/2; twiddle W_m^j = W_n^(2j)
        h = m // 2
        for j in range(h):
            wr = tw[4 * j]
            wi = tw[4 * j + 1]
            a = 2 * j * V
            b = 2 * (j + h) * V
            for v in range(V):
                ar = buf[a + v]
                ai = buf[a + V + v]
                br = buf[b + v]
                bi = buf[b + V + v]
                buf[a + v] = ar + br
                buf[a + V + v] = ai + bi
                dr = ar - br
                di = ai - bi
                buf[b + v] = dr * wr - di * wi
                buf[b + V + v] = dr * wi + di * wr

    @njit(**inl)
    def dit_radix2(buf, m, tw):
        h = m // 2
        for j in range(h):
            wr = tw[4 * j]
            wi = -tw[4 * j + 1]
            a = 2 * j * V
            b = 2 * (j + h) * V
            for v in range(V):
                ar = buf[a + v]
                ai = buf[a + V + v]
                br = buf[b + v]
                bi = buf[b + V + v]
                cr = br * wr - bi * wi
                ci = br * wi + bi * wr
                buf[a + v] = ar + cr
                buf[a + V + v] = ai + ci
                buf[b + v] = ar - cr
                buf[b + V + v] = ai - ci

    @njit(**inl)
    def dif_radix4(buf, m, q, tw):
        # Two radix-2 DIF stages (spans 2q and q) fused; W = exp(-2j pi / 4q) = W_n^(2s).
        s2 = 2 * (m // (4 * q))
        for g in range(0, m, 4 * q):
            for j in range(q):
                k1 = 2 * j * s2
                w1r = tw[k1]
                w1i = tw[k1 + 1]
                w2r = tw[2 * k1]
                w2i = tw[2 * k1 + 1]
                w3r = tw[3 * k1]
                w3i = tw[3 * k1 + 1]
                p0 = 2 * (g + j) * V
                p1 = p0 + 2 * q * V
                p2 = p1 + 2 * q * V
                p3 = p2 + 2 * q * V
                for v in range(V):
                    a0r = buf[p0 + v]
                    a0i = buf[p0 + V + v]
                    a1r = buf[p1 + v]
                    a1i = buf[p1 + V + v]
                    a2r = buf[p2 + v]
                    a2i = buf[p2 + V + v]
                    a3r = buf[p3 + v]
                    a3i = buf[p3 + V + v]
                    sr = a0r + a2r
                    si = a0i + a2i
                    dr = a0r - a2r
                    di = a0i - a2i
                    tr = a1r + a3r
                    ti = a1i + a3i
                    er = a1r - a3r
                    ei = a1i - a3i
                    buf[p0 + v] = sr + tr
                    buf[p0 + V + v] = si + ti
                    ur = sr - tr
                    ui = si - ti
                    buf[p1 + v] = ur * w2r - ui * w2i
                    buf[p1 + V + v] = ur * w2i + ui * w2r
                    ur = dr + ei
                    ui = di - er
                    buf[p2 + v] = ur * w1r - ui * w1i
                    buf[p2 + V + v] = ur * w1i + ui * w1r
                    ur = dr - ei
                    ui = di + er
                    buf[p3 + v] = ur * w3r - ui * w3i
                    buf[p3 + V + v] = ur * w3i + ui * w3r

    @njit(**inl)
    def dit_radix4(buf, m, q, tw):
        # Inverse of dif_radix4 times 4, conjugate twiddles.
        s2 = 2 * (m // (4 * q))
        for g in range(0, m, 4 * q):
            for j in range(q):
                k1 = 2 * j * s2
                w1r = tw[k1]
                w1i = -tw[k1 + 1]
                w2r = tw[2 * k1]
                w2i = -tw[2 * k1 + 1]
                w3r = tw[3 * k1]
                w3i = -tw[3 * k1 + 1]
                p0 = 2 * (g + j) * V
                p1 = p0 + 2 * q * V
                p2 = p1 + 2 * q * V
                p3 = p2 + 2 * q * V
                for v in range(V):
                    b0r = buf[p0 + v]
                    b0i = buf[p0 + V + v]
                    b1r = buf[p1 + v]
                    b1i = buf[p1 + V + v]
                    b2r = buf[p2 + v]
                    b2i = buf[p2 + V + v]
                    b3r = buf[p3 + v]
                    b3i = buf[p3 + V + v]
                    c1r = b1r * w2r - b1i * w2i
                    c1i = b1r * w2i + b1i * w2r
                    c2r = b2r * w1r - b2i * w1i
                    c2i = b2r * w1i + b2i * w1r
                    c3r = b3r * w3r - b3i * w3i
                    c3i = b3r * w3i + b3i * w3r
                    Sr = b0r + c1r
                    Si = b0i + c1i
                    Tr = b0r - c1r
                    Ti = b0i - c1i
                    Dr = c2r + c3r
                    Di = c2i + c3i
                    Er = c3i - c2i          # i * (c2 - c3)
                    Ei = c2r - c3r
                    buf[p0 + v] = Sr + Dr
                    buf[p0 + V + v] = Si + Di
                    buf[p2 + v] = Sr - Dr
                    buf[p2 + V + v] = Si - Di
                    buf[p1 + v] = Tr + Er
                    buf[p1 + V + v] = Ti + Ei
                    buf[p3 + v] = Tr - Er
                    buf[p3 + V + v] = Ti - Ei

    @njit(**inl)
    def fft_dif(buf, m, tw):
        L = 0
        while (1 << L) < m:
            L += 1
        if L & 1:
            dif_radix2(buf, m, tw)
            q = m // 8
        else:
            q = m // 4
        while q >= 1:
            dif_radix4(buf, m, q, tw)
            q //= 4

    @njit(**inl)
    def ifft_dit(buf, m, tw):
        L = 0
        while (1 << L) < m:
            L += 1
        q = 1
        qmax = m // 8 if (L & 1) else m // 4
        while q <= qmax:
            dit_radix4(buf, m, q, tw)
            q *= 4
        if L & 1:
            dit_radix2(buf, m, tw)

    @njit(**inl)
    def forward_block(x, r0, nv, buf, tw, rev, scale):
        n = x.shape[1]
        m = n // 2
        # gather V rows transposed: buf[k*V + v] = x[r0+v, k]
        for v in range(nv):
            for k in range(n):
                buf[k * V + v] = x[r0 + v, k]
        for v in range(nv, V):
            for k in range(n):
                buf[k * V + v] = 0.0
        fft_dif(buf, m, tw)
        half = 0.5 * scale
        for v in range(nv):
            r = r0 + v
            zr = buf[v]
            zi = buf[V + v]
            x[r, 0] = scale * (zr + zi)
            x[r, m] = scale * (zr - zi)
        if m >= 2:
            p = 2 * rev[m // 2] * V
            for v in range(nv):
                x[r0 + v, m // 2] = scale * buf[p + v]
                x[r0 + v, n - m // 2] = -scale * buf[p + V + v]
        for k in range(1, (m + 1) // 2):
            pa = 2 * rev[k] * V
            pb = 2 * rev[m - k] * V
            wr = tw[2 * k]
            wi = tw[2 * k + 1]
            for v in range(nv):
                ar = buf[pa + v]
                ai = buf[pa + V + v]
                br = buf[pb + v]
                bi = buf[pb + V + v]
                er = ar + br            # 2E = A + conj(B)
                ei = ai - bi
                orr = ai + bi           # 2O = -i (A - conj(B))
                oi = br - ar
                tr = orr * wr - oi * wi  # 2T = W^k 2O
                ti = orr * wi + oi * wr
                r = r0 + v
                x[r, k] = half * (er + tr)
                x[r, n - k] = half * (ei + ti)
                x[r, m - k] = half * (er - tr)
                x[r, m + k] = half * (ti - ei)

    @njit(**inl)
    def inverse_block(x, r0, nv, buf, tw, rev, scale):
        n = x.shape[1]
        m = n // 2
        for v in range(V):
            buf[v] = 0.0
            buf[V + v] = 0.0
        for v in range(nv):
            y0 = x[r0 + v, 0]
            ym = x[r0 + v, m]
            buf[v] = y0 + ym
            buf[V + v] = y0 - ym
        if m >= 2:
            p = 2 * rev[m // 2] * V
            for v in range(V):
                buf[p + v] = 0.0
                buf[p + V + v] = 0.0
            for v in range(nv):
                buf[p + v] = 2.0 * x[r0 + v, m // 2]
                buf[p + V + v] = -2.0 * x[r0 + v, n - m // 2]
        for k in range(1, (m + 1) // 2):
            pa = 2 * rev[k] * V
            pb = 2 * rev[m - k] * V
            wr = tw[2 * k]
            wi = -tw[2 * k + 1]         # conj(W^k)
            for v in range(V):
                buf[pa + v] = 0.0
                buf[pa + V + v] = 0.0
                buf[pb + v] = 0.0
                buf[pb + V + v] = 0.0
            for v in range(nv):
                r = r0 + v
                ar = x[r, k]
                ai = x[r, n - k]
                br = x[r, m - k]
                bi = x[r, m + k]
                er = ar + br            # 2E = A + conj(B)
                ei = ai - bi
                dr = ar - br            # A - conj(B)
                di = ai + bi
                orr = dr * wr - di * wi  # 2O = (A - conj B) conj(W^k)
                oi = dr * wi + di * wr
                buf[pa + v] = er - oi    # Z_k = 2E + i 2O
                buf[pa + V + v] = ei + orr
                buf[pb + v] = er + oi    # Z_{m-k} = conj(2E) + i conj(2O)
                buf[pb + V + v] = orr - ei
        ifft_dit(buf, m, tw)
        for v in range(nv):
            for k in range(n):
                x[r0 + v, k] = scale * buf[k * V + v]

    def make_driver(block, parallel):
        @njit(parallel=parallel, nogil=not parallel, **jit)
        def driver(x, tw, rev, scale, nchunks):
            rows, n = x.shape
            nblocks = (rows + V - 1) // V
            nchunks = max(1, min(nchunks, nblocks))
            for c in prange(nchunks):
                buf = np.empty(n * V, dtype=x.dtype)
                b_start = c * nblocks // nchunks
                b_stop = (c + 1) * nblocks // nchunks
                for b in range(b_start, b_stop):
                    r0 = b * V
                    nv = min(V, rows - r0)
                    block(x, r0, nv, buf, tw, rev, scale)
        return driver

    return {
        (True, False): make_driver(forward_block, False),
        (True, True): make_driver(forward_block, True),
        (False, False): make_driver(inverse_block, False),
        (False, True): make_driver(inverse_block, True),
    }


def kernels(V: int):
    """The compiled drivers for ``V`` lanes, keyed by ``(forward, parallel)``."""
    k = _kernels.get(V)
    if k is None:
        with _kernels_lock:
            k = _kernels.get(V)
            if k is None:
                k = _kernels[V] = _build(V)
    return k


def lanes_for(n: int, dtype) -> int:
    """Widest lane count whose scratch (``n * V`` elements) fits ``SCRATCH_ELEMENTS``."""
    widest = 16 if np.dtype(dtype) == np.float32 else 8
    for V in LANES:
        if V <= widest and n * V <= SCRATCH_ELEMENTS:
            return V
    return 1


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
            for block in iter_row_blocks(x, BLOCK_ELEMENTS):
                transform_any_length(block, forward, scale)
            return
        import numba

        plan = get_plan(n, x.dtype)
        V = lanes_for(n, x.dtype)
        workers = max(1, min(workers, numba.config.NUMBA_NUM_THREADS))
        parallel = workers > 1
        driver = kernels(V)[(forward, parallel)]
        if parallel:
            numba.set_num_threads(workers)
        for rows in as_rows(x):
            driver(rows, plan.twiddles, plan.bitrev, rows.dtype.type(scale), workers)
