// Small kernels that exercise the CPU emulation shim itself (tests/test_cuda_emulated.py).
// Plain CUDA in the project's language subset: they compile with nvcc/NVRTC as they are.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Sum of x[0:n] per block with a static __shared__ tree reduction.
//   x    : const T*   input (n elements, read by every block)
//   out  : T*         out[blockIdx.x] = sum(x) + blockIdx.x
//   n    : long long  element count
// blockDim.x must be a power of two <= 256.
template <typename T>
__global__ void __launch_bounds__(256) block_sum(const T* __restrict__ x, T* __restrict__ out,
                                                 long long n) {
  __shared__ T partial[256];
  const unsigned t = threadIdx.x;
  T acc = T(0);
  for (long long i = t; i < n; i += blockDim.x) acc += x[i];
  partial[t] = acc;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0] + T(blockIdx.x);
}

// Reverse each row of x through dynamic shared memory, `rounds` times (so an even count
// returns the row unchanged), with __syncthreads inside the loop.
//   x    : float*     rows of length n, row r at x + r * row_stride; overwritten
//   n    : long long  row length (n * 4 bytes of dynamic shared memory)
//   row_stride : long long  elements between rows
//   rounds : int      number of reversals
// One block per row.
__global__ void smem_reverse(float* x, long long n, long long row_stride, int rounds) {
  extern __shared__ __align__(16) unsigned char circfft_smem[];
  float* buf = reinterpret_cast<float*>(circfft_smem);
  float* row = x + blockIdx.x * row_stride;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) buf[i] = row[i];
  __syncthreads();
  for (int r = 0; r < rounds; ++r) {
    float mine[64];  // n <= 64 * blockDim.x
    int count = 0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) mine[count++] = buf[n - 1 - i];
    __syncthreads();
    count = 0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) buf[i] = mine[count++];
    __syncthreads();
  }
  for (long long i = threadIdx.x; i < n; i += blockDim.x) row[i] = buf[i];
}

// Copy of the first n bytes of dynamic shared memory as the block finds it (never written):
// the emulation fills it with 0xFF so uninitialised reads are visible.
//   out : unsigned char*  n bytes
//   n   : int
__global__ void smem_peek(unsigned char* out, int n) {
  extern __shared__ __align__(16) unsigned char circfft_smem[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = circfft_smem[i];
}

// Warp shuffles: out[4*t + 0] = xor-butterfly warp sum, [1] = value of lane 0 (__shfl_sync),
// [2] = __shfl_down_sync by 1, [3] = __shfl_xor_sync by 1 with width 8.
//   x   : const float*  one value per thread of the single block
//   out : float*        4 per thread
__global__ void warp_shuffles(const float* x, float* out) {
  const unsigned t = threadIdx.x;
  float v = x[t];
  float s = v;
  for (int m = 16; m > 0; m /= 2) s += __shfl_xor_sync(0xffffffffu, s, m);
  out[4 * t + 0] = s;
  out[4 * t + 1] = __shfl_sync(0xffffffffu, v, 0);
  out[4 * t + 2] = __shfl_down_sync(0xffffffffu, v, 1);
  out[4 * t + 3] = __shfl_xor_sync(0xffffffffu, v, 1, 8);
}

// Storage conversions: per element, half and bf16 bits of x (round to nearest even) and the
// float values they convert back to.
//   x        : const float*           n inputs
//   half_out : __half*                n
//   bf16_out : __nv_bfloat16*         n
//   back     : float*                 2n: [half2float(half_out), bfloat162float(bf16_out)]
//   n        : long long
__global__ void convert_storage(const float* x, __half* half_out, __nv_bfloat16* bf16_out,
                                float* back, long long n) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __half h = __float2half_rn(x[i]);
  const __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
  half_out[i] = h;
  bf16_out[i] = b;
  back[i] = __half2float(h);
  back[n + i] = __bfloat162float(b);
}

// sincospi in both precisions: out32 = [sinpif(x), cospif(x)], out64 = [sinpi, cospi].
//   x : const double*  n
//   out32 : float*     2n
//   out64 : double*    2n
//   n : long long
__global__ void sincospi_table(const double* x, float* out32, double* out64, long long n) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float s, c;
  sincospif((float)x[i], &s, &c);
  out32[i] = s;
  out32[n + i] = c;
  double sd, cd;
  sincospi(x[i], &sd, &cd);
  out64[i] = sd;
  out64[n + i] = cd;
}

// Deliberately racy: every thread reads its neighbour's slot of shared memory after writing
// its own, WITHOUT a __syncthreads between (the `synced` flag adds it).  The emulation runs
// threads concurrently, so without the barrier some reads see the slot's old value.
//   out : int*  out[t] = what thread t read from slot t+1 (mod blockDim.x)
//   rounds : int  number of write/read rounds (more rounds, more chances to race)
//   synced : int  non-zero adds the missing barriers
__global__ void racy_neighbour(int* out, int rounds, int synced) {
  __shared__ int slot[256];
  const unsigned t = threadIdx.x;
  int seen = 0;
  for (int r = 1; r <= rounds; ++r) {
    slot[t] = r * 1000 + (int)t;
    if (synced) __syncthreads();
    const int v = slot[(t + 1) % blockDim.x];
    if (v != r * 1000 + (int)((t + 1) % blockDim.x)) ++seen;
    if (synced) __syncthreads();
  }
  out[t] = seen;
}

// Breaks the barrier contract on purpose: thread 0 returns before the __syncthreads that
// the others reach.  The emulation must report it (not hang).
//   out : float*
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}
