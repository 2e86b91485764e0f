// Stand-in for CUDA's <cuda_fp16.h> under the CPU emulation (found through -I ahead of any
// CUDA installation).  The kernels' contract allows __half only through __half2float and
// __float2half_rn, so only those exist here: any other use fails to compile, which is the
// point (it would be outside the language subset the emulation validates).
#pragma once
#include "cuda_runtime_emu.h"

// IEEE binary16 storage; conversions through GCC's _Float16 (round to nearest even, the same
// as CUDA's __float2half_rn and numpy's float32 -> float16 cast).
struct __half {
  unsigned short __x;
};
static_assert(sizeof(__half) == 2, "__half must be 2 bytes");

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.__x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);
  __half h;
  std::memcpy(&h.__x, &f, 2);
  return h;
}
