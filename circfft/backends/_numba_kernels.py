"""Numba kernels of the CPU backend (imported only when the numba backend is used).

See :mod:`circfft.backends.numba_backend` for the design.  These details matter for speed:

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
* Every loop that LLVM should vectorise stores to one contiguous region per iteration: the
  split writing its four lane vectors k, n-k, m-k, m+k straight into halfcomplex order was not
  vectorised (and made the forward transform no faster), so it writes one group per k and the
  store puts the groups in order.
* Rows <-> lane vectors go through ``transpose_tile``, an intrinsic that transposes 8x8
  float32 (4x4 float64) tiles in registers with generic LLVM shuffles; scalar transposes cost
  0.4-1.0 ns per element, more than the whole FFT.  The tiles walk 8 rows at a time along the
  whole row (one quarter of the columns at a time for the groups): walking 16 rows, or four
  quarters, together thrashes L1 when rows are a multiple of 4 KiB apart.  Fusing the
  transpose-in with the first radix-4 stage (four quarters of the rows at once) was slower.
* When log2 m is odd the last, twiddle-free, radix-2 stage is not a pass of its own: the split
  (forward) and the unscramble (inverse) apply it while reading.
"""
from numba import njit, prange
from numba import types
from numba import uint64 as u64
from numba.extending import intrinsic
from llvmlite import ir

_JIT = dict(fastmath={"contract"}, error_model="numpy", boundscheck=False)
_INLINE = dict(_JIT, inline="always")


#: shufflevector masks of an 8x8 float32 and a 4x4 float64 register transpose (the classic
#: unpack / shuffle / 128-bit permute sequence, written as generic LLVM shuffles so that any
#: target gets correct code and AVX targets get the three-stage in-register transpose).
_T8 = (((0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)),
       ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),
       ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)))
_T4 = (((0, 4, 2, 6), (1, 5, 3, 7)),
       ((0, 1, 4, 5), (2, 3, 6, 7)))


@intrinsic
def transpose_tile(typingctx, src, s_first, s_off, s_step, dst, d_first, d_off, d_step):
    """Transpose one B x B tile (B = 32 bytes of elements: 8 float32 or 4 float64):
    element j of the i-th source row (B contiguous elements at byte ``s_off + i*s_step`` of
    ``src``'s data, ``s_first`` for i = 0) goes to element i of the j-th destination row
    (byte ``d_off + j*d_step``, ``d_first`` for j = 0).  Offsets and steps are in bytes and
    may be negative; rows need no alignment."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)):
        return None
    sig = types.void(src, types.intp, types.intp, types.intp,
                     dst, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        sa, sf, so, ss, da, df, do, ds = args
        elt = context.get_data_type(src.dtype)
        size = context.get_abi_sizeof(elt)
        B = 32 // size
        vty = ir.VectorType(elt, B)
        i8p = ir.IntType(8).as_pointer()
        sbase = builder.bitcast(context.make_array(src)(context, builder, sa).data, i8p)
        dbase = builder.bitcast(context.make_array(dst)(context, builder, da).data, i8p)

        def row_ptr(base, first, off, step, i):
            o = first if i == 0 else builder.add(off, builder.mul(step, ir.Constant(off.type, i)))
            return builder.bitcast(builder.gep(base, [o]), vty.as_pointer())

        r = [builder.load(row_ptr(sbase, sf, so, ss, i), align=size) for i in range(B)]

        def sh(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), B),
                                                            list(mask)))
        if B == 8:
            (lo, hi), (s44, see), (p20, p31) = _T8
            t = []
            for i in (0, 2, 4, 6):
                t += [sh(r[i], r[i + 1], lo), sh(r[i], r[i + 1], hi)]
            s = []
            for i in (0, 1, 4, 5):
                s += [sh(t[i], t[i + 2], s44), sh(t[i], t[i + 2], see)]
            c = [sh(s[i], s[i + 4], p20) for i in range(4)]
            c += [sh(s[i], s[i + 4], p31) for i in range(4)]
        else:
            (lo, hi), (q20, q31) = _T4
            t = [sh(r[0], r[1], lo), sh(r[0], r[1], hi), sh(r[2], r[3], lo), sh(r[2], r[3], hi)]
            c = [sh(t[0], t[2], q20), sh(t[1], t[3], q20),
                 sh(t[0], t[2], q31), sh(t[1], t[3], q31)]
        for j in range(B):
            builder.store(c[j], row_ptr(dbase, df, do, ds, j), align=size)
        return context.get_dummy_value()

    return sig, codegen


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
    twiddle W_m^e, e = t with its low s bits cleared (the same butterfly as the in-place
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
def log2(m):
    L = 0
    while (1 << L) < m:
        L += 1
    return L


@njit(**_INLINE)
def last_stage_pending(m):
    """True when ``fft_dif`` leaves its last (radix-2, twiddle-free) stage to its consumer:
    log2 m odd and at least 3.  ``split_spectrum`` and ``unscramble`` then apply it while
    reading, which saves a whole pass over the scratch."""
    L = log2(m)
    return L >= 3 and L % 2 == 1


@njit(**_INLINE)
def fft_dif(a, b, m, tw, V, paired):
    """Complex FFT of length m on V lanes, input in ``a`` (natural order, or the ``paired``
    layout of ``merge_spectrum``).  Returns True when the result ends in ``a``, False when in
    ``b``: Z in bit-reversed order, or (``last_stage_pending(m)``) the input of the last
    radix-2 stage: then slot ``i`` of Z's bit-reversed order is the sum (``i`` even) or the
    difference (``i`` odd) of slots ``i // 2`` and ``i // 2 + m/2``."""
    L = log2(m)
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
    if s < L and not last_stage_pending(m):
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
    """a[k*V + v] = x[r0+v, k]: rows into lane vectors.  Full blocks of rows with unit column
    stride go through ``transpose_tile``, 8 (float64: 4) rows at a time, each read
    sequentially; otherwise a scalar copy tiled so that the scratch tile being filled stays in
    L1 (rows a multiple of 4 KiB apart share L1 sets), with the lanes beyond the last row
    zeroed."""
    n = x.shape[1]
    isz = x.itemsize
    B = V // 2
    if V > 1 and nv == V and n >= B and x.strides[1] == isz:
        s0 = x.strides[0]
        for h in range(2):
            for k0 in range(0, n, B):
                so = (r0 + h * B) * s0 + k0 * isz
                do = (k0 * V + h * B) * isz
                transpose_tile(x, so, so, s0, a, do, do, V * isz)
        return
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * isz))
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
def store_rows(x, r0, nv, a, V):
    """x[r0+v, k] = a[k*V + v]: the transpose of ``load_rows`` (the inverse's output)."""
    n = x.shape[1]
    isz = x.itemsize
    B = V // 2
    if V > 1 and nv == V and n >= B and x.strides[1] == isz:
        s0 = x.strides[0]
        for h in range(2):
            for k0 in range(0, n, B):
                so = (k0 * V + h * B) * isz
                do = (r0 + h * B) * s0 + k0 * isz
                transpose_tile(a, so, so, V * isz, x, do, do, s0)
        return
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * isz))
    for k0 in range(0, n, tk):
        k1 = min(n, k0 + tk)
        for vv in range(nv):
            r = u64(r0 + vv)
            for kk in range(k0, k1):
                x[r, u64(kk)] = a[u64(kk) * Vu + u64(vv)]


@njit(**_INLINE)
def group_slot(c, n):
    """Lane vector of ``split_spectrum``'s groups that holds halfcomplex column c: group k
    holds Re Y_k, Im Y_k, Re Y_{m-k}, Im Y_{m-k} (columns k, n-k, m-k, m+k); group 0 holds
    columns 0, m, m/2, n - m/2."""
    m = n // 2
    h = m // 2
    if c == 0:
        return 0
    if c == m:
        return 1
    if m >= 2:
        if c == h:
            return 2
        if c == m + h:
            return 3
    if c < h:
        return 4 * c
    if c < m:
        return 4 * (m - c) + 2
    if c < m + h:
        return 4 * (c - m) + 3
    return 4 * (n - c) + 1


@njit(**_INLINE)
def store_groups(x, r0, nv, a, V):
    """x[r0+v, c] = a[group_slot(c)*V + v]: the groups of ``split_spectrum`` into the rows in
    halfcomplex order.  Full blocks with unit column stride and n >= 4B go through
    ``transpose_tile``: in each quarter of the columns consecutive columns are lane vectors 4V
    elements apart (downwards in the second and fourth quarter), except the first column of
    quarters 1-3 (group 0's slots).  Other blocks: a scalar copy through ``group_slot``."""
    n = x.shape[1]
    isz = x.itemsize
    B = V // 2
    m = n // 2
    h = m // 2
    if V > 1 and nv == V and h >= B and x.strides[1] == isz:
        s0 = x.strides[0]
        G = 4 * V * isz                      # bytes between consecutive groups
        Vb = V * isz
        # One quarter of the columns at a time, 8 rows at a time: each row is written
        # sequentially.  Quarter 0: column j = group j, slot 0.  Quarter 1: column h+j = group
        # h-j, slot 2.  Quarter 2: column m+j = group j, slot 3.  Quarter 3: column m+h+j =
        # group h-j, slot 1.  Column j = 0 of quarters 1-3 sits in group 0 (slots 2, 1, 3).
        for hh in range(2):
            lane = hh * B * isz
            d = (r0 + hh * B) * s0
            for j0 in range(0, h, B):
                so = j0 * G + lane
                transpose_tile(a, so, so, G, x, d + j0 * isz, d + j0 * isz, s0)
            for j0 in range(0, h, B):
                so = (h - j0) * G + 2 * Vb + lane
                sf = 2 * Vb + lane if j0 == 0 else so
                dd = d + (h + j0) * isz
                transpose_tile(a, sf, so, -G, x, dd, dd, s0)
            for j0 in range(0, h, B):
                so = j0 * G + 3 * Vb + lane
                sf = Vb + lane if j0 == 0 else so
                dd = d + (m + j0) * isz
                transpose_tile(a, sf, so, G, x, dd, dd, s0)
            for j0 in range(0, h, B):
                so = (h - j0) * G + Vb + lane
                sf = 3 * Vb + lane if j0 == 0 else so
                dd = d + (m + h + j0) * isz
                transpose_tile(a, sf, so, -G, x, dd, dd, s0)
        return
    Vu = u64(V)
    tk = max(1, TILE_BYTES // (V * isz))
    for k0 in range(0, n, tk):
        k1 = min(n, k0 + tk)
        for vv in range(nv):
            r = u64(r0 + vv)
            for kk in range(k0, k1):
                x[r, u64(kk)] = a[u64(group_slot(kk, n)) * Vu + u64(vv)]


@njit(**_INLINE)
def unscramble(z, o, m, rev, scale, V):
    """o[p] = scale * conj(Z[rev[p]]) for complex slots p < m: the inverse's output order,
    applying the pending last radix-2 stage of ``fft_dif`` on the way when there is one
    (rev[p + m/2] = rev[p] + 1 for p < m/2: both come from one butterfly).  One contiguous
    store per slot keeps the lane loop vectorised; the slots are read in order and written
    in bit-reversed order (0.69 against 0.90 ns per element the other way round at
    n = 65536, where the scratch outgrows L2)."""
    Vu = u64(V)
    if last_stage_pending(m):
        h = m // 2
        hoff = u64(2 * h) * Vu
        for tt in range(h):                     # source slots in order (see split_pending)
            pp = rev[2 * tt]                    # rev[pp] = 2t
            src = u64(2 * tt) * Vu
            d0 = u64(2) * u64(pp) * Vu
            d1 = d0 + hoff
            for vv in range(V):
                v = u64(vv)
                ar = z[src + v]
                ai = z[src + Vu + v]
                br = z[src + hoff + v]
                bi = z[src + hoff + Vu + v]
                o[d0 + v] = scale * (ar + br)
                o[d0 + Vu + v] = -scale * (ai + bi)
                o[d1 + v] = scale * (ar - br)
                o[d1 + Vu + v] = -scale * (ai - bi)
        return
    for ss in range(m):
        src = u64(2) * u64(ss) * Vu
        dst = u64(2) * u64(rev[ss]) * Vu
        for vv in range(V):
            v = u64(vv)
            o[dst + v] = scale * z[src + v]
            o[dst + Vu + v] = -scale * z[src + Vu + v]


@njit(**_INLINE)
def split_group(ar, ai, br, bi, wr, wi, half, o, g, Vu):
    """One lane of group k of the split: Z_k = A, Z_{m-k} = B, W^k = w; writes Re Y_k,
    Im Y_k, Re Y_{m-k}, Im Y_{m-k} at o[g], o[g + V], o[g + 2V], o[g + 3V]."""
    er = ar + br            # 2E = A + conj(B)
    ei = ai - bi
    orr = ai + bi           # 2O = -i (A - conj(B))
    oi = br - ar
    tr = orr * wr - oi * wi  # 2T = W^k 2O
    ti = orr * wi + oi * wr
    o[g] = half * (er + tr)                 # Y_k = E + T
    o[g + Vu] = half * (ei + ti)
    o[g + u64(2) * Vu] = half * (er - tr)   # Y_{m-k} = conj(E - T)
    o[g + u64(3) * Vu] = half * (ti - ei)


@njit(**_INLINE)
def split_pending(z, o, n, tw, rev, scale, V):
    """``split_spectrum`` when ``fft_dif`` left its last radix-2 stage pending: Z_k for
    0 < k < m/2 sits at an even slot (z[t] + z[t + m/2], t = rev[k] / 2) and Z_{m-k} at an odd
    one (a difference).  Z_0 and Z_{m/2} are the sum and difference of slots 0 and m/2."""
    m = n // 2
    Vu = u64(V)
    hoff = u64(m) * Vu                  # complex slot m/2
    half = 0.5 * scale
    for vv in range(V):
        v = u64(vv)
        ar = z[v]
        ai = z[Vu + v]
        br = z[hoff + v]
        bi = z[hoff + Vu + v]
        zr = ar + br                    # Z_0
        zi = ai + bi
        o[v] = scale * (zr + zi)                    # Y_0
        o[Vu + v] = scale * (zr - zi)               # Y_m
        o[u64(2) * Vu + v] = scale * (ar - br)      # Y_{m/2} = conj(Z_{m/2})
        o[u64(3) * Vu + v] = -scale * (ai - bi)
    # k in the order of its slot (even p = rev[k] ascending): the reads of Z_k run forwards
    # and those of Z_{m-k} (rev[m-k] = p XOR, R the top bit of p) backwards, and only
    # the group stores jump.  Walking k in order, both reads jumped to bit-reversed places:
    # 1.25 against 0.9 ns per element once the scratch outgrows L2 (n >= 16384; a
    # cache-blocked walk in 8x8 tiles, through an L1 tile buffer or not, was no faster).
    for pp in range(2, m, 2):
        kk = rev[pp]
        k = u64(kk)
        pa = u64(pp) * Vu
        pb = (u64(rev[m - kk]) - u64(1)) * Vu
        g = u64(4) * k * Vu
        wr = tw[u64(2) * k]
        wi = tw[u64(2) * k + u64(1)]
        for vv in range(V):
            v = u64(vv)
            split_group(z[pa + v] + z[pa + hoff + v], z[pa + Vu + v] + z[pa + hoff + Vu + v],
                        z[pb + v] - z[pb + hoff + v], z[pb + Vu + v] - z[pb + hoff + Vu + v],
                        wr, wi, half, o, g + v, Vu)


@njit(**_INLINE)
def split_spectrum(z, o, n, tw, rev, scale, V):
    """Z (bit-reversed, in z) -> scale * half spectrum Y of the real rows, in groups (in o).

    Group k (0 <= k < m/2) holds the lane vectors Re Y_k, Im Y_k, Re Y_{m-k}, Im Y_{m-k}
    (group 0: Y_0, Y_m, Re Y_{m/2}, Im Y_{m/2}); ``store_groups`` transposes them into
    halfcomplex order.  Writing one contiguous group per iteration keeps the lane loop
    vectorisable (four separate stores per iteration, k, n-k, m-k and m+k, are not).
    """
    m = n // 2
    if last_stage_pending(m):
        split_pending(z, o, n, tw, rev, scale, V)
        return
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
    for pp in range(2, m, 2):                   # slot order, as in split_pending
        kk = rev[pp]
        k = u64(kk)
        pa = u64(2) * u64(pp) * Vu
        pb = u64(2) * u64(rev[m - kk]) * Vu
        g = u64(4) * k * Vu
        wr = tw[u64(2) * k]
        wi = tw[u64(2) * k + u64(1)]
        for vv in range(V):
            v = u64(vv)
            split_group(z[pa + v], z[pa + Vu + v], z[pb + v], z[pb + Vu + v],
                        wr, wi, half, o, g + v, Vu)


@njit(**_INLINE)
def merge_spectrum(y, a, n, tw, V):
    """Y in halfcomplex order (in y, as written by ``split_spectrum``) -> conj(2Z) in the
    paired layout (in a): slot 2k holds conj(2Z_k), slot 2k+1 conj(2Z_{m-k}); slots 0, 1:
    Z_0, Z_{m/2}."""
    m = n // 2
    Vu = u64(V)
    nu = u64(n)
    mu = u64(m)
    for vv in range(V):
        v = u64(vv)
        y0 = y[v]
        ym = y[mu * Vu + v]
        a[v] = y0 + ym
        a[Vu + v] = ym - y0
    if m >= 2:
        q1 = u64(m // 2) * Vu
        q2 = u64(n - m // 2) * Vu
        for vv in range(V):
            v = u64(vv)
            a[u64(2) * Vu + v] = 2.0 * y[q1 + v]
            a[u64(3) * Vu + v] = 2.0 * y[q2 + v]    # conj(2 conj(Y_{m/2}))
    for kk in range(1, (m + 1) // 2):
        k = u64(kk)
        g = u64(4) * k * Vu
        g0 = k * Vu
        g1 = (nu - k) * Vu
        g2 = (mu - k) * Vu
        g3 = (mu + k) * Vu
        wr = tw[u64(2) * k]
        wi = -tw[u64(2) * k + u64(1)]   # conj(W^k)
        for vv in range(V):
            v = u64(vv)
            ar = y[g0 + v]
            ai = y[g1 + v]
            br = y[g2 + v]
            bi = y[g3 + v]
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
def forward_block(x, r0, nv, a, b, tw, rev, scale, V):
    """Rows r0 .. r0+nv-1 of x (nv <= V) -> their scaled halfcomplex spectra, in place."""
    n = x.shape[1]
    load_rows(x, r0, nv, a, V)
    if fft_dif(a, b, n // 2, tw, V, False):
        split_spectrum(a, b, n, tw, rev, scale, V)
        store_groups(x, r0, nv, b, V)
    else:
        split_spectrum(b, a, n, tw, rev, scale, V)
        store_groups(x, r0, nv, a, V)


@njit(**_INLINE)
def inverse_block(x, r0, nv, a, b, tw, rev, scale, V):
    """Rows r0 .. r0+nv-1 of x: halfcomplex spectra -> scale * n * inverse transform, in place."""
    n = x.shape[1]
    load_rows(x, r0, nv, a, V)
    merge_spectrum(a, b, n, tw, V)
    if fft_dif(b, a, n // 2, tw, V, True):
        unscramble(b, a, n // 2, rev, scale, V)
        store_rows(x, r0, nv, a, V)
    else:
        unscramble(a, b, n // 2, rev, scale, V)
        store_rows(x, r0, nv, b, V)


@njit(parallel=True, cache=True, **_JIT)
def rows_parallel(x, tw, rev, scale, forward, nchunks, sa, sb, lanes):
    """Transform every row of x in place, blocks of V rows shared among ``nchunks`` threads;
    thread c works in the scratch rows ``sa[c]`` and ``sb[c]`` (n V elements each)."""
    V = len(lanes)
    rows, n = x.shape
    nblocks = (rows + V - 1) // V
    nchunks = max(1, min(nchunks, nblocks, sa.shape[0]))
    for c in prange(nchunks):
        a = sa[c]
        b = sb[c]
        for blk in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            r0 = blk * V
            if forward:
                forward_block(x, r0, min(V, rows - r0), a, b, tw, rev, scale, V)
            else:
                inverse_block(x, r0, min(V, rows - r0), a, b, tw, rev, scale, V)


@njit(nogil=True, cache=True, **_JIT)
def rows_serial(x, tw, rev, scale, forward, a, b, lanes):
    """Transform every row of x in place on the calling thread (releases the GIL), in the
    scratch ``a`` and ``b`` (n V elements each)."""
    V = len(lanes)
    rows, n = x.shape
    for r0 in range(0, rows, V):
        if forward:
            forward_block(x, r0, min(V, rows - r0), a, b, tw, rev, scale, V)
        else:
            inverse_block(x, r0, min(V, rows - r0), a, b, tw, rev, scale, V)
