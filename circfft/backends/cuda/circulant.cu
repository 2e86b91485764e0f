// Products of packed (halfcomplex) spectra: the circulant algebra of docs/operators.rst on the GPU.
//
// In the packed layout of length n the complex value of frequency k (0 < k < n/2) is
// (X[k], X[n-k]); X[0] and, for even n, X[n/2] are real.  Each kernel thread owns one
// frequency "pair" k in [0, n/2] and reads every input it needs before writing, so the output
// may alias either input (in-place products).
//
// What is fused: the block-circulant product y_o = sum_i circ(w_oi) x_i is three launches,
// rdfft of the input blocks (rdfft.cu), bc_accumulate (the per-frequency complex matmul over
// blocks, with the pair products and the sum fused so no (tokens, d_out/b, d_in/b, b)
// intermediate exists), and irdfft of the output blocks in place.
#include "common.cuh"

// The complex product a*b or conj(a)*b.
template <typename C>
__device__ __forceinline__ void pair_mul(C ar, C ai, C br, C bi, bool conj, C& zr, C& zi)
{
    if (conj) ai = -ai;
    cmul(ar, ai, br, bi, zr, zi);
}

// spectral_mul<S, C>: z = a * b (conj = 0) or conj(a) * b (conj = 1), pair-wise on packed rows.
// Parameters:
//   a            const S*         row 0 of the first operand
//   a_row_stride long long        elements between rows of a (0 broadcasts one row)
//   a_elem_stride long long       elements between entries of a row of a
//   b            const S*         second operand, with b_row_stride, b_elem_stride likewise
//   b_row_stride long long
//   b_elem_stride long long
//   z            S*               output (may be a or b), with z_row_stride, z_elem_stride
//   z_row_stride long long
//   z_elem_stride long long
//   rows         long long        number of rows
//   n            long long        row length (any n >= 1)
//   conj         int              1: conjugate a
// Launch: any 1-D grid and block; items rows * (n/2 + 1), grid-strided.
template <typename S, typename C>
__global__ void spectral_mul(const S* a, long long a_row_stride, long long a_elem_stride,
                             const S* b, long long b_row_stride, long long b_elem_stride,
                             S* z, long long z_row_stride, long long z_elem_stride,
                             long long rows, long long n, int conj)
{
    const long long pairs = n / 2 + 1;
    const long long items = rows * pairs;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += stride) {
        const long long row = it / pairs;
        const long long k = it - row * pairs;
        const S* ar = a + row * a_row_stride;
        const S* br = b + row * b_row_stride;
        S* zr = z + row * z_row_stride;
        if (k == 0 || 2 * k == n) {
            const C v = to_compute(ar[k * a_elem_stride]) * to_compute(br[k * b_elem_stride]);
            store_as(zr + k * z_elem_stride, v);
        } else {
            const C xr = to_compute(ar[k * a_elem_stride]);
            const C xi = to_compute(ar[(n - k) * a_elem_stride]);
            const C yr = to_compute(br[k * b_elem_stride]);
            const C yi = to_compute(br[(n - k) * b_elem_stride]);
            C pr, pi;
            pair_mul(xr, xi, yr, yi, conj != 0, pr, pi);
            store_as(zr + k * z_elem_stride, pr);
            store_as(zr + (n - k) * z_elem_stride, pi);
        }
    }
}

// bc_accumulate<S, C>: block-circulant product in the packed domain, for every token t,
// output block o and frequency pair k:
//     Y[t, o] = sum_{i < nin} W[o, i] * X[t, i]        (conj(W[o, i]) when conj = 1)
// with packed spectra of length b (blocks contiguous, element stride 1).  For C(w)^T pass the
// strides of W with its two block axes swapped and conj = 1.
// Parameters:
//   x            const S*         X[0, 0, 0]: packed input blocks
//   x_row_stride long long        elements between tokens of X (blocks are b apart)
//   w            const S*         W[0, 0, 0]: packed kernel spectra
//   w_out_stride long long        elements between W[o, i] and W[o+1, i]
//   w_in_stride  long long        elements between W[o, i] and W[o, i+1]
//   y            S*               Y[0, 0, 0]: packed output blocks (must not overlap x or w)
//   y_row_stride long long        elements between tokens of Y (blocks are b apart)
//   tokens       long long        number of tokens (rows of X and Y)
//   nout         int              output blocks per token
//   nin          int              input blocks per token
//   b            int              block length (any b >= 1)
//   conj         int              1: conjugate W
// Launch: any 1-D grid and block; items tokens * nout * (b/2 + 1), grid-strided; consecutive
// threads take consecutive frequencies of one output block (coalesced).
template <typename S, typename C>
__global__ void bc_accumulate(const S* x, long long x_row_stride, const S* w,
                              long long w_out_stride, long long w_in_stride, S* y,
                              long long y_row_stride, long long tokens, int nout, int nin,
                              int b, int conj)
{
    const long long pairs = b / 2 + 1;
    const long long items = tokens * nout * pairs;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += stride) {
        const long long k = it % pairs;
        const long long to = it / pairs;
        const long long o = to % nout;
        const long long t = to / nout;
        const S* xt = x + t * x_row_stride;
        const S* wo = w + o * w_out_stride;
        S* yo = y + t * y_row_stride + o * (long long)b;
        const bool real = (k == 0) || (2 * k == b);
        C accr = (C)0, acci = (C)0;
        for (int i = 0; i < nin; ++i) {
            const S* xi = xt + (long long)i * b;
            const S* wi = wo + (long long)i * w_in_stride;
            if (real) {
                accr += to_compute(wi[k]) * to_compute(xi[k]);
            } else {
                C pr, pi;
                pair_mul(to_compute(wi[k]), to_compute(wi[b - k]), to_compute(xi[k]),
                         to_compute(xi[b - k]), conj != 0, pr, pi);
                accr += pr;
                acci += pi;
            }
        }
        store_as(yo + k, accr);
        if (!real) store_as(yo + (b - k), acci);
    }
}
