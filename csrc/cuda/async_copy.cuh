// async_copy.cuh: copies from global to shared memory that run in the
// background, so that a warp can keep many chunks of a stream in flight
// without holding them in registers.
//
// On sm_80 and newer a copy is one cp.async (LDGSTS): the bytes go from L2
// to shared memory without passing through registers (nor L1, for 16-byte
// copies). Each thread groups the copies it issued (commit) and later waits
// until at most N of its newest groups are still pending. The copies a
// thread waited for are visible to the other threads of its warp after a
// __syncwarp(). Older GPUs (sm_75) copy synchronously with loads and
// stores: the same contents, with no overlap.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace macko {
namespace cuda {

// Copies 16 bytes from `src` (global memory) to the shared-space address
// `dst` (a 32-bit address in the block's shared window, as
// __cvta_generic_to_shared gives), both 16-byte aligned. Callers that keep
// their shared addresses in 32 bits spend no instructions converting a
// generic pointer per copy (with registers at the cap, the compiler
// re-derives the window's generic base at nearly every conversion).
__device__ __forceinline__ void copy16_async(uint32_t dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
#else
  *static_cast<uint4*>(__cvta_shared_to_generic(dst)) = __ldg(static_cast<const uint4*>(src));
#endif
}

// The same from a generic pointer `dst` into shared memory.
__device__ __forceinline__ void copy16_async(void* dst, const void* src) {
  copy16_async(static_cast<uint32_t>(__cvta_generic_to_shared(dst)), src);
}

// The same for 4 or 8 bytes (kBytes; both addresses aligned to it), for the
// ends of arrays whose length is not a multiple of 16 bytes: a 16-byte copy
// there would read past the end.
template <int kBytes>
__device__ __forceinline__ void copy_small_async(uint32_t dst, const void* src) {
  static_assert(kBytes == 4 || kBytes == 8, "cp.async.ca copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(dst), "l"(src), "n"(kBytes) : "memory");
#else
  using Word = std::conditional_t<kBytes == 8, uint2, unsigned>;
  *static_cast<Word*>(__cvta_shared_to_generic(dst)) = __ldg(static_cast<const Word*>(src));
#endif
}

// Closes the group of copies this thread issued since the last commit.
__device__ __forceinline__ void commit_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's newest groups are still in
// flight (older GPUs copy synchronously: nothing to wait for).
template <int kPending>
__device__ __forceinline__ void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
#endif
}

}  // namespace cuda
}  // namespace macko
