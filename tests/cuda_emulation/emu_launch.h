// Host side of the CPU emulation: the kernel launcher and the type-erased C ABI that
// emulator.py calls through ctypes.  See cuda_runtime_emu.h for the execution model.
#pragma once

#include <cstdlib>
#include <exception>
#include <thread>
#include <tuple>
#include <utility>

#include "cuda_runtime_emu.h"

namespace emu {

struct LaunchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline double barrier_timeout_s() {
  const char* env = std::getenv("CIRCFFT_EMU_BARRIER_TIMEOUT");
  const double t = env ? std::atof(env) : 0.0;
  return t > 0.0 ? t : 60.0;
}

// Fill the dynamic shared memory a block may use with 0xFF bytes: NaN in every float format,
// so a read of memory the block never wrote is visible in the results.
inline void poison_dynamic_smem(std::size_t bytes) {
  std::memset(circfft_emu_dynamic_smem, 0xFF, bytes);
}

// Run `kernel` over `grid` x `block` with `smem_bytes` of dynamic shared memory, like
// kernel<<<grid, block, smem_bytes>>>(args...) followed by a device synchronisation.
// Blocks run one after another; the blockDim threads run concurrently.  Throws LaunchError
// on a bad configuration or when the kernel breaks a barrier rule (see BlockBarrier).
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem_bytes, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64)
    throw LaunchError("invalid block dimensions (" + std::to_string(block.x) + ", " +
                      std::to_string(block.y) + ", " + std::to_string(block.z) +
                      "): CUDA allows 1..1024 threads per block, z <= 64");
  if (nblocks == 0 || grid.y > 65535 || grid.z > 65535)
    throw LaunchError("invalid grid dimensions (" + std::to_string(grid.x) + ", " +
                      std::to_string(grid.y) + ", " + std::to_string(grid.z) + ")");
  if (smem_bytes > kMaxDynamicSmem)
    throw LaunchError("dynamic shared memory of " + std::to_string(smem_bytes) +
                      " bytes exceeds the " + std::to_string(kMaxDynamicSmem) +
                      "-byte per-block limit of sm_90");

  blockDim = block;
  gridDim = grid;
  BlockBarrier barrier(static_cast<int>(nthreads), barrier_timeout_s());
  std::vector<std::array<unsigned char, 16>> slots(nthreads);
  g_launch = LaunchState{&barrier, &slots};
  poison_dynamic_smem(smem_bytes);
  // Kernel parameters are converted once, as cudaLaunchKernel copies them once.
  const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(args)...);

  auto cuda_thread = [&](unsigned tid) {
    threadIdx = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    try {
      for (unsigned long long b = 0; b < nblocks; ++b) {
        blockIdx = uint3{static_cast<unsigned>(b % grid.x),
                         static_cast<unsigned>((b / grid.x) % grid.y),
                         static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
        std::apply(kernel, params);
        barrier.end_block([&] { poison_dynamic_smem(smem_bytes); });
      }
    } catch (const LaunchAborted&) {
      // The launch failed elsewhere; the reason is already recorded.
    } catch (const std::exception& e) {
      barrier.fail(std::string("exception in a CUDA thread: ") + e.what());
    } catch (...) {
      barrier.fail("unknown exception in a CUDA thread");
    }
  };

  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  try {
    for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(cuda_thread, t);
  } catch (const std::exception& e) {
    barrier.fail(std::string("could not start the block's threads: ") + e.what());
  }
  for (auto& th : threads) th.join();
  g_launch = LaunchState{};
  if (barrier.failed()) throw LaunchError(barrier.why());
}

// ---------------------------------------------------------------------------------------------
// Type-erased ABI: kernel arguments arrive as void* pointers to values, as for
// cudaLaunchKernel; the signature string tells the caller how to build those values.
// ---------------------------------------------------------------------------------------------
// Code of one parameter type: 'p' any pointer, 'f' float, 'd' double, '?' bool, integers by
// size ('b' 1, 'h' 2, 'i' 4, 'q' 8 bytes; upper case when unsigned), 'X' anything else.
template <class T>
constexpr char arg_code() {
  if constexpr (std::is_pointer_v<T>) return 'p';
  else if constexpr (std::is_same_v<T, float>) return 'f';
  else if constexpr (std::is_same_v<T, double>) return 'd';
  else if constexpr (std::is_same_v<T, bool>) return '?';
  else if constexpr (std::is_integral_v<T>) {
    constexpr char codes[] = {'b', 'h', 0, 'i', 0, 0, 0, 'q'};
    constexpr char c = codes[sizeof(T) - 1];
    return std::is_signed_v<T> ? c : static_cast<char>(c - 'a' + 'A');
  } else
    return 'X';
}

template <class... P>
const char* signature_of(void (*)(P...)) {
  static const char sig[] = {arg_code<std::decay_t<P>>()..., '\0'};
  return sig;
}

template <class... P, std::size_t... I>
void launch_from_pointers(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem,
                          void* const* args, std::index_sequence<I...>) {
  launch(kernel, grid, block, smem, *static_cast<const std::decay_t<P>*>(args[I])...);
}

// Returns 0, or 1 with the reason in err (NUL-terminated, truncated to err_len).
template <class... P>
int launch_erased(void (*kernel)(P...), const unsigned* grid, const unsigned* block,
                  std::size_t smem, void* const* args, char* err, std::size_t err_len) {
  try {
    launch_from_pointers(kernel, dim3(grid[0], grid[1], grid[2]),
                         dim3(block[0], block[1], block[2]), smem, args,
                         std::index_sequence_for<P...>{});
    return 0;
  } catch (const std::exception& e) {
    if (err && err_len) {
      std::strncpy(err, e.what(), err_len - 1);
      err[err_len - 1] = '\0';
    }
    return 1;
  }
}

using ErasedLaunch = int (*)(const unsigned*, const unsigned*, std::size_t, void* const*, char*,
                             std::size_t);
struct Entry {
  const char* name_expression;
  const char* signature;
  ErasedLaunch launch;
};

}  // namespace emu

// One table row per kernel instantiation: CIRCFFT_EMU_ENTRY(rdfft_rows<float, float>).
#define CIRCFFT_EMU_ENTRY(...)                                                                \
  emu::Entry {                                                                                \
    #__VA_ARGS__, emu::signature_of(&__VA_ARGS__),                                            \
        [](const unsigned* g, const unsigned* b, std::size_t s, void* const* a, char* e,      \
           std::size_t n) { return emu::launch_erased(&__VA_ARGS__, g, b, s, a, e, n); }      \
  }

// The C functions emulator.py looks up, over a table of entries.
#define CIRCFFT_EMU_DEFINE_EXPORTS(table)                                                     \
  extern "C" int circfft_emu_count() {                                                        \
    return static_cast<int>(sizeof(table) / sizeof(table[0]));                                \
  }                                                                                           \
  extern "C" const char* circfft_emu_name(int k) { return table[k].name_expression; }        \
  extern "C" const char* circfft_emu_signature(int k) { return table[k].signature; }         \
  extern "C" int circfft_emu_launch(int k, const unsigned* grid, const unsigned* block,       \
                                    std::size_t smem, void* const* args, char* err,           \
                                    std::size_t err_len) {                                    \
    return table[k].launch(grid, block, smem, args, err, err_len);                            \
  }
