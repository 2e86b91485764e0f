"""Numba kernels of the CPU backend (imported only when the numba backend is used).

See :mod:`circfft.backends.numba_backend` for the design.  Three details matter for speed:

* The complex FFT is the constant-geometry (Pease) form of the radix-2 decimation-in-frequency
  FFT, radix-4 stages fused: every stage reads the four quarters of one buffer and writes each
  butterfly's four results next to each other in the other buffer.  Stores at fixed distances
  into a buffer that cannot alias the one being read let LLVM vectorise the lane loop with no
  runtime alias checks (an in-place stage, whose four regions lie a run-time distance apart,
  ran 4-8x slower).  After all stages buffer slot ``i`` holds ``Z[bitrev(i)]``, exactly as
  for the in-place algorithm of the numpy reference.
* The inverse uses the same engine: ``IDFT(Z) = conj(DFT(conj(Z)))``.

* The lane count ``V`` reaches the drivers as the length of a tuple argument
  (``lanes = (0,) * V``).  A tuple's length is part of its numba type, so each lane count is
  compiled once with ``V`` a compile-time constant, cached on disk, and dispatched at the cost
  of an ordinary call (``numba.literally`` would re-type the huge function on every call).
* Every index in a hot loop is ``uint64``: numba wraps negative *signed* indices around, and
  that per-access select stops LLVM from vectorising the lane loops.
"""
import numpy as np
from numba import njit, prange
from numba import uint64 as u64

_JIT = dict(fastmath={"contract"}, error_model="numpy", boundscheck=False)
_INLINE = dict(_JIT, inline="always")


@njit(**_INLINE)
def slot(p, m, paired):
    """Where complex slot p lives: itself, or (``paired``) the layout written by
    ``merge_spectrum``: 0 -> 0, m/2 -> 1, k -> 2k and m-k -> 2k+1 for 0 < k < m/2."""
    if not paired:
        return p
    if p == 0:
        return 0
    h = m // 2
    if p < h:
        return 2 * p
    if p == h:
        return 1
    return 2 * (m - p) + 1


@njit(**_INLINE)
def cg_radix4(src, dst, m, s, tw, V, paired):
    """Radix-2 DIF stages s and s+1 fused, constant geometry, on V lanes.

    Butterfly t (0 <= t < m/4) reads src slots t + k*m/4 and writes dst slots 4t + k with
    twiddle W_m^e, e = t with its low s bits cleared (DESIGN: same butterfly as the in-place
    radix-4 stage).  Slot p occupies floats [2pV, 2pV + 2V): V real parts, then V imaginary.
    """
    Vu = u64(V)
    mask = ~u64((1 << s) - 1)
    q = m // 4
    for tt in range(m // 4):
        t = u64(tt)
        k1 = u64(4) * (t & mask)        # float index of W_n^(2e) = W_m^e
        w1r = tw[k1]
        w1i = tw[k1 + u64(1)]
        w2r = tw[u64(2) * k1]
        w2i = tw[u64(2) * k1 + u64(1)]
        w3r = tw[u64(3) * k1]
        w3i = tw[u64(3) * k1 + u64(1)]
        p0 = u64(2 * slot(tt, m, paired)) * Vu
        p1 = u64(2 * slot(tt + q, m, paired)) * Vu
        p2 = u64(2 * slot(tt + 2 * q, m, paired)) * Vu
        p3 = u64(2 * slot(tt + 3 * q, m, paired)) * Vu
        o = u64(8) * t * Vu
        for vv in range(V):
            v = u64(vv)
            a0r = src[p0 + v]
            a0i = src[p0 + Vu + v]
            a1r = src[p1 + v]
            a1i = src[p1 + Vu + v]
            a2r = src[p2 + v]
            a2i = src[p2 + Vu + v]
            a3r = src[p3 + v]
            a3i = src[p3 + Vu + v]
            sr = a0r + a2r
            si = a0i + a2i
            dr = a0r - a2r
            di = a0i - a2i
            tr = a1r + a3r
            ti = a1i + a3i
            er = a1r - a3r
            ei = a1i - a3i
            dst[o + v] = sr + tr
            dst[o + Vu + v] = si + ti
            ur = sr - tr                # (a0 - a1 + a2 - a3) W^2e
            ui = si - ti
            dst[o + u64(2) * Vu + v] = ur * w2r - ui * w2i
            dst[o + u64(3) * Vu + v] = ur * w2i + ui * w2r
            ur = dr + ei                # ((a0 - a2) - i (a1 - a3)) W^e
            ui = di - er
            dst[o + u64(4) * Vu + v] = ur * w1r - ui * w1i
            dst[o + u64(5) * Vu + v] = ur * w1i + ui * w1r
            ur = dr - ei                # ((a0 - a2) + i (a1 - a3)) W^3e
            ui = di + er
            dst[o + u64(6) * Vu + v] = ur * w3r - ui * w3i
            dst[o + u64(7) * Vu + v] = ur * w3i + ui * w3r


@njit(**_INLINE)
def cg_radix2(src, dst, m, V, paired):
    """Last radix-2 DIF stage (when log2 m is odd): its twiddles are all 1."""
    Vu = u64(V)
    for tt in range(m // 2):
        t = u64(tt)
        p0 = u64(2 * slot(tt, m, paired)) * Vu
        p1 = u64(2 * slot(tt + m // 2, m, paired)) * Vu
        o = u64(4) * t * Vu
        for vv in range(V):
            v = u64(vv)
            ar = src[p0 + v]
            ai = src[p0 + Vu + v]
            br = src[p1 + v]
            bi = src[p1 + Vu + v]
            dst[o + v] = ar + br
            dst[o + Vu + v] = ai + bi
            dst[o + u64(2) * Vu + v] = ar - br
            dst[o + u64(3) * Vu + v] = ai - bi


@njit(**_INLINE)
def fft_dif(a, b, m, tw, V, paired):
    """Complex FFT of length m on V lanes, input in ``a`` (natural order, or the ``paired``
    layout of ``merge_spectrum``).  Returns True when Z (in bit-reversed order) ends in ``a``,
    False when in ``b``."""
    L = 0
    while (1 << L) < m:
        L += 1
    # Explicit a->b and b->a call sites: swapping two variables would make both of them
    # phi nodes of (a, b), and LLVM could no longer prove that source and destination differ.
    # The first stage reads the input layout; later ones read their predecessor's output.
    if L == 0:
        return True
    if L == 1:
        cg_radix2(a, b, m, V, paired)
        return False
    cg_radix4(a, b, m, 0, tw, V, paired)
    in_a = False
    s = 2
    while s + 1 < L:
        if in_a:
            cg_radix4(a, b, m, s, tw, V, False)
        else:
            cg_radix4(b, a, m, s, tw, V, False)
        in_a = not in_a
        s += 2
    if s < L:
        if in_a:
            cg_radix2(a, b, m, V, False)
        else:
            cg_radix2(b, a, m, V, False)
        in_a = not in_a
    return in_a


#: Columns per tile of the row <-> scratch transposes (a tile of V rows stays in L1).
TILE_BYTES = 8192


@njit(**_INLINE)
def load_rows(x, r0, nv, a, V):
    """a[k*V + v] = x[r0+v, k]: tiled so that each row is read sequentially and the scratch
    tile being filled stays in L1 (rows a multiple of 4 KiB apart share L1 sets)."""
    n = x.shape[1]
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * x.itemsize))
    for k0 in range(0, n, tk):
        k1 = min(n, k0 + tk)
        for vv in range(nv):
            r = u64(r0 + vv)
            for kk in range(k0, k1):
                a[u64(kk) * Vu + u64(vv)] = x[r, u64(kk)]
        for vv in range(nv, V):         # lanes beyond the last row: keep them finite
            for kk in range(k0, k1):
                a[u64(kk) * Vu + u64(vv)] = 0.0


@njit(**_INLINE)
def store_rows(x, r0, nv, a, perm, V):
    """x[r0+v, k] = a[perm[k]*V + v], tiled like ``load_rows``: a transpose that also puts
    the groups of ``split_spectrum`` into halfcomplex order."""
    n = x.shape[1]
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * x.itemsize))
    for k0 in range(0, n, tk):
        k1 = min(n, k0 + tk)
        for vv in range(nv):
            r = u64(r0 + vv)
            for kk in range(k0, k1):
                x[r, u64(kk)] = a[u64(perm[kk]) * Vu + u64(vv)]


@njit(**_INLINE)
def load_rows_permuted(x, r0, nv, a, perm, V):
    """a[perm[k]*V + v] = x[r0+v, k]: the transpose of ``store_rows``."""
    n = x.shape[1]
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * x.itemsize))
    for k0 in range(0, n, tk):
        k1 = min(n, k0 + tk)
        for vv in range(nv):
            r = u64(r0 + vv)
            for kk in range(k0, k1):
                a[u64(perm[kk]) * Vu + u64(vv)] = x[r, u64(kk)]
        for vv in range(nv, V):
            for kk in range(k0, k1):
                a[u64(perm[kk]) * Vu + u64(vv)] = 0.0


@njit(**_INLINE)
def store_rows_plain(x, r0, nv, a, V):
    """x[r0+v, k] = a[k*V + v], tiled like ``load_rows``."""
    n = x.shape[1]
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * x.itemsize))
    for k0 in range(0, n, tk):
        k1 = min(n, k0 + tk)
        for vv in range(nv):
            r = u64(r0 + vv)
            for kk in range(k0, k1):
                x[r, u64(kk)] = a[u64(kk) * Vu + u64(vv)]


@njit(**_INLINE)
def unscramble(z, o, m, rev, scale, V):
    """o[p] = scale * conj(z[rev[p]]) for complex slots p < m: the inverse's output order.
    One contiguous store per slot keeps the lane loop vectorised."""
    Vu = u64(V)
    for pp in range(m):
        src = u64(2) * u64(rev[pp]) * Vu
        dst = u64(2) * u64(pp) * Vu
        for vv in range(V):
            v = u64(vv)
            o[dst + v] = scale * z[src + v]
            o[dst + Vu + v] = -scale * z[src + Vu + v]


@njit(**_INLINE)
def split_spectrum(z, o, n, tw, rev, scale, V):
    """Z (bit-reversed, in z) -> scale * half spectrum Y of the real rows, in groups (in o).

    Group k (0 <= k < m/2) holds the lane vectors Re Y_k, Im Y_k, Re Y_{m-k}, Im Y_{m-k}
    (group 0: Y_0, Y_m, Re Y_{m/2}, Im Y_{m/2}); the store transposes them to halfcomplex
    order.  Writing one contiguous group per iteration keeps the lane loop vectorisable.
    """
    m = n // 2
    Vu = u64(V)
    half = 0.5 * scale
    for vv in range(V):
        v = u64(vv)
        zr = z[v]
        zi = z[Vu + v]
        o[v] = scale * (zr + zi)                # Y_0 = Re Z_0 + Im Z_0
        o[Vu + v] = scale * (zr - zi)           # Y_m = Re Z_0 - Im Z_0
    if m >= 2:                                  # Y_{m/2} = conj(Z_{m/2})
        p = u64(2) * u64(rev[m // 2]) * Vu
        for vv in range(V):
            v = u64(vv)
            o[u64(2) * Vu + v] = scale * z[p + v]
            o[u64(3) * Vu + v] = -scale * z[p + Vu + v]
    for kk in range(1, (m + 1) // 2):
        k = u64(kk)
        pa = u64(2) * u64(rev[kk]) * Vu
        pb = u64(2) * u64(rev[m - kk]) * Vu
        g = u64(4) * k * Vu
        wr = tw[u64(2) * k]
        wi = tw[u64(2) * k + u64(1)]
        for vv in range(V):
            v = u64(vv)
            ar = z[pa + v]
            ai = z[pa + Vu + v]
            br = z[pb + v]
            bi = z[pb + Vu + v]
            er = ar + br            # 2E = A + conj(B)
            ei = ai - bi
            orr = ai + bi           # 2O = -i (A - conj(B))
            oi = br - ar
            tr = orr * wr - oi * wi  # 2T = W^k 2O
            ti = orr * wi + oi * wr
            o[g + v] = half * (er + tr)                 # Y_k = E + T
            o[g + Vu + v] = half * (ei + ti)
            o[g + u64(2) * Vu + v] = half * (er - tr)   # Y_{m-k} = conj(E - T)
            o[g + u64(3) * Vu + v] = half * (ti - ei)


@njit(**_INLINE)
def merge_spectrum(y, a, n, tw, V):
    """Groups of Y (in y, as written by ``split_spectrum``) -> conj(2Z) in the paired layout
    (in a): slot 2k holds conj(2Z_k), slot 2k+1 conj(2Z_{m-k}); slots 0, 1: Z_0, Z_{m/2}."""
    m = n // 2
    Vu = u64(V)
    for vv in range(V):
        v = u64(vv)
        y0 = y[v]
        ym = y[Vu + v]
        a[v] = y0 + ym
        a[Vu + v] = ym - y0
    if m >= 2:
        for vv in range(V):
            v = u64(vv)
            a[u64(2) * Vu + v] = 2.0 * y[u64(2) * Vu + v]
            a[u64(3) * Vu + v] = 2.0 * y[u64(3) * Vu + v]    # conj(2 conj(Y_{m/2}))
    for kk in range(1, (m + 1) // 2):
        k = u64(kk)
        g = u64(4) * k * Vu
        wr = tw[u64(2) * k]
        wi = -tw[u64(2) * k + u64(1)]   # conj(W^k)
        for vv in range(V):
            v = u64(vv)
            ar = y[g + v]
            ai = y[g + Vu + v]
            br = y[g + u64(2) * Vu + v]
            bi = y[g + u64(3) * Vu + v]
            er = ar + br            # 2E = A + conj(B)
            ei = ai - bi
            dr = ar - br            # A - conj(B)
            di = ai + bi
            orr = dr * wr - di * wi  # 2O = (A - conj B) conj(W^k)
            oi = dr * wi + di * wr
            a[g + v] = er - oi                  # conj(Z_k), Z_k = 2E + i 2O
            a[g + Vu + v] = -(ei + orr)
            a[g + u64(2) * Vu + v] = er + oi    # conj(Z_{m-k}), Z_{m-k} = conj(2E) + i conj(2O)
            a[g + u64(3) * Vu + v] = ei - orr


@njit(**_INLINE)
def forward_block(x, r0, nv, a, b, tw, rev, perm, scale, V):
    """Rows r0 .. r0+nv-1 of x (nv <= V) -> their scaled halfcomplex spectra, in place."""
    n = x.shape[1]
    load_rows(x, r0, nv, a, V)
    if fft_dif(a, b, n // 2, tw, V, False):
        split_spectrum(a, b, n, tw, rev, scale, V)
        store_rows(x, r0, nv, b, perm, V)
    else:
        split_spectrum(b, a, n, tw, rev, scale, V)
        store_rows(x, r0, nv, a, perm, V)


@njit(**_INLINE)
def inverse_block(x, r0, nv, a, b, tw, rev, perm, scale, V):
    """Rows r0 .. r0+nv-1 of x: halfcomplex spectra -> scale * n * inverse transform, in place."""
    n = x.shape[1]
    load_rows_permuted(x, r0, nv, a, perm, V)
    merge_spectrum(a, b, n, tw, V)
    if fft_dif(b, a, n // 2, tw, V, True):
        unscramble(b, a, n // 2, rev, scale, V)
        store_rows_plain(x, r0, nv, a, V)
    else:
        unscramble(a, b, n // 2, rev, scale, V)
        store_rows_plain(x, r0, nv, b, V)


@njit(parallel=True, cache=True, **_JIT)
def rows_parallel(x, tw, rev, perm, scale, forward, nchunks, lanes):
    """Transform every row of x in place, blocks of V rows shared among ``nchunks`` threads."""
    V = len(lanes)
    rows, n = x.shape
    nblocks = (rows + V - 1) // V
    nchunks = max(1, min(nchunks, nblocks))
    for c in prange(nchunks):
        a = np.empty(n * V, dtype=x.dtype)
        b = np.empty(n * V, dtype=x.dtype)
        for blk in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            r0 = blk * V
            if forward:
                forward_block(x, r0, min(V, rows - r0), a, b, tw, rev, perm, scale, V)
            else:
                inverse_block(x, r0, min(V, rows - r0), a, b, tw, rev, perm, scale, V)


@njit(nogil=True, cache=True, **_JIT)
def rows_serial(x, tw, rev, perm, scale, forward, lanes):
    """Transform every row of x in place on the calling thread (releases the GIL)."""
    V = len(lanes)
    rows, n = x.shape
    a = np.empty(n * V, dtype=x.dtype)
    b = np.empty(n * V, dtype=x.dtype)
    for r0 in range(0, rows, V):
        if forward:
            forward_block(x, r0, min(V, rows - r0), a, b, tw, rev, perm, scale, V)
        else:
            inverse_block(x, r0, min(V, rows - r0), a, b, tw, rev, perm, scale, V)
