"""The numba kernels' complex FFT: in-place decimation in frequency on lane vectors, cache-blocked.

Data: a buffer of ``m`` complex *slots*; slot ``p`` is ``2V`` elements, ``V`` real parts then
``V`` imaginary parts, one transform per lane (:mod:`._numba_simd`).  The FFT of every lane is
computed in place and left in bit-reversed order (slot ``p`` holds ``Z[bitrev(p)]``), which is
where the in-place radix-2 decimation-in-frequency FFT leaves it; the stages computed here are
exactly those radix-2 stages, fused two or three at a time:

* ``radix8_stage`` does three of them (a radix-2 stage and the radix-4 stage of both halves)
  with the eight slots of a butterfly in registers, so a pass over a block that does not fit
  in L1 does three stages per load and store;
* ``radix4_stage`` does two, ``last_stages`` the twiddle-free last one or two.

Order (``fft_inplace``): depth first.  A block longer than ``L1_SLOTS`` gets a radix-8 pass,
then each of its eight sub-blocks is finished before the next is touched; blocks of at most
``L1_SLOTS`` slots (32 KiB) run all their remaining stages while they sit in L1.  With
AVX-512 a radix-4 butterfly on L1 data runs at the floating-point units' peak (14 cycles for
28 vector operations); a stage over data in L2 ran 2-3x slower, which is why the passes above
L1 are radix-8 and depth first (n = 65536 float32: 0.50 ns per element for the whole FFT,
against 0.74 with radix-4 passes breadth first and 0.32 at the floating-point peak).

Twiddles come from the plan's table ``tw`` of ``W_n^k = exp(-2 pi i k / n)``, interleaved
(``tw[2k]``, ``tw[2k + 1]``), for the real length ``n`` the table was built for:
``W_l^e = tw[2 e n / l]`` for a block of ``l`` slots.
"""
from numba import njit

from ._numba_simd import at, lane_count, vload, vsplat, vstore

__all__ = ["fft_inplace", "L1_SLOTS"]

_JIT = dict(fastmath={"contract"}, error_model="numpy", boundscheck=False, nogil=True)

#: Longest block (in slots of 128 bytes: 16 KiB of data, 16 KiB in flight) finished in L1.
L1_SLOTS = 256


@njit(**_JIT)
def radix4_store(a, p0, d, a0r, a0i, a1r, a1i, a2r, a2i, a3r, a3i,
                 w1r, w1i, w2r, w2i, w3r, w3i):
    """The radix-4 DIF butterfly on values in registers, stored at element offsets p0,
    p0 + d, p0 + 2d, p0 + 3d: (s + t, (s - t) W^2, (u - i e) W, (u + i e) W^3), with
    s, u = a0 +- a2, t, e = a1 +- a3 and (w1, w2, w3) = (W, W^2, W^3).  Two radix-2 DIF
    stages: spans 2d and d."""
    V = lane_count(a)
    sr = a0r + a2r
    si = a0i + a2i
    ur = a0r - a2r
    ui = a0i - a2i
    tr = a1r + a3r
    ti = a1i + a3i
    er = a1r - a3r
    ei = a1i - a3i
    vstore(a, p0, sr + tr)
    vstore(a, p0 + V, si + ti)
    xr = sr - tr
    xi = si - ti
    vstore(a, p0 + d, xr * w2r - xi * w2i)
    vstore(a, p0 + d + V, xr * w2i + xi * w2r)
    xr = ur + ei                # u - i e
    xi = ui - er
    vstore(a, p0 + 2 * d, xr * w1r - xi * w1i)
    vstore(a, p0 + 2 * d + V, xr * w1i + xi * w1r)
    xr = ur - ei                # u + i e
    xi = ui + er
    vstore(a, p0 + 3 * d, xr * w3r - xi * w3i)
    vstore(a, p0 + 3 * d + V, xr * w3i + xi * w3r)


@njit(**_JIT)
def radix4_stage(a, base, l, nblocks, tw, n):
    """Two radix-2 DIF stages (spans l/2 and l/4), in place, on ``nblocks`` consecutive
    blocks of ``l`` slots from slot ``base``: butterfly j of a block reads slots j + i l/4
    (i < 4), twiddles W_l^j, W_l^2j, W_l^3j."""
    V = lane_count(a)
    S = 2 * V
    q = l // 4
    d = q * S
    ts = 2 * (n // l)
    for j in range(q):
        k = j * ts
        w1r = vsplat(a, at(tw, k))
        w1i = vsplat(a, at(tw, k + 1))
        w2r = vsplat(a, at(tw, 2 * k))
        w2i = vsplat(a, at(tw, 2 * k + 1))
        w3r = vsplat(a, at(tw, 3 * k))
        w3i = vsplat(a, at(tw, 3 * k + 1))
        for blk in range(nblocks):
            p0 = (base + blk * l + j) * S
            radix4_store(a, p0, d, vload(a, p0), vload(a, p0 + V),
                         vload(a, p0 + d), vload(a, p0 + d + V),
                         vload(a, p0 + 2 * d), vload(a, p0 + 2 * d + V),
                         vload(a, p0 + 3 * d), vload(a, p0 + 3 * d + V),
                         w1r, w1i, w2r, w2i, w3r, w3i)


@njit(**_JIT)
def radix8_stage(a, base, l, tw, n):
    """Three radix-2 DIF stages (spans l/2, l/4, l/8), in place, on the block of ``l`` slots
    at slot ``base``: the radix-2 stage (butterfly j + k l/8, k < 4, twiddle W_l^(j + k l/8))
    followed by ``radix4_store`` on each half (block length l/2, twiddles W_l^2j, ^4j, ^6j),
    the eight slots held in registers."""
    V = lane_count(a)
    S = 2 * V
    q = l // 8
    d = q * S
    ts = 2 * (n // l)               # W_l^e = tw[e ts]
    tq = q * ts
    for j in range(q):
        k = j * ts
        p0 = (base + j) * S
        # radix-2 stage, span 4q: (a_k + a_k+4, (a_k - a_k+4) W_l^(j + kq))
        x0r = vload(a, p0)
        x0i = vload(a, p0 + V)
        y0r = vload(a, p0 + 4 * d)
        y0i = vload(a, p0 + 4 * d + V)
        wr = at(tw, k)
        wi = at(tw, k + 1)
        u0r = x0r + y0r
        u0i = x0i + y0i
        vr = x0r - y0r
        vi = x0i - y0i
        u4r = vr * wr - vi * wi
        u4i = vr * wi + vi * wr
        x0r = vload(a, p0 + d)
        x0i = vload(a, p0 + d + V)
        y0r = vload(a, p0 + 5 * d)
        y0i = vload(a, p0 + 5 * d + V)
        wr = at(tw, k + tq)
        wi = at(tw, k + tq + 1)
        u1r = x0r + y0r
        u1i = x0i + y0i
        vr = x0r - y0r
        vi = x0i - y0i
        u5r = vr * wr - vi * wi
        u5i = vr * wi + vi * wr
        x0r = vload(a, p0 + 2 * d)
        x0i = vload(a, p0 + 2 * d + V)
        y0r = vload(a, p0 + 6 * d)
        y0i = vload(a, p0 + 6 * d + V)
        wr = at(tw, k + 2 * tq)
        wi = at(tw, k + 2 * tq + 1)
        u2r = x0r + y0r
        u2i = x0i + y0i
        vr = x0r - y0r
        vi = x0i - y0i
        u6r = vr * wr - vi * wi
        u6i = vr * wi + vi * wr
        x0r = vload(a, p0 + 3 * d)
        x0i = vload(a, p0 + 3 * d + V)
        y0r = vload(a, p0 + 7 * d)
        y0i = vload(a, p0 + 7 * d + V)
        wr = at(tw, k + 3 * tq)
        wi = at(tw, k + 3 * tq + 1)
        u3r = x0r + y0r
        u3i = x0i + y0i
        vr = x0r - y0r
        vi = x0i - y0i
        u7r = vr * wr - vi * wi
        u7i = vr * wi + vi * wr
        w1r = vsplat(a, at(tw, 2 * k))             # W_{l/2}^j = W_l^2j
        w1i = vsplat(a, at(tw, 2 * k + 1))
        w2r = vsplat(a, at(tw, 4 * k))
        w2i = vsplat(a, at(tw, 4 * k + 1))
        w3r = vsplat(a, at(tw, 6 * k))
        w3i = vsplat(a, at(tw, 6 * k + 1))
        radix4_store(a, p0, d, u0r, u0i, u1r, u1i, u2r, u2i, u3r, u3i,
                     w1r, w1i, w2r, w2i, w3r, w3i)
        radix4_store(a, p0 + 4 * d, d, u4r, u4i, u5r, u5i, u6r, u6i, u7r, u7i,
                     w1r, w1i, w2r, w2i, w3r, w3i)


@njit(**_JIT)
def last_stages(a, base, l, count):
    """The twiddle-free last stages on ``count`` slots from ``base``: radix-4 butterflies on
    four consecutive slots (l = 4) or radix-2 on two (l = 2); nothing for l = 1."""
    V = lane_count(a)
    S = 2 * V
    if l == 4:
        for p in range(base, base + count, 4):
            p0 = p * S
            a0r = vload(a, p0)
            a0i = vload(a, p0 + V)
            a1r = vload(a, p0 + S)
            a1i = vload(a, p0 + S + V)
            a2r = vload(a, p0 + 2 * S)
            a2i = vload(a, p0 + 2 * S + V)
            a3r = vload(a, p0 + 3 * S)
            a3i = vload(a, p0 + 3 * S + V)
            sr = a0r + a2r
            si = a0i + a2i
            ur = a0r - a2r
            ui = a0i - a2i
            tr = a1r + a3r
            ti = a1i + a3i
            er = a1r - a3r
            ei = a1i - a3i
            vstore(a, p0, sr + tr)
            vstore(a, p0 + V, si + ti)
            vstore(a, p0 + S, sr - tr)
            vstore(a, p0 + S + V, si - ti)
            vstore(a, p0 + 2 * S, ur + ei)
            vstore(a, p0 + 2 * S + V, ui - er)
            vstore(a, p0 + 3 * S, ur - ei)
            vstore(a, p0 + 3 * S + V, ui + er)
    elif l == 2:
        for p in range(base, base + count, 2):
            p0 = p * S
            a0r = vload(a, p0)
            a0i = vload(a, p0 + V)
            a1r = vload(a, p0 + S)
            a1i = vload(a, p0 + S + V)
            vstore(a, p0, a0r + a1r)
            vstore(a, p0 + V, a0i + a1i)
            vstore(a, p0 + S, a0r - a1r)
            vstore(a, p0 + S + V, a0i - a1i)


@njit(**_JIT)
def fft_inplace(a, m, tw, n):
    """Complex FFT of length ``m`` (a power of two) of every lane of the slots of ``a``, in
    place; slot ``p`` of the result holds ``Z[bitrev(p)]``.  Radix-8 passes, depth first,
    until blocks have at most ``L1_SLOTS`` slots; then those blocks stage by stage."""
    npass = 0
    l = m
    while l > L1_SLOTS:
        l //= 8
        npass += 1
    for b in range(0, m, l):
        # the radix-8 passes of the blocks that start at b (largest first), then block b
        for level in range(npass):
            size = m >> (3 * level)
            if b % size == 0:
                radix8_stage(a, b, size, tw, n)
        s = l
        while s > 4:
            radix4_stage(a, b, s, l // s, tw, n)
            s //= 4
        last_stages(a, b, s, l)


@njit(**_JIT)
def merge_pair(ar, ai, br, bi, tw, k):
    """The inverse split of one frequency pair: from ``A = Y_k`` and ``B = Y_{m-k}`` (lane
    vectors) to ``conj(2Z_k)`` and ``conj(2Z_{m-k})`` as four lane vectors (real and
    imaginary parts): the merge of both the laned and the long-row kernels."""
    wr = at(tw, 2 * k)
    wi = -at(tw, 2 * k + 1)      # conj(W^k)
    er = ar + br            # 2E = A + conj(B)
    ei = ai - bi
    dr = ar - br            # A - conj(B)
    di = ai + bi
    orr = dr * wr - di * wi  # 2O = (A - conj B) conj(W^k)
    oi = dr * wi + di * wr
    # Z_k = 2E + i 2O and Z_{m-k} = conj(2E) + i conj(2O), conjugated
    return er - oi, -(ei + orr), er + oi, ei - orr

