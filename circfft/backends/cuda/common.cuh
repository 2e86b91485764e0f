// Shared device helpers of the circfft CUDA kernels.
//
// Storage types (what the caller's array holds): float, double, __half, __nv_bfloat16.
// Compute types: float for float/__half/__nv_bfloat16 storage, double for double.  Every
// kernel is a template <typename S, typename C> (storage, compute) and converts once on load
// and once on store, so half-precision data is transformed with float32 arithmetic.
//
// The sources keep to a small CUDA C++17 subset (see the kernel contract in docs/gpu.rst) so
// that they also compile on the CPU under the emulation shim used by the tests.
#pragma once

// The half-precision headers are included only by the modules that need them (the backend
// compiles one module per storage dtype), so float32/float64 kernels build even where NVRTC
// cannot find cuda_fp16.h / cuda_bf16.h.
#ifdef CIRCFFT_WITH_HALF
#include <cuda_fp16.h>
#endif
#ifdef CIRCFFT_WITH_BF16
#include <cuda_bf16.h>
#endif

// ---------------------------------------------------------------------------------------------
// storage <-> compute conversions
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
#ifdef CIRCFFT_WITH_HALF
__device__ __forceinline__ float to_compute(__half v) { return __half2float(v); }
#endif
#ifdef CIRCFFT_WITH_BF16
__device__ __forceinline__ float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif

__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(double* p, double v) { *p = v; }
#ifdef CIRCFFT_WITH_HALF
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half_rn(v); }
#endif
#ifdef CIRCFFT_WITH_BF16
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
#endif

// ---------------------------------------------------------------------------------------------
// index helpers
// ---------------------------------------------------------------------------------------------
// The lowest `bits` bits of v, reversed (bits = 0 gives 0).  Plain C++ (no __brev), so the
// emulation shim needs nothing special.
__device__ __forceinline__ unsigned int reverse_bits(unsigned int v, int bits)
{
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
    v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
    v = (v >> 16) | (v << 16);
    return bits > 0 ? (v >> (32 - bits)) : 0u;
}

// Shared-memory arrays hold real and imaginary parts separately, with one padding element
// after every 32 (the strided accesses of the butterfly stages then spread over the banks),
// and the low five bits of the index XOR-ed with bits 10-14 (a bijection inside each aligned
// group of 32, so the size is unchanged): the bit-reversed reads of the split and the final
// store, 32 consecutive outputs at positions c + j m/32, then hit 32 different banks for every
// m up to 2^15 instead of up to 16 of them hitting one bank.
__device__ __forceinline__ int padded(int p)
{
    const int q = p ^ ((p >> 10) & 31);
    return q + (q >> 5);
}

// Elements of one padded shared-memory array of m complex values (per real/imag part).
__device__ __forceinline__ int padded_size(int m) { return m + (m >> 5) + 1; }

// ---------------------------------------------------------------------------------------------
// complex helpers (separate real/imaginary scalars: no struct, nothing to align)
// ---------------------------------------------------------------------------------------------
template <typename C>
__device__ __forceinline__ void cmul(C ar, C ai, C br, C bi, C& zr, C& zi)
{
    const C r = ar * br - ai * bi;
    const C i = ar * bi + ai * br;
    zr = r;
    zi = i;
}

// Twiddle W_n^k = exp(-2 pi i k / n), 0 <= k < n/2, from a two-level table built on the host
// (circfft/backends/cupy_backend.py: twiddle_table):
//   tw[2j], tw[2j+1]                          = cos, -sin of 2 pi j / n,        j < 2^tw_bits
//   tw[2(2^tw_bits + h)], tw[2(2^tw_bits+h)+1] = cos, -sin of 2 pi h 2^tw_bits / n
// W^k = hi[k >> tw_bits] * lo[k & (2^tw_bits - 1)].  For n/2 <= 2^16 the host makes the low
// table cover every k (tw_bits = log2(n/2)), so the twiddles are single table entries rounded
// once from float64; longer rows pay one complex product (about one more ulp) to keep the
// table at O(sqrt(n)) entries.  `conj` gives the inverse transform's twiddles.
template <typename C>
__device__ __forceinline__ void twiddle(const C* __restrict__ tw, int tw_bits, unsigned int k,
                                        bool conj, C& wr, C& wi)
{
    const unsigned int lo = k & ((1u << tw_bits) - 1u);
    const unsigned int hi = k >> tw_bits;
    C r = tw[2u * lo];
    C i = tw[2u * lo + 1u];
    if (hi != 0u) {
        const C* __restrict__ th = tw + (2u << tw_bits);
        cmul(th[2u * hi], th[2u * hi + 1u], r, i, r, i);
    }
    wr = r;
    wi = conj ? -i : i;
}
