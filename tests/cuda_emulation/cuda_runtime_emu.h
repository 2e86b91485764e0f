// CPU emulation of the CUDA C++ subset used by circfft's kernels (circfft/backends/cuda/).
//
// Purpose: let CI, which has no GPU, compile the project's unmodified .cu sources with g++
// (C++20) and check their numerics against numpy.  It is a test tool, not a simulator of GPU
// timing or of the memory model.
//
// Execution model
// ---------------
// * `emu::launch` (emu_launch.h) runs the blocks of a grid one after another.  Each CUDA
//   thread of a block is a real std::thread; the same blockDim threads are reused for every
//   block of a launch, and an end-of-block barrier separates consecutive blocks.
// * Nothing is serialised: threads of a block run truly concurrently, so a missing
//   __syncthreads() is a real data race here as it is on a GPU (tests/test_cuda_emulated.py
//   checks that a deliberately racy kernel does go wrong).
// * `__shared__` variables at function scope become function-local `static`s: one copy per
//   kernel instantiation, shared by the threads of the block that is running (blocks never
//   overlap, so one copy is enough).
// * Dynamic shared memory: the contract spells it exactly
//       extern __shared__ __align__(16) unsigned char circfft_smem[];
//   A declaration cannot be both `extern` and `static`, so the build step (emulator.py)
//   replaces that one declaration by CIRCFFT_EMU_DYNAMIC_SMEM_DECL (below) in its copy of the
//   sources, and refuses sources with any other `extern __shared__`.  The buffer is refilled
//   with 0xFF bytes (NaN for every float type) before each block, so reading shared memory
//   that the block did not write shows up as NaN.
// * __syncthreads() is a barrier over the threads of the block.  It checks the contract's
//   rule that it is reached by ALL threads: a thread that leaves the kernel while others wait
//   at a barrier (or the reverse) aborts the launch with an error, and a barrier nobody
//   completes within CIRCFFT_EMU_BARRIER_TIMEOUT seconds (default 60) aborts it too.
// * Warp shuffles/votes exchange values through a per-thread slot array and the block
//   barrier, so they are supported ONLY when every thread of the block executes the same
//   shuffle call uniformly (convergent, same call site) -- the contract's rule.  __syncwarp()
//   is a block barrier for the same reason.
// * Memory visibility: the barrier is a mutex + condition variable, which orders all memory
//   accesses before it against all accesses after it (as __syncthreads does).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <math.h>  // global-namespace overloads (sin(float), fmaf, ...), as NVRTC provides
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define CIRCFFT_CUDA_EMULATION 1
// What NVRTC (cupy's compiler) defines; __CUDA_ARCH__ as for an H100 (sm_90).
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#ifndef __CUDACC_RTC__
#define __CUDACC_RTC__ 1
#endif
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

// ---------------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __constant__ static

namespace emu {
//: Largest dynamic shared memory a block may ask for: 227 KiB, the H100/H200 opt-in limit.
inline constexpr std::size_t kMaxDynamicSmem = 227 * 1024;
}  // namespace emu

// The one global buffer behind every kernel's dynamic shared memory (see header comment).
alignas(16) inline unsigned char circfft_emu_dynamic_smem[emu::kMaxDynamicSmem];
#define CIRCFFT_EMU_DYNAMIC_SMEM_DECL unsigned char* const circfft_smem = circfft_emu_dynamic_smem;

// ---------------------------------------------------------------------------------------------
// Vector types and built-in index variables
// ---------------------------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define CIRCFFT_EMU_VEC2(T, name, al)                                                         \
  struct __attribute__((aligned(al))) name {                                                  \
    T x, y;                                                                                   \
  };                                                                                          \
  inline name make_##name(T x, T y) { return name{x, y}; }
#define CIRCFFT_EMU_VEC4(T, name, al)                                                         \
  struct __attribute__((aligned(al))) name {                                                  \
    T x, y, z, w;                                                                             \
  };                                                                                          \
  inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
CIRCFFT_EMU_VEC2(float, float2, 8)
CIRCFFT_EMU_VEC4(float, float4, 16)
CIRCFFT_EMU_VEC2(double, double2, 16)
CIRCFFT_EMU_VEC2(int, int2, 8)
CIRCFFT_EMU_VEC4(int, int4, 16)
CIRCFFT_EMU_VEC2(unsigned int, uint2, 8)
CIRCFFT_EMU_VEC4(unsigned int, uint4, 16)
CIRCFFT_EMU_VEC2(long long, longlong2, 16)
CIRCFFT_EMU_VEC2(unsigned long long, ulonglong2, 16)
#undef CIRCFFT_EMU_VEC2
#undef CIRCFFT_EMU_VEC4
struct float3 {
  float x, y, z;
};
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// Per-thread indices (set by the launcher); the dimensions are the same for every thread of a
// launch, and launches never overlap, so plain globals suffice for them.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Block barrier with contract checks
// ---------------------------------------------------------------------------------------------
namespace emu {

// Thrown inside the CUDA threads to unwind the kernel once the launch has failed.
struct LaunchAborted {};

class BlockBarrier {
 public:
  explicit BlockBarrier(int nthreads, double timeout_s)
      : n_(nthreads), timeout_(std::chrono::duration<double>(timeout_s)) {}

  // __syncthreads(): every thread of the block must arrive; none may have left the kernel.
  void sync() {
    std::unique_lock<std::mutex> lock(m_);
    check_alive_locked();
    if (finished_ > 0)
      fail_locked(std::to_string(finished_) +
                  " thread(s) of the block already returned from the kernel while another "
                  "reached __syncthreads() (or a warp shuffle/vote): the barrier is not "
                  "reached uniformly by all threads");
    wait_phase_locked(lock, waiting_);
  }

  // Called once by every thread when its kernel body returns for the current block; returns
  // when all threads of the block are done, so the next block may reuse shared memory.
  // `between_blocks` runs once, on the last thread to arrive, before anyone is released.
  template <class F>
  void end_block(F&& between_blocks) {
    std::unique_lock<std::mutex> lock(m_);
    check_alive_locked();
    if (waiting_ > 0)
      fail_locked("a thread returned from the kernel while " + std::to_string(waiting_) +
                  " other(s) wait at __syncthreads() (or a warp shuffle/vote): the barrier is "
                  "not reached uniformly by all threads");
    if (finished_ + 1 == n_) between_blocks();
    wait_phase_locked(lock, finished_);
  }

  // Mark the launch failed (first message wins) and wake every waiter.
  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lock(m_);
    if (!failed_) {
      failed_ = true;
      why_ = why;
    }
    cv_.notify_all();
  }

  bool failed() {
    std::lock_guard<std::mutex> lock(m_);
    return failed_;
  }
  std::string why() {
    std::lock_guard<std::mutex> lock(m_);
    return why_;
  }

 private:
  void check_alive_locked() {
    if (failed_) throw LaunchAborted{};
  }
  [[noreturn]] void fail_locked(const std::string& why) {
    if (!failed_) {
      failed_ = true;
      why_ = why;
    }
    cv_.notify_all();
    throw LaunchAborted{};
  }
  // Count this thread into `counter`; the last of n_ threads opens the next phase.
  void wait_phase_locked(std::unique_lock<std::mutex>& lock, int& counter) {
    const unsigned long gen = generation_;
    if (++counter == n_) {
      counter = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    const bool released = cv_.wait_for(lock, timeout_, [&] { return generation_ != gen || failed_; });
    if (!released)
      fail_locked("barrier timeout: not all threads of the block reached the same "
                  "__syncthreads() (deadlock, or a barrier inside divergent code)");
    check_alive_locked();
  }

  const int n_;
  const std::chrono::duration<double> timeout_;
  std::mutex m_;
  std::condition_variable cv_;
  int waiting_ = 0;   // threads waiting at __syncthreads in the current phase
  int finished_ = 0;  // threads that returned from the kernel for the current block
  unsigned long generation_ = 0;
  bool failed_ = false;
  std::string why_;
};

// State of the launch in progress (one launch at a time; see emu_launch.h).
struct LaunchState {
  BlockBarrier* barrier = nullptr;
  // One 16-byte slot per thread of the block for shuffles and votes.
  std::vector<std::array<unsigned char, 16>>* slots = nullptr;
};
inline LaunchState g_launch;

inline unsigned linear_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
inline unsigned block_threads() { return blockDim.x * blockDim.y * blockDim.z; }

}  // namespace emu

inline void __syncthreads() { emu::g_launch.barrier->sync(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::g_launch.barrier->sync(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------
// Warp shuffles and votes (block-uniform only, see header comment)
// ---------------------------------------------------------------------------------------------
namespace emu {

// Publish `v` in this thread's slot, wait for the block, read lane `src` of this thread's
// warp (an out-of-range source returns the thread's own value, as CUDA does), wait again so
// the slots may be reused.
template <class T>
T exchange(T v, int src_lane_in_warp, bool src_valid) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16,
                "emulated shuffles take trivially copyable values of at most 16 bytes");
  auto& slots = *g_launch.slots;
  const unsigned tid = linear_tid();
  std::memcpy(slots[tid].data(), &v, sizeof(T));
  __syncthreads();
  T out = v;
  const unsigned src = (tid / warpSize) * warpSize + static_cast<unsigned>(src_lane_in_warp);
  if (src_valid && src < block_threads()) std::memcpy(&out, slots[src].data(), sizeof(T));
  __syncthreads();
  return out;
}

inline int lane_id() { return static_cast<int>(linear_tid() % warpSize); }

}  // namespace emu

template <class T>
T __shfl_sync(unsigned, T var, int src_lane, int width = warpSize) {
  const int lane = emu::lane_id();
  const int base = lane & ~(width - 1);
  return emu::exchange(var, base + (src_lane & (width - 1)), true);
}
template <class T>
T __shfl_xor_sync(unsigned, T var, int lane_mask, int width = warpSize) {
  const int lane = emu::lane_id();
  const int base = lane & ~(width - 1);
  const int src = lane ^ lane_mask;
  return emu::exchange(var, src, src >= base && src < base + width);
}
template <class T>
T __shfl_down_sync(unsigned, T var, unsigned delta, int width = warpSize) {
  const int lane = emu::lane_id();
  const int base = lane & ~(width - 1);
  const int src = lane + static_cast<int>(delta);
  return emu::exchange(var, src, src < base + width);
}
template <class T>
T __shfl_up_sync(unsigned, T var, unsigned delta, int width = warpSize) {
  const int lane = emu::lane_id();
  const int base = lane & ~(width - 1);
  const int src = lane - static_cast<int>(delta);
  return emu::exchange(var, src, src >= base);
}

namespace emu {
// Ballot over the thread's warp (block-uniform only).
inline unsigned ballot(int pred) {
  auto& slots = *g_launch.slots;
  const unsigned tid = linear_tid();
  slots[tid][0] = pred ? 1 : 0;
  __syncthreads();
  unsigned mask = 0;
  const unsigned base = (tid / warpSize) * warpSize;
  for (unsigned l = 0; l < static_cast<unsigned>(warpSize) && base + l < block_threads(); ++l)
    if (slots[base + l][0]) mask |= 1u << l;
  __syncthreads();
  return mask;
}
// Count of the block's threads with a non-zero predicate (block-uniform only).
inline int block_count(int pred) {
  auto& slots = *g_launch.slots;
  slots[linear_tid()][0] = pred ? 1 : 0;
  __syncthreads();
  int count = 0;
  for (unsigned t = 0; t < block_threads(); ++t) count += slots[t][0];
  __syncthreads();
  return count;
}
}  // namespace emu

inline unsigned __ballot_sync(unsigned, int pred) { return emu::ballot(pred); }
inline int __any_sync(unsigned, int pred) { return emu::ballot(pred) != 0; }
inline int __all_sync(unsigned, int pred) { return emu::ballot(!pred) == 0; }
inline int __syncthreads_count(int pred) { return emu::block_count(pred); }
inline int __syncthreads_or(int pred) { return emu::block_count(pred) != 0; }
inline int __syncthreads_and(int pred) {
  return emu::block_count(pred) == static_cast<int>(emu::block_threads());
}

// ---------------------------------------------------------------------------------------------
// Math
// ---------------------------------------------------------------------------------------------
namespace emu {
// sin(pi x), cos(pi x) with the exact argument reduction CUDA's sincospi performs: the result
// is exact (0, +-1) at multiples of 1/2, and otherwise within ~1 ulp of double precision.
inline void sincospi_exact(double x, double* s, double* c) {
  if (!std::isfinite(x)) {
    *s = *c = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  const double r2 = std::fmod(x, 2.0);       // exact, in (-2, 2)
  const double q = std::nearbyint(2.0 * r2);  // nearest multiple of 1/2, in [-4, 4]
  const double r = r2 - 0.5 * q;              // exact, |r| <= 1/4
  const double sr = (r == 0.0) ? 0.0 * std::copysign(1.0, x) : std::sin(M_PI * r);
  const double cr = std::cos(M_PI * r);
  switch ((static_cast<int>(q) % 4 + 4) % 4) {
    case 0: *s = sr;  *c = cr;  break;
    case 1: *s = cr;  *c = -sr; break;
    case 2: *s = -sr; *c = -cr; break;
    default: *s = -cr; *c = sr; break;
  }
  if (*c == 0.0) *c = 0.0;  // CUDA returns +0 for cos at odd multiples of 1/2
}
}  // namespace emu

inline void sincospi(double x, double* s, double* c) { emu::sincospi_exact(x, s, c); }
inline void sincospif(float x, float* s, float* c) {
  double sd, cd;
  emu::sincospi_exact(x, &sd, &cd);
  *s = static_cast<float>(sd);
  *c = static_cast<float>(cd);
}
inline double sinpi(double x) { double s, c; sincospi(x, &s, &c); return s; }
inline double cospi(double x) { double s, c; sincospi(x, &s, &c); return c; }
inline float sinpif(float x) { float s, c; sincospif(x, &s, &c); return s; }
inline float cospif(float x) { float s, c; sincospif(x, &s, &c); return c; }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincos(double x, double* s, double* c) { *s = std::sin(x); *c = std::cos(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
inline float __expf(float x) { return std::exp(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// CUDA's global min/max accept mixed integer types; mirror that with the common type.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// ---------------------------------------------------------------------------------------------
// Bit manipulation and reinterpretation
// ---------------------------------------------------------------------------------------------
inline unsigned int __brev(unsigned int x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) |
         __brev(static_cast<unsigned>(x >> 32));
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned int __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
template <class T>
inline T __ldg(const T* p) { return *p; }

// ---------------------------------------------------------------------------------------------
// Atomics on 32/64-bit integer and floating types (through C++20 std::atomic_ref)
// ---------------------------------------------------------------------------------------------
template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T>
inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v); }
template <class T>
inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;
}
template <class T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
