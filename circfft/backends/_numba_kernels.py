"""Numba kernels of the CPU backend for rows of up to ``MAX_LANED_N`` elements, V rows at a time.

See :mod:`circfft.backends.numba_backend` for the design.  A block of ``V`` rows (one lane
vector of ``LANE_BYTES``: 16 float32 or 8 float64 rows) lives in one scratch buffer of ``n``
lane vectors, row ``v`` in lane ``v``; complex slot ``p`` (lane vectors ``2p`` and
``2p + 1``) holds ``x[2p] + i x[2p+1]`` of every row.  Forward, per block:

1. ``load_rows``: V x V register transposes of the rows into the scratch;
2. the complex FFT of length ``m = n/2``, in place, bit-reversed out (:mod:`._numba_fft`);
3. ``split_inplace``: the half spectrum ``Y`` of the real rows, each ``Y_j`` written over the
   ``Z_j`` it came from;
4. ``store_gathered``: V halfcomplex columns at a time, their lane vectors gathered from
   where step 3 left them (a table of byte offsets made once per call) and transposed into
   the rows.

Inverse: ``load_scattered`` (each column's lane vector put where ``merge_inplace`` wants it),
``merge_inplace`` (``conj(2Z)``, natural order, in place), the same FFT
(``IDFT(Z) = conj(DFT(conj(Z)))``), ``store_gathered`` from the bit-reversed slots with the
conjugation and the scale folded into the transposes.  One scratch buffer per worker is
touched (the second, of the same size, holds the two offset tables): at n = 16384 this
in-place pipeline took 0.89 against 1.25 ns per element (float32) for the earlier one through
two buffers, 10-20 % less from n = 256 to 4096, the same at n = 64, and up to 8 % more for
the float64 forward transform at n >= 32768, where the gathers read from L3.

These details matter for speed:

* Explicit lane vectors (:mod:`._numba_simd`): every loop body is whole-vector code.
* Tiles of the rows start at 64-byte boundaries where the rows allow it (``aligned_tiles``):
  numpy arrays are usually only 16-byte aligned, and a store that straddles two cache lines
  costs about two (0.35 against 0.20 ns per element for the stores, float32).
* The rows are passed as an address and byte strides, not as an array: an array's layout
  (C-contiguous or not) is part of its numba type, and each would be a compilation of its
  own.  The entry points are one compilation per dtype and direction, cached on disk; their
  helpers take ``detach``-ed arrays (no reference counting: with two workers the atomic
  counts of shared tables are one cache line written by both).
* ``split_inplace`` walks k in the order of its slot (even p = bitrev(k) ascending): the
  pair (k, m - k) sits in one run read forwards and one read backwards, so nothing jumps;
  the jumps are left to the gathers of step 4, which prefetch their next tile.
"""
import numpy as np
from numba import njit

from ._numba_fft import fft_inplace, merge_pair
from ._numba_simd import (LANE_BYTES, alternate, at, detach, lane_count, peek, poke,
                          prefetch_rows, transpose_gather, transpose_lanes, transpose_scatter,
                          vload, vload_at, vstore, vstore_at)

__all__ = ["forward_rows", "inverse_rows", "LANE_BYTES"]

_JIT = dict(fastmath={"contract"}, error_model="numpy", boundscheck=False, nogil=True)
_ENTRY = dict(_JIT, cache=True)


@njit(**_JIT)
def aligned_tiles(addr, s0, n, isz, V):
    """Where the V-column tiles of rows at ``addr`` (``s0`` bytes apart, ``n`` columns of
    ``isz`` bytes, unit stride) start on 64-byte boundaries: returns (d, k0, k1), tiles at
    columns k0, k0 + V, ... < k1.  d = 0: tiles at every multiple of V (aligned, or alignment
    cannot be had because the rows are not a multiple of 64 bytes apart or are short);
    otherwise columns [0, d) and [k1, n) are left to two unaligned tiles at 0 and n - V."""
    off = addr % 64
    if off == 0 or s0 % 64 != 0 or off % isz != 0 or n < 2 * V:
        return 0, 0, n
    d = (64 - off) // isz
    return d, d, d + n - V


@njit(**_JIT)
def load_rows(addr, nv, n, s0, s1, a):
    """a[k*V + v] = row v, column k, for the ``nv <= V`` rows at byte ``addr`` (row stride
    ``s0``, column stride ``s1`` bytes); lanes beyond the last row repeat it (finite, and
    never stored)."""
    V = lane_count(a)
    isz = a.itemsize
    if s1 == isz and n >= V:
        d, k0, k1 = aligned_tiles(addr, s0, n, isz, V)
        for k in range(k0, k1, V):
            transpose_lanes(addr, k * isz, s0, nv, a, k * V * isz, V * isz, V)
        if d != 0:                  # the columns before and after the aligned tiles
            for k in (0, n - V):
                transpose_lanes(addr, k * isz, s0, nv, a, k * V * isz, V * isz, V)
    elif s0 == isz and nv == V:     # rows side by side: lane vectors already
        for k in range(n):
            vstore(a, k * V, vload_at(addr + k * s1, a))
    else:
        for k in range(n):
            for v in range(V):
                a[k * V + v] = peek(addr + min(v, nv - 1) * s0 + k * s1, a)


@njit(**_JIT)
def split_inplace(z, n, tw, rev):
    """Z (bit-reversed, in z) -> the half spectrum Y of the real rows (unscaled), in place:
    Y_k = E_k + W_n^k O_k, 2E_k = Z_k + conj(Z_{m-k}), 2i O_k = Z_k - conj(Z_{m-k}).
    Slot bitrev(j) of z, which held Z_j, receives
    (Re Y_j, Im Y_j) for 0 < j < m, and slot 0 (Y_0, Y_m).  Both slots of a pair (k, m - k)
    are read before they are written, in slot order (even p = bitrev(k) ascending: one run
    forwards, one backwards), so nothing jumps."""
    V = lane_count(z)
    S = 2 * V
    m = n // 2
    zr = vload(z, 0)
    zi = vload(z, V)
    vstore(z, 0, zr + zi)                   # Y_0 = Re Z_0 + Im Z_0
    vstore(z, V, zr - zi)                   # Y_m = Re Z_0 - Im Z_0
    if m < 2:
        return
    p = S * at(rev, m // 2)                  # Y_{m/2} = conj(Z_{m/2})
    vstore(z, p + V, -vload(z, p + V))
    for pp in range(2, m, 2):                # k = rev[pp] runs over 1 .. m/2 - 1
        k = at(rev, pp)
        pa = S * pp
        pb = S * at(rev, m - k)
        ar = vload(z, pa)
        ai = vload(z, pa + V)
        br = vload(z, pb)
        bi = vload(z, pb + V)
        wr = 0.5 * at(tw, 2 * k)            # the 1/2 of E and O folded into W
        wi = 0.5 * at(tw, 2 * k + 1)
        er = ar + br            # 2E = A + conj(B)
        ei = ai - bi
        orr = ai + bi           # 2O = -i (A - conj(B))
        oi = br - ar
        tr = orr * wr - oi * wi  # T = W^k O
        ti = orr * wi + oi * wr
        vstore(z, pa, 0.5 * er + tr)            # Y_k = E + T
        vstore(z, pa + V, 0.5 * ei + ti)
        vstore(z, pb, 0.5 * er - tr)            # Y_{m-k} = conj(E - T)
        vstore(z, pb + V, ti - 0.5 * ei)


@njit(**_JIT)
def spectrum_source(c, n, rev, V):
    """Element offset in the scratch of ``split_inplace`` of halfcomplex column c."""
    m = n // 2
    if c == 0:
        return 0
    if c == m:
        return V
    if c < m:
        return 2 * V * at(rev, c)
    return 2 * V * at(rev, n - c) + V


@njit(**_JIT)
def gather_table(perm, n, rev, isz, V, forward):
    """perm[c] = byte offset in the scratch of the lane vector of output column c: the
    spectrum left by ``split_inplace`` (``forward``) or the inverse's bit-reversed FFT
    output (column 2p + e: slot bitrev(p), part e)."""
    for c in range(n):
        if forward:
            perm[c] = spectrum_source(c, n, rev, V) * isz
        else:
            perm[c] = (2 * V * at(rev, c // 2) + V * (c % 2)) * isz


@njit(**_JIT)
def store_gathered(addr, nv, n, s0, s1, z, perm, scale, alt):
    """Rows at ``addr`` <- column c = scale * (-1)^(alt c) * the lane vector at byte perm[c]
    of z: V columns at a time, gathered and transposed into the rows.  The tile four ahead
    is prefetched (with n V elements of 2-4 MiB the vectors come from L3, in bit-reversed
    order: 4.5 against 3.6 ns per element at n = 65536, float64)."""
    V = lane_count(z)
    isz = z.itemsize
    pe = alternate(z, scale, -scale if alt else scale)     # a tile from an even column
    po = alternate(z, -scale if alt else scale, scale)     # from an odd column
    if s1 == isz and n >= V:
        d, k0, k1 = aligned_tiles(addr, s0, n, isz, V)
        if d != 0:                  # first: the aligned tiles overwrite their overlap
            for k in (0, n - V):
                transpose_gather(z, perm[k:k + V], addr, k * isz, s0, nv,
                                 pe if k % 2 == 0 else po)
        for k in range(k0, k1, V):
            if k + 4 * V < k1:
                prefetch_rows(z, perm[k + 4 * V:k + 5 * V])
            transpose_gather(z, perm[k:k + V], addr, k * isz, s0, nv, pe if k % 2 == 0 else po)
    else:
        for k in range(n):
            f = -scale if alt and k % 2 == 1 else scale
            src = perm[k] // isz
            if s0 == isz and nv == V:
                vstore_at(addr + k * s1, f * vload(z, src))
            else:
                for v in range(nv):
                    poke(addr + v * s0 + k * s1, f * z[src + v])


@njit(**_JIT)
def spectrum_target(c, n, V):
    """Element offset in the scratch of ``merge_inplace`` of halfcomplex column c: slot j
    holds (Re Y_j, Im Y_j), slot 0 (Y_0, Y_m)."""
    m = n // 2
    if c == 0:
        return 0
    if c == m:
        return V
    if c < m:
        return 2 * V * c
    return 2 * V * (n - c) + V


@njit(**_JIT)
def scatter_table(perm, n, isz, V):
    """perm[c] = byte offset in the scratch of ``merge_inplace`` of column c's lane vector."""
    for c in range(n):
        perm[c] = spectrum_target(c, n, V) * isz


@njit(**_JIT)
def load_scattered(addr, nv, n, s0, s1, a, perm):
    """The rows at ``addr`` -> a, column c to the lane vector at byte perm[c] (lanes beyond
    the last row repeat it)."""
    V = lane_count(a)
    isz = a.itemsize
    if s1 == isz and n >= V:
        d, k0, k1 = aligned_tiles(addr, s0, n, isz, V)
        for k in range(k0, k1, V):
            transpose_scatter(addr, k * isz, s0, nv, a, perm[k:k + V])
        if d != 0:
            for k in (0, n - V):
                transpose_scatter(addr, k * isz, s0, nv, a, perm[k:k + V])
    else:
        for k in range(n):
            dst = perm[k] // isz
            if s0 == isz and nv == V:
                vstore(a, dst, vload_at(addr + k * s1, a))
            else:
                for v in range(V):
                    a[dst + v] = peek(addr + min(v, nv - 1) * s0 + k * s1, a)


@njit(**_JIT)
def merge_inplace(a, n, tw):
    """The inverse of the split, in place on the layout of ``load_scattered`` (slot j:
    (Re Y_j, Im Y_j), slot 0: (Y_0, Y_m)): slot k receives conj(2Z_k) (natural order)."""
    V = lane_count(a)
    S = 2 * V
    m = n // 2
    y0 = vload(a, 0)
    ym = vload(a, V)
    vstore(a, 0, y0 + ym)
    vstore(a, V, ym - y0)
    if m < 2:
        return
    h = m // 2
    vstore(a, h * S, 2.0 * vload(a, h * S))
    vstore(a, h * S + V, 2.0 * vload(a, h * S + V))
    for k in range(1, h):
        pa = k * S
        pb = (m - k) * S
        zr, zi, yr, yi = merge_pair(vload(a, pa), vload(a, pa + V), vload(a, pb),
                                    vload(a, pb + V), tw, k)
        vstore(a, pa, zr)
        vstore(a, pa + V, zi)
        vstore(a, pb, yr)
        vstore(a, pb + V, yi)


@njit(**_JIT)
def check_scratch(n, a, b):
    """The scratch must hold n lane vectors each (the kernels' V, whatever the caller
    thought): refuse rather than write past its end."""
    if n < 2 or n & (n - 1) != 0:
        raise ValueError("the numba kernels take power-of-two rows of at least 2 elements")
    if a.size < n * lane_count(a) or b.size < n * lane_count(b):
        raise ValueError("scratch too small for the kernels' lane count (LANE_BYTES = 64)")


@njit(**_ENTRY)
def forward_rows(addr, rows, n, s0, s1, tw, rev, scale, a, b):
    """The ``rows`` rows of ``n`` elements at byte ``addr`` (strides ``s0``, ``s1`` bytes) ->
    their scaled halfcomplex spectra, in place, V rows at a time in the scratch ``a`` (at
    least n V elements; ``b``, the same size, is not used)."""
    check_scratch(n, a, b)
    a, tw, rev = detach(a), detach(tw), detach(rev)
    V = lane_count(a)
    perm = detach(b).view(np.int64)[:n]
    gather_table(perm, n, rev, a.itemsize, V, True)
    for r0 in range(0, rows, V):
        nv = min(V, rows - r0)
        row = addr + r0 * s0
        load_rows(row, nv, n, s0, s1, a)
        fft_inplace(a, n // 2, tw, n)
        split_inplace(a, n, tw, rev)
        store_gathered(row, nv, n, s0, s1, a, perm, scale, False)


@njit(**_ENTRY)
def inverse_rows(addr, rows, n, s0, s1, tw, rev, scale, a, b):
    """The rows at ``addr``: halfcomplex spectra -> scale * n * inverse transform, in place."""
    check_scratch(n, a, b)
    a, tw, rev = detach(a), detach(tw), detach(rev)
    V = lane_count(a)
    tables = detach(b).view(np.int64)
    perm = tables[:n]
    gather_table(perm, n, rev, a.itemsize, V, False)
    into = tables[n:2 * n]
    scatter_table(into, n, a.itemsize, V)
    for r0 in range(0, rows, V):
        nv = min(V, rows - r0)
        row = addr + r0 * s0
        load_scattered(row, nv, n, s0, s1, a, into)
        merge_inplace(a, n, tw)
        fft_inplace(a, n // 2, tw, n)
        store_gathered(row, nv, n, s0, s1, a, perm, scale, True)
