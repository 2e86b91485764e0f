"""Numba kernels for rows longer than ``MAX_LANED_N``: a row at a time, its sub-sequences in lanes.

A row of ``n`` elements read as ``N = n / V`` consecutive lane vectors puts
``y_j[t] = x[j + V t]`` in lane ``j``: the V sub-sequences decimated by V, already in the
slot layout of the laned kernels (slot ``p`` = vectors ``2p`` and ``2p + 1``).  So:

1. the row is copied into the scratch ``a`` (64-byte aligned);
2. the laned FFT (:mod:`._numba_fft`) and ``split_spectrum`` give, in ``b``, the real
   spectra ``S_j`` of length ``N`` of all V sub-sequences at once (halfcomplex columns);
3. ``combine`` forms ``X_(k + N q) = sum_j W_n^(jk) W_V^(jq) S_j(k)``: per column ``k``, a
   twiddle by the lane vector ``(W_n^(jk))_j`` (:class:`circfft._plan.LaneTwiddles`) and a DFT
   across the lanes (``lane_dft_dif``); V consecutive ``k`` give a V x V tile that, transposed,
   is V runs of consecutive outputs (those with ``q < V/2``: the rest is their conjugate).
   The spectrum is written in halfcomplex order into ``a`` and copied into the row.

The inverse runs the steps backwards: ``uncombine`` (only ``k <= N/2`` is needed, the
sub-sequences being real), ``merge_spectrum``, the FFT, ``unscramble``, copy out.  Scratch:
two rows (``a`` and ``b``, ``n`` elements each), plus a 2 V x V tile.
"""
import numpy as np
from numba import njit

from ._numba_fft import fft_inplace, merge_pair
from ._numba_simd import (at, detach, lane_count, lane_dft_dif, lane_dft_dit, peek, poke,
                          transpose_lanes, vload, vload_at, vreverse, vsplat, vstore,
                          vstore_at)

__all__ = ["forward_long", "inverse_long"]

_JIT = dict(fastmath={"contract"}, error_model="numpy", boundscheck=False, nogil=True)
_ENTRY = dict(_JIT, cache=True)


@njit(**_JIT)
def split_spectrum(z, o, n, tw, rev, scale):
    """Z (bit-reversed, in z) -> scale * half spectrum Y of the real rows in halfcomplex
    order (column c at o[cV]): Re Y_k in column k, Im Y_k in column n - k, with
    Y_k = E_k + W_n^k O_k, 2E_k = Z_k + conj(Z_{m-k}), 2i O_k = Z_k - conj(Z_{m-k})."""
    V = lane_count(z)
    m = n // 2
    zr = vload(z, 0)
    zi = vload(z, V)
    vstore(o, 0, scale * (zr + zi))          # Y_0 = Re Z_0 + Im Z_0
    vstore(o, m * V, scale * (zr - zi))      # Y_m = Re Z_0 - Im Z_0
    if m < 2:
        return
    h = m // 2
    p = 2 * V * at(rev, h)                   # Y_{m/2} = conj(Z_{m/2})
    vstore(o, h * V, scale * vload(z, p))
    vstore(o, (n - h) * V, -scale * vload(z, p + V))
    half = 0.5 * scale
    for pp in range(2, m, 2):                # k = rev[pp] runs over 1 .. m/2 - 1
        k = at(rev, pp)
        pa = 2 * V * pp
        pb = 2 * V * at(rev, m - k)
        ar = vload(z, pa)
        ai = vload(z, pa + V)
        br = vload(z, pb)
        bi = vload(z, pb + V)
        wr = at(tw, 2 * k)
        wi = at(tw, 2 * k + 1)
        er = ar + br            # 2E = A + conj(B)
        ei = ai - bi
        orr = ai + bi           # 2O = -i (A - conj(B))
        oi = br - ar
        tr = orr * wr - oi * wi  # 2T = W^k 2O
        ti = orr * wi + oi * wr
        vstore(o, k * V, half * (er + tr))              # Y_k = E + T
        vstore(o, (n - k) * V, half * (ei + ti))
        vstore(o, (m - k) * V, half * (er - tr))        # Y_{m-k} = conj(E - T)
        vstore(o, (m + k) * V, half * (ti - ei))


@njit(**_JIT)
def merge_spectrum(y, a, n, tw):
    """Y in halfcomplex order (column c at y[cV]) -> conj(2Z) in natural slot order (in a),
    Z the complex FFT whose split is Y (the inverse of ``split_spectrum`` up to 2)."""
    V = lane_count(y)
    S = 2 * V
    m = n // 2
    y0 = vload(y, 0)
    ym = vload(y, m * V)
    vstore(a, 0, y0 + ym)
    vstore(a, V, ym - y0)
    if m < 2:
        return
    h = m // 2
    vstore(a, h * S, 2.0 * vload(y, h * V))
    vstore(a, h * S + V, 2.0 * vload(y, (n - h) * V))
    for k in range(1, h):
        zr, zi, yr, yi = merge_pair(vload(y, k * V), vload(y, (n - k) * V),
                                    vload(y, (m - k) * V), vload(y, (m + k) * V), tw, k)
        vstore(a, k * S, zr)
        vstore(a, k * S + V, zi)
        vstore(a, (m - k) * S, yr)
        vstore(a, (m - k) * S + V, yi)


@njit(**_JIT)
def unscramble(z, o, m, rev, scale):
    """o[p] = scale * conj(Z[rev[p]]) for the complex slots p < m (z read in order)."""
    V = lane_count(z)
    S = 2 * V
    for s in range(m):
        d = at(rev, s) * S
        vstore(o, d, scale * vload(z, s * S))
        vstore(o, d + V, -scale * vload(z, s * S + V))


@njit(**_JIT)
def copy_in(addr, n, s1, a):
    """a[i] = row element i (row at byte ``addr``, elements ``s1`` bytes apart)."""
    V = lane_count(a)
    isz = a.itemsize
    if s1 == isz:
        for i in range(0, n, V):
            vstore(a, i, vload_at(addr + i * isz, a))
    else:
        for i in range(n):
            a[i] = peek(addr + i * s1, a)


@njit(**_JIT)
def copy_out(addr, n, s1, a):
    """Row element i = a[i]."""
    V = lane_count(a)
    isz = a.itemsize
    if s1 == isz:
        for i in range(0, n, V):
            vstore_at(addr + i * isz, vload(a, i))
    else:
        for i in range(n):
            poke(addr + i * s1, a[i])


@njit(**_JIT)
def lane_order(V):
    """bitrev(l) over log2(V) bits, l < V: the order of lane_dft_dif's outputs."""
    bits = 0
    while (1 << bits) < V:
        bits += 1
    rev = np.empty(V, np.int64)
    for l in range(V):
        r = 0
        for i in range(bits):
            r |= ((l >> i) & 1) << (bits - 1 - i)
        rev[l] = r
    return rev


@njit(**_JIT)
def check_long(n, a, b):
    """Power-of-two rows of at least 4 V^2 elements, scratch of a row each."""
    V = lane_count(a)
    if n < 4 * V * V or n & (n - 1) != 0:
        raise ValueError("the long-row kernels take power-of-two rows of at least 4 V^2")
    if a.size < n or b.size < n:
        raise ValueError("scratch too small: the long-row kernels need a row each")


@njit(**_JIT)
def lane_twiddle(A, B, R, k):
    """The lane vectors (re, im) of (W_n^(jk))_j = A[k % R] B[k // R]."""
    V = lane_count(A)
    pa = 2 * V * (k % R)
    pb = 2 * V * (k // R)
    ar = vload(A, pa)
    ai = vload(A, pa + V)
    br = vload(B, pb)
    bi = vload(B, pb + V)
    return ar * br - ai * bi, ar * bi + ai * br


@njit(**_JIT)
def half_spectrum(b, N, k):
    """S_j(k) of every lane, 0 <= k < N, from the halfcomplex columns of ``b``."""
    V = lane_count(b)
    h = N // 2
    zero = vsplat(b, 0.0)
    if k == 0 or k == h:
        return vload(b, k * V), zero
    if k < h:
        return vload(b, k * V), vload(b, (N - k) * V)
    return vload(b, (N - k) * V), -vload(b, k * V)


@njit(**_JIT)
def combine(b, o, t, A, B, R, scale):
    """Spectra S_j of the V sub-sequences (halfcomplex columns in b, length N each) -> the
    halfcomplex spectrum of the row, times ``scale``, in o (n = N V elements).  ``t``: a
    2 V x V tile."""
    V = lane_count(b)
    N = b.size // V
    n = N * V
    VV = V * V
    isz = b.itemsize
    rev = lane_order(V)                 # lane l of lane_dft_dif holds output q = rev[l]
    for k0 in range(0, N, V):
        for u in range(V):
            k = k0 + u
            sr, si = half_spectrum(b, N, k)
            wr, wi = lane_twiddle(A, B, R, k)
            ur, ui = lane_dft_dif(sr * wr - si * wi, sr * wi + si * wr)
            vstore(t, u * V, scale * ur)
            vstore(t, VV + u * V, scale * ui)
        # rows u (k) x lanes l (q = rev[l]) -> rows l, in place through the other half
        transpose_lanes(t, 0, V * isz, V, t, 0, V * isz, V)
        transpose_lanes(t, VV * isz, V * isz, V, t, VV * isz, V * isz, V)
        for l in range(V):
            q = rev[l]
            if 2 * q >= V:
                continue
            c = k0 + N * q                      # outputs c .. c + V - 1
            if c == 0:                          # X_0 has no imaginary part stored
                for u in range(V):
                    o[u] = t[l * V + u]
                    if u > 0:
                        o[n - u] = t[VV + l * V + u]
                continue
            vstore(o, c, vload(t, l * V))
            vstore(o, n - c - V + 1, vreverse(vload(t, VV + l * V)))
        if k0 == 0:                             # X_{n/2} = lane l of q = V/2, k = 0
            for l in range(V):
                if 2 * rev[l] == V:
                    o[n // 2] = t[l * V]


@njit(**_JIT)
def uncombine(x, b, t, A, B, R):
    """Halfcomplex spectrum of the row (in x, n elements) -> V S_j(k) for k <= N/2 as the
    halfcomplex columns of b: the inverse of ``combine`` up to the factor V."""
    V = lane_count(x)
    N = b.size // V
    n = N * V
    h = N // 2
    VV = V * V
    isz = x.itemsize
    rev = lane_order(V)                 # lane l of the tile's rows holds q = rev[l]
    for k0 in range(0, h + 1, V):
        # tile row l: lanes u of X_{k0 + u + N q}, q = rev[l] (conjugated: inverse by DFT)
        for l in range(V):
            q = rev[l]
            c = k0 + N * q
            if k0 == 0 or c + V - 1 >= n // 2 and c <= n // 2:
                for u in range(V):              # runs touching X_0 or X_{n/2}: one by one
                    k = c + u
                    if k == 0 or 2 * k == n:
                        re, im = x[k % n], 0.0
                    elif 2 * k < n:
                        re, im = x[k], x[n - k]
                    else:
                        re, im = x[n - k], -x[k]
                    t[l * V + u] = re
                    t[VV + l * V + u] = -im
            elif 2 * c < n:
                vstore(t, l * V, vload(x, c))
                vstore(t, VV + l * V, -vreverse(vload(x, n - c - V + 1)))
            else:                               # X_k = conj(X_{n-k})
                vstore(t, l * V, vreverse(vload(x, n - c - V + 1)))
                vstore(t, VV + l * V, vload(x, c))
        transpose_lanes(t, 0, V * isz, V, t, 0, V * isz, V)
        transpose_lanes(t, VV * isz, V * isz, V, t, VV * isz, V * isz, V)
        for u in range(V):
            k = k0 + u
            if k > h:
                break
            vr, vi = lane_dft_dit(vload(t, u * V), vload(t, VV + u * V))
            wr, wi = lane_twiddle(A, B, R, k)
            # conj(DFT(conj X)) = V IDFT(X), times conj(W): S = (vr - i vi)(wr - i wi)
            sr = vr * wr - vi * wi
            si = -(vr * wi + vi * wr)
            vstore(b, k * V, sr)
            if 0 < k < h:
                vstore(b, (N - k) * V, si)


@njit(**_ENTRY)
def forward_long(addr, rows, n, s0, s1, tw, rev, A, B, R, scale, a, b):
    """Rows of n elements (n V-multiple, > V^2) at byte ``addr`` -> their scaled halfcomplex
    spectra, one row at a time in the scratch a and b (n elements each).  ``tw``, ``rev``:
    the plan of length N = n / V; A, B, R: :class:`circfft._plan.LaneTwiddles`."""
    check_long(n, a, b)
    V = lane_count(a)
    N = n // V
    a, b, tw, rev, A, B = detach(a), detach(b), detach(tw), detach(rev), detach(A), detach(B)
    a, b = a[:n], b[:n]
    t = np.empty(2 * V * V, a.dtype)
    for r in range(rows):
        row = addr + r * s0
        copy_in(row, n, s1, a)
        fft_inplace(a, N // 2, tw, N)
        split_spectrum(a, b, N, tw, rev, a.dtype.type(1.0))
        combine(b, a, t, A, B, R, scale)
        copy_out(row, n, s1, a)


@njit(**_ENTRY)
def inverse_long(addr, rows, n, s0, s1, tw, rev, A, B, R, scale, a, b):
    """Rows at ``addr``: halfcomplex spectra -> scale * n * inverse transform, in place."""
    check_long(n, a, b)
    V = lane_count(a)
    N = n // V
    a, b, tw, rev, A, B = detach(a), detach(b), detach(tw), detach(rev), detach(A), detach(B)
    a, b = a[:n], b[:n]
    t = np.empty(2 * V * V, a.dtype)
    for r in range(rows):
        row = addr + r * s0
        copy_in(row, n, s1, a)
        uncombine(a, b, t, A, B, R)
        merge_spectrum(b, a, N, tw)
        fft_inplace(a, N // 2, tw, N)
        unscramble(a, b, N // 2, rev, scale)
        copy_out(row, n, s1, b)
