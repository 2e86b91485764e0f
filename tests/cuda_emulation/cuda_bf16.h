// Stand-in for CUDA's <cuda_bf16.h> under the CPU emulation.  Only __bfloat162float and
// __float2bfloat16_rn exist (the kernels' contract); see cuda_fp16.h.
#pragma once
#include "cuda_runtime_emu.h"

// bfloat16 storage: the upper 16 bits of an IEEE float32.
struct __nv_bfloat16 {
  unsigned short __x;
};
static_assert(sizeof(__nv_bfloat16) == 2, "__nv_bfloat16 must be 2 bytes");

inline float __bfloat162float(__nv_bfloat16 h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h.__x) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
// Round to nearest, ties to even, by bit manipulation; NaN stays a (quiet) NaN of the same
// sign instead of being rounded into infinity.
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h.__x = static_cast<unsigned short>((u >> 16) | 0x0040u);
    return h;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  h.__x = static_cast<unsigned short>(u >> 16);
  return h;
}
