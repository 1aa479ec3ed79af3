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

// Shared-memory barriers (mbarrier) that let warps of a block hand buffers to
// one another without a block-wide barrier: a barrier completes a phase when
// its expected count of arrivals has arrived, and then starts the next; a
// waiter names the phase by its parity. Arrivals release, waits acquire (at
// block scope), so what a warp stored before arriving is visible to a warp
// that waited for the phase. `address` is a 32-bit shared-space address of
// an 8-byte aligned word.
__device__ __forceinline__ void barrier_init(uint32_t address, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(address), "r"(count) : "memory");
#endif
}

__device__ __forceinline__ void barrier_arrive(uint32_t address) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("{\n\t.reg .b64 state;\n\tmbarrier.arrive.shared.b64 state, [%0];\n\t}" ::"r"(address) : "memory");
#endif
}

// Waits until the phase of parity `parity` has completed. A fresh barrier is
// in phase 0, so a wait for parity 1 returns at once: a buffer's first use
// waits for nothing. On sm_90 the thread sleeps until the phase completes
// (or 1 ms has passed): with the system's default limit the tile kernel's
// waiting warps woke and retried ~19 times a wait, half of the kernel's
// instructions, issued in the slots of the warps doing the work (NOTES
// v14e).
__device__ __forceinline__ void barrier_wait(uint32_t address, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned done = 0;
  while (!done) {
#if __CUDA_ARCH__ >= 900
#define MACKO_BARRIER_TEST "mbarrier.try_wait.parity.shared.b64 p, [%1], %2, 1000000;"
#else
#define MACKO_BARRIER_TEST "mbarrier.test_wait.parity.shared.b64 p, [%1], %2;"
#endif
    asm volatile("{\n\t.reg .pred p;\n\t" MACKO_BARRIER_TEST "\n\tselp.u32 %0, 1, 0, p;\n\t}"
                 : "=r"(done)
                 : "r"(address), "r"(parity)
                 : "memory");
#undef MACKO_BARRIER_TEST
  }
#endif
}

}  // namespace cuda
}  // namespace macko
