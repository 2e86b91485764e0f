// In-place real FFT of rows in the packed (halfcomplex, FFTW R2HC) layout, on the GPU.
//
// Algorithm (the same as circfft/backends/numpy_backend.py, see docs/gpu.rst):
//   forward, n = 2m:  z[p] = x[2p] + i x[2p+1]  ->  complex DIF FFT of length m (natural order
//   in, bit-reversed order out)  ->  split Z into the half spectrum of x, packed.
//   inverse:          merge the packed spectrum into 2Z (natural order)  ->  the same DIF FFT
//   with conjugate twiddles (bit-reversed out)  ->  de-interleave into x.
// The DIF FFT is a sequence of radix-2 stages; R = 2^r consecutive stages are run at once in
// registers on groups of R elements (radix 8, then 4 or 2 for the remainder), so the data
// crosses shared (or global) memory once per r stages.
//
// Two schemes:
//   one pass (rdfft_rows): rows with m complex values fitting in shared memory.  Each block
//     loads RPB rows with coalesced loads (the block's threads sweep the rows' elements in
//     order), runs every stage in shared memory, and stores with coalesced stores: every
//     element of x is read once and written once.
//   multi pass (longer rows, up to n = 2^24): a float/double work buffer of n compute
//     elements per row in flight (complex interleaved).  Forward: rdfft_pass (first pass reads
//     x) ... rdfft_pass, rdfft_tail (the last log2(S) stages on contiguous chunks of S complex
//     values in shared memory), rdfft_split (work -> packed x).  Inverse: rdfft_merge
//     (packed x -> work), rdfft_pass ..., rdfft_tail, rdfft_unscramble (work -> x).
//
// Launch geometry is chosen on the host (cupy_backend.py); every kernel loops over its work
// with grid-stride loops and 64-bit offsets, so any number of rows works with any grid.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Butterflies on one group of R elements held in registers
// ---------------------------------------------------------------------------------------------
// The group holds the elements at positions base + q*L (q < R) of a DIF stage sequence whose
// first stage has half-size h = 2^h_log (so L = 2h/R), with jp = base mod L.  Runs the r =
// log2(R) radix-2 stages h, h/2, ..., L.  At a stage of half-size hh the element pair (a, b)
// at offsets j and j + hh of its 2hh-block becomes (a + b, (a - b) W_{2hh}^j), and
// W_{2hh}^j = W_n^(j n / 2hh).
template <int R, typename C>
__device__ __forceinline__ void group_butterflies(C* vr, C* vi, unsigned int jp, int L_log,
                                                  int log2n, const C* __restrict__ tw,
                                                  int tw_bits, bool conj)
{
    const unsigned int L = 1u << L_log;
    int lh_log = 0;
    while ((1 << (lh_log + 1)) < R) ++lh_log;       // lh = R/2
#pragma unroll
    for (int lh = R / 2; lh >= 1; lh >>= 1) {
        const int shift = log2n - 1 - (lh_log + L_log);      // log2(n / 2hh)
#pragma unroll
        for (int q = 0; q < R; ++q) {
            if ((q & lh) == 0) {
                const unsigned int j = jp + (unsigned int)(q & (lh - 1)) * L;
                C wr, wi;
                twiddle(tw, tw_bits, j << shift, conj, wr, wi);
                const C ar = vr[q], ai = vi[q], br = vr[q + lh], bi = vi[q + lh];
                vr[q] = ar + br;
                vi[q] = ai + bi;
                cmul(ar - br, ai - bi, wr, wi, vr[q + lh], vi[q + lh]);
            }
        }
        --lh_log;
    }
}

// One step of R stages in shared memory on a chunk of S = 2^logS complex values stored in
// re/im (padded).  The chunk's first stage of this step has half-size 2^h_log.  Threads tid,
// tid + nthreads, ... take the S/R groups.
template <int R, typename C>
__device__ __forceinline__ void smem_step(C* re, C* im, int logS, int h_log, int log2n,
                                          const C* __restrict__ tw, int tw_bits, bool conj,
                                          int tid, int nthreads)
{
    int r = 0;
    while ((1 << r) < R) ++r;
    const int L_log = h_log + 1 - r;
    const int groups = 1 << (logS - r);
    for (int g = tid; g < groups; g += nthreads) {
        const int jp = g & ((1 << L_log) - 1);
        const int base = ((g >> L_log) << (h_log + 1)) + jp;
        C vr[R], vi[R];
#pragma unroll
        for (int q = 0; q < R; ++q) {
            const int p = padded(base + (q << L_log));
            vr[q] = re[p];
            vi[q] = im[p];
        }
        group_butterflies<R, C>(vr, vi, (unsigned int)jp, L_log, log2n, tw, tw_bits, conj);
#pragma unroll
        for (int q = 0; q < R; ++q) {
            const int p = padded(base + (q << L_log));
            re[p] = vr[q];
            im[p] = vi[q];
        }
    }
}

// Every DIF stage of a chunk of S = 2^logS complex values in shared memory (natural order in,
// bit-reversed order out).  Must be reached by all threads of the block; ends synchronised.
// The caller synchronises after filling re/im.
template <typename C>
__device__ __forceinline__ void smem_fft(C* re, C* im, int logS, int log2n,
                                         const C* __restrict__ tw, int tw_bits, bool conj,
                                         int tid, int nthreads)
{
    int left = logS;
    while (left > 0) {
        const int h_log = left - 1;
        if (left >= 3) {
            smem_step<8, C>(re, im, logS, h_log, log2n, tw, tw_bits, conj, tid, nthreads);
            left -= 3;
        } else if (left == 2) {
            smem_step<4, C>(re, im, logS, h_log, log2n, tw, tw_bits, conj, tid, nthreads);
            left -= 2;
        } else {
            smem_step<2, C>(re, im, logS, h_log, log2n, tw, tw_bits, conj, tid, nthreads);
            left -= 1;
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// Split (forward) and merge (inverse) of one frequency pair
// ---------------------------------------------------------------------------------------------
// Forward, 1 <= k < m/2: from A = Z_k, B = Z_{m-k} and W = W_n^k, the packed outputs
// X[k], X[n-k], X[m-k], X[m+k], times `half_scale` (= scale / 2).
template <typename C>
__device__ __forceinline__ void split_pair(C ar, C ai, C br, C bi, C wr, C wi, C half_scale,
                                           C& xk, C& xnk, C& xmk, C& xmpk)
{
    const C er = ar + br, ei = ai - bi;         // A + conj(B) = 2 E_k
    const C dr = ar - br, di = ai + bi;         // A - conj(B)
    const C tr = di * wr + dr * wi;             // T = -i W (A - conj(B))
    const C ti = di * wi - dr * wr;
    xk = half_scale * (er + tr);                // Y_k = (E + T) / 2
    xnk = half_scale * (ei + ti);
    xmk = half_scale * (er - tr);               // Y_{m-k} = conj(E - T) / 2
    xmpk = half_scale * (ti - ei);
}

// Inverse, 1 <= k < m/2: from the packed values A = X[k] + i X[n-k], B = X[m-k] + i X[m+k]
// and W = W_n^k, the values 2 Z_k and 2 Z_{m-k} of the complex sequence to inverse-transform.
template <typename C>
__device__ __forceinline__ void merge_pair(C ar, C ai, C br, C bi, C wr, C wi,
                                           C& zkr, C& zki, C& zmr, C& zmi)
{
    const C er = ar + br, ei = ai - bi;         // A + conj(B)
    const C dr = ar - br, di = ai + bi;         // A - conj(B)
    const C orr = dr * wr + di * wi;            // O = (A - conj(B)) conj(W)
    const C oi = di * wr - dr * wi;
    zkr = er - oi;                              // E + i O
    zki = ei + orr;
    zmr = er + oi;                              // conj(E) + i conj(O)
    zmi = orr - ei;
}

// ---------------------------------------------------------------------------------------------
// One-pass kernel
// ---------------------------------------------------------------------------------------------
// rdfft_rows<S, C>: transform rows of length n = 2^log2n in place, each entirely in shared
// memory (forward rdfft, or unnormalised inverse), output multiplied by `scale`.
// Parameters:
//   x            S*               element 0 of row 0 (the caller's array, modified in place)
//   rows         long long        number of rows
//   row_stride   long long        elements between the starts of consecutive rows
//   elem_stride  long long        elements between consecutive entries of a row (may be < 0)
//   log2n        int              n = 2^log2n, 1 <= log2n; m = n/2
//   tw           const C*         twiddle table of length n (see twiddle() in common.cuh)
//   tw_bits      int              its low-table size, log2
//   scale        C                multiplies every output (norm)
//   inverse      int              0: forward transform, 1: unnormalised inverse
// Launch: blockDim = (T, RPB, 1) with T * RPB <= 256 (__launch_bounds__(256, 3): at most 80
// registers, so three blocks fit an SM): T threads per row, RPB rows per block; any gridDim.x
// (the blocks loop over groups of RPB rows); dynamic shared memory
// RPB * 2 * padded_size(m) * sizeof(C) bytes.
//
// Shared-memory slots: a row's m complex values live in re[padded(p)], im[padded(p)].  The
// split and merge work in place on the slots of their pair, so the packed value X[i] sits in
// slot(i): i < m: re at q(i); i == m: im at 0; i > m: im at q(n - i), where q is the identity
// for the merge (before the FFT) and bit reversal for the split (after the FFT).
template <typename S, typename C>
__global__ void __launch_bounds__(256, 3)
rdfft_rows(S* x, long long rows, long long row_stride, long long elem_stride, int log2n,
           const C* __restrict__ tw, int tw_bits, C scale, int inverse)
{
    extern __shared__ __align__(16) unsigned char circfft_smem[];
    const int n = 1 << log2n;
    const int m = n >> 1;
    const int log2m = log2n - 1;
    const int T = (int)blockDim.x;
    const int RPB = (int)blockDim.y;
    const int tid = (int)threadIdx.x;
    const int flat = (int)(threadIdx.y * blockDim.x + threadIdx.x);
    const int nthreads = T * RPB;
    const int psize = padded_size(m);
    C* smem = reinterpret_cast<C*>(circfft_smem);
    C* re = smem + 2 * psize * (int)threadIdx.y;
    C* im = re + psize;
    const bool conj = inverse != 0;
    const C half_scale = scale * (C)0.5;
    const int npairs = m >= 2 ? m / 2 : 1;

    for (long long row0 = (long long)blockIdx.x * RPB; row0 < rows;
         row0 += (long long)gridDim.x * RPB) {
        // ---- coalesced load of RPB rows: element e of the group is x[row0 + e / n][e % n]
        for (int e = flat; e < RPB * n; e += nthreads) {
            const int rr = e >> log2n;
            const int i = e & (n - 1);
            const long long row = row0 + rr;
            if (row < rows) {
                C* rre = smem + 2 * psize * rr;
                C* rim = rre + psize;
                const C v = to_compute(x[row * row_stride + (long long)i * elem_stride]);
                if (!inverse) {                 // z[p] = x[2p] + i x[2p+1]
                    if (i & 1) rim[padded(i >> 1)] = v; else rre[padded(i >> 1)] = v;
                } else if (i < m) {             // packed slots, identity order
                    rre[padded(i)] = v;
                } else if (i == m) {
                    rim[0] = v;
                } else {
                    rim[padded(n - i)] = v;
                }
            }
        }
        __syncthreads();
        if (inverse) {                           // merge pairs in place into 2Z, natural order
            for (int k = tid; k < npairs; k += T) {
                if (k == 0) {
                    const C x0 = re[0], xm = im[0];
                    re[0] = x0 + xm;
                    im[0] = x0 - xm;
                    if (m >= 2) {
                        const int p = padded(m >> 1);
                        re[p] = (C)2 * re[p];
                        im[p] = (C)-2 * im[p];
                    }
                } else {
                    const int pk = padded(k), pm = padded(m - k);
                    C wr, wi;
                    twiddle(tw, tw_bits, (unsigned int)k, false, wr, wi);
                    merge_pair(re[pk], im[pk], re[pm], im[pm], wr, wi,
                               re[pk], im[pk], re[pm], im[pm]);
                }
            }
            __syncthreads();
        }
        smem_fft<C>(re, im, log2m, log2n, tw, tw_bits, conj, tid, T);
        if (!inverse) {                          // split pairs in place into packed slots
            for (int k = tid; k < npairs; k += T) {
                if (k == 0) {
                    const C z0r = re[0], z0i = im[0];
                    re[0] = scale * (z0r + z0i);
                    im[0] = scale * (z0r - z0i);
                    if (m >= 2) {
                        const int p = padded(1);            // Z_{m/2} sits at rev(m/2) = 1
                        re[p] = scale * re[p];
                        im[p] = -scale * im[p];
                    }
                } else {
                    const int pk = padded((int)reverse_bits((unsigned int)k, log2m));
                    const int pm = padded((int)reverse_bits((unsigned int)(m - k), log2m));
                    C wr, wi;
                    twiddle(tw, tw_bits, (unsigned int)k, false, wr, wi);
                    split_pair(re[pk], im[pk], re[pm], im[pm], wr, wi, half_scale,
                               re[pk], im[pk], re[pm], im[pm]);
                }
            }
            __syncthreads();
        }
        // ---- coalesced store of RPB rows
        for (int e = flat; e < RPB * n; e += nthreads) {
            const int rr = e >> log2n;
            const int i = e & (n - 1);
            const long long row = row0 + rr;
            if (row < rows) {
                const C* rre = smem + 2 * psize * rr;
                const C* rim = rre + psize;
                C v;
                if (inverse) {                  // x[2p] = Re z_p, x[2p+1] = Im z_p
                    const int p = padded((int)reverse_bits((unsigned int)(i >> 1), log2m));
                    v = scale * ((i & 1) ? rim[p] : rre[p]);
                } else if (i < m) {
                    v = rre[padded((int)reverse_bits((unsigned int)i, log2m))];
                } else if (i == m) {
                    v = rim[0];
                } else {
                    v = rim[padded((int)reverse_bits((unsigned int)(n - i), log2m))];
                }
                store_as(x + row * row_stride + (long long)i * elem_stride, v);
            }
        }
        __syncthreads();                         // the next group of rows reuses the slots
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-pass kernels (rows longer than shared memory).  The work buffer holds, for each row in
// flight, m complex values interleaved (re, im) in the compute type: work[row * n + 2p + c].
// ---------------------------------------------------------------------------------------------
template <int R, typename S, typename C>
__device__ __forceinline__ void global_group(S* x, long long row_stride, long long elem_stride,
                                             C* work, long long row, unsigned int g, int log2n,
                                             int h_log, const C* __restrict__ tw, int tw_bits,
                                             bool conj, bool from_x)
{
    int r = 0;
    while ((1 << r) < R) ++r;
    const int L_log = h_log + 1 - r;
    const unsigned int jp = g & ((1u << L_log) - 1u);
    const long long base = (long long)(((g >> L_log) << (h_log + 1)) + jp);
    const long long n = 1ll << log2n;
    C* wrow = work + row * n;
    C vr[R], vi[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
        const long long p = base + ((long long)q << L_log);
        if (from_x) {
            const S* xr = x + row * row_stride;
            vr[q] = to_compute(xr[(2 * p) * elem_stride]);
            vi[q] = to_compute(xr[(2 * p + 1) * elem_stride]);
        } else {
            vr[q] = wrow[2 * p];
            vi[q] = wrow[2 * p + 1];
        }
    }
    group_butterflies<R, C>(vr, vi, jp, L_log, log2n, tw, tw_bits, conj);
#pragma unroll
    for (int q = 0; q < R; ++q) {
        const long long p = base + ((long long)q << L_log);
        wrow[2 * p] = vr[q];
        wrow[2 * p + 1] = vi[q];
    }
}

// rdfft_pass<S, C>: r consecutive DIF stages over global memory, the first of half-size
// 2^h_log, on every row in flight; writes the work buffer.
// Parameters:
//   x            S*               the caller's rows (read only when from_x != 0)
//   row_stride   long long        elements between rows of x
//   elem_stride  long long        elements between entries of a row of x
//   work         C*               work buffer, rows * n compute elements
//   rows         long long        rows in flight
//   log2n        int              n = 2^log2n; m = n/2 complex values per row
//   h_log        int              log2 of the first stage's half-size (h_log + 1 >= r)
//   r            int              stages in this pass: 1, 2 or 3
//   tw, tw_bits  const C*, int    twiddle table (common.cuh)
//   inverse      int              1: conjugate twiddles
//   from_x       int              1: read the input from x (forward's first pass)
// Launch: any 1-D grid and block; items rows * (m >> r) are grid-strided.
template <typename S, typename C>
__global__ void rdfft_pass(S* x, long long row_stride, long long elem_stride, C* work,
                           long long rows, int log2n, int h_log, int r,
                           const C* __restrict__ tw, int tw_bits, int inverse, int from_x)
{
    const int gshift = log2n - 1 - r;             // log2(groups per row)
    const long long items = rows << gshift;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += stride) {
        const long long row = it >> gshift;
        const unsigned int g = (unsigned int)(it & ((1ll << gshift) - 1));
        if (r == 3)
            global_group<8, S, C>(x, row_stride, elem_stride, work, row, g, log2n, h_log, tw,
                                  tw_bits, inverse != 0, from_x != 0);
        else if (r == 2)
            global_group<4, S, C>(x, row_stride, elem_stride, work, row, g, log2n, h_log, tw,
                                  tw_bits, inverse != 0, from_x != 0);
        else
            global_group<2, S, C>(x, row_stride, elem_stride, work, row, g, log2n, h_log, tw,
                                  tw_bits, inverse != 0, from_x != 0);
    }
}

// rdfft_tail<C>: the last logS DIF stages, in shared memory, on every contiguous chunk of
// S = 2^logS complex values of the work buffer.
// Parameters:
//   work         C*               work buffer, rows * n compute elements (in place)
//   rows         long long        rows in flight
//   log2n        int              n = 2^log2n (for the twiddle exponents)
//   logS         int              chunk size, log2 (logS <= log2n - 1)
//   tw, tw_bits  const C*, int    twiddle table
//   inverse      int              1: conjugate twiddles
// Launch: 1-D blocks of at most 256 threads, any grid; dynamic shared memory
// 2 * padded_size(S) * sizeof(C) bytes.
template <typename C>
__global__ void __launch_bounds__(256, 3)
rdfft_tail(C* work, long long rows, int log2n, int logS, const C* __restrict__ tw,
           int tw_bits, int inverse)
{
    extern __shared__ __align__(16) unsigned char circfft_smem[];
    const int S = 1 << logS;
    C* re = reinterpret_cast<C*>(circfft_smem);
    C* im = re + padded_size(S);
    const int tid = (int)threadIdx.x;
    const int nthreads = (int)blockDim.x;
    const long long chunks = rows << (log2n - 1 - logS);
    for (long long c = blockIdx.x; c < chunks; c += gridDim.x) {
        C* src = work + c * (2ll * S);          // chunks are contiguous along the rows
        for (int e = tid; e < 2 * S; e += nthreads) {
            if (e & 1) im[padded(e >> 1)] = src[e]; else re[padded(e >> 1)] = src[e];
        }
        __syncthreads();
        smem_fft<C>(re, im, logS, log2n, tw, tw_bits, inverse != 0, tid, nthreads);
        for (int e = tid; e < 2 * S; e += nthreads) {
            src[e] = (e & 1) ? im[padded(e >> 1)] : re[padded(e >> 1)];
        }
        __syncthreads();
    }
}

// rdfft_split<S, C>: forward's last pass: Z (bit-reversed, in work) -> packed spectrum in x,
// times scale.
// Parameters:
//   work         const C*         work buffer after the FFT, rows * n compute elements
//   x            S*               output rows
//   rows, row_stride, elem_stride long long   rows of x (elements)
//   log2n        int              n = 2^log2n, log2n >= 2
//   tw, tw_bits  const C*, int    twiddle table
//   scale        C                multiplies every output
// Launch: any 1-D grid and block; items rows * m/2 (one frequency pair each).
template <typename S, typename C>
__global__ void rdfft_split(const C* __restrict__ work, S* x, long long rows,
                            long long row_stride, long long elem_stride, int log2n,
                            const C* __restrict__ tw, int tw_bits, C scale)
{
    const int log2m = log2n - 1;
    const long long n = 1ll << log2n, m = n >> 1;
    const int pshift = log2n - 2;                 // log2(m/2)
    const long long items = rows << pshift;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const C half_scale = scale * (C)0.5;
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += stride) {
        const long long row = it >> pshift;
        const long long k = it & ((1ll << pshift) - 1);
        const C* z = work + row * n;
        S* xr = x + row * row_stride;
        if (k == 0) {
            const C z0r = z[0], z0i = z[1];
            const C hr = z[2], hi = z[3];                     // Z_{m/2} at rev(m/2) = 1
            store_as(xr, scale * (z0r + z0i));
            store_as(xr + m * elem_stride, scale * (z0r - z0i));
            store_as(xr + (m >> 1) * elem_stride, scale * hr);
            store_as(xr + (n - (m >> 1)) * elem_stride, -scale * hi);
        } else {
            const long long qa = reverse_bits((unsigned int)k, log2m);
            const long long qb = reverse_bits((unsigned int)(m - k), log2m);
            C wr, wi, xk, xnk, xmk, xmpk;
            twiddle(tw, tw_bits, (unsigned int)k, false, wr, wi);
            split_pair(z[2 * qa], z[2 * qa + 1], z[2 * qb], z[2 * qb + 1], wr, wi, half_scale,
                       xk, xnk, xmk, xmpk);
            store_as(xr + k * elem_stride, xk);
            store_as(xr + (n - k) * elem_stride, xnk);
            store_as(xr + (m - k) * elem_stride, xmk);
            store_as(xr + (m + k) * elem_stride, xmpk);
        }
    }
}

// rdfft_merge<S, C>: inverse's first pass: packed spectrum in x -> 2Z (natural order) in work.
// Parameters:
//   x            const S*         input rows (packed spectra)
//   rows, row_stride, elem_stride long long   rows of x (elements)
//   work         C*               work buffer, rows * n compute elements
//   log2n        int              n = 2^log2n, log2n >= 2
//   tw, tw_bits  const C*, int    twiddle table
// Launch: any 1-D grid and block; items rows * m/2.
template <typename S, typename C>
__global__ void rdfft_merge(const S* x, long long rows, long long row_stride,
                            long long elem_stride, C* work, int log2n,
                            const C* __restrict__ tw, int tw_bits)
{
    const long long n = 1ll << log2n, m = n >> 1;
    const int pshift = log2n - 2;
    const long long items = rows << pshift;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += stride) {
        const long long row = it >> pshift;
        const long long k = it & ((1ll << pshift) - 1);
        C* z = work + row * n;
        const S* xr = x + row * row_stride;
        if (k == 0) {
            const C x0 = to_compute(xr[0]), xm = to_compute(xr[m * elem_stride]);
            z[0] = x0 + xm;
            z[1] = x0 - xm;
            z[m] = (C)2 * to_compute(xr[(m >> 1) * elem_stride]);           // 2 Z_{m/2}
            z[m + 1] = (C)-2 * to_compute(xr[(n - (m >> 1)) * elem_stride]);
        } else {
            C wr, wi, zkr, zki, zmr, zmi;
            twiddle(tw, tw_bits, (unsigned int)k, false, wr, wi);
            merge_pair(to_compute(xr[k * elem_stride]), to_compute(xr[(n - k) * elem_stride]),
                       to_compute(xr[(m - k) * elem_stride]),
                       to_compute(xr[(m + k) * elem_stride]), wr, wi, zkr, zki, zmr, zmi);
            z[2 * k] = zkr;
            z[2 * k + 1] = zki;
            z[2 * (m - k)] = zmr;
            z[2 * (m - k) + 1] = zmi;
        }
    }
}

// rdfft_unscramble<S, C>: inverse's last pass: z (bit-reversed, in work) -> x, times scale.
// Parameters:
//   work         const C*         work buffer after the FFT
//   x            S*               output rows
//   rows, row_stride, elem_stride long long   rows of x (elements)
//   log2n        int              n = 2^log2n, log2n >= 2
//   scale        C                multiplies every output
// Launch: any 1-D grid and block; items rows * n (one output element each, coalesced).
template <typename S, typename C>
__global__ void rdfft_unscramble(const C* __restrict__ work, S* x, long long rows,
                                 long long row_stride, long long elem_stride, int log2n,
                                 C scale)
{
    const int log2m = log2n - 1;
    const long long n = 1ll << log2n;
    const long long items = rows << log2n;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += stride) {
        const long long row = it >> log2n;
        const long long i = it & (n - 1);
        const long long q = reverse_bits((unsigned int)(i >> 1), log2m);
        store_as(x + row * row_stride + i * elem_stride, scale * work[row * n + 2 * q + (i & 1)]);
    }
}
