// launch_policy.cuh: what every launch needs to know about the device, read
// once and cached: multiprocessor count, shared memory per block, and how
// many blocks of a kernel fit on one multiprocessor; and launches that may
// overlap the kernel before them (programmatic dependent launch).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace macko {
namespace cuda {

struct DeviceFacts {
  int sm_count;
  int max_shared_per_block;  // bytes, with the opt-in above 48 KB
  int major;                 // compute capability
};

inline const DeviceFacts& device_facts(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> facts;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = facts.find(device);
  if (it == facts.end()) {
    DeviceFacts f{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&f.sm_count, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&f.max_shared_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&f.major, cudaDevAttrComputeCapabilityMajor, device));
    it = facts.emplace(device, f).first;
  }
  return it->second;
}

inline int current_device() {
  int device;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// Blocks of `threads` threads and `shared_bytes` of dynamic shared memory
// that fit on one multiprocessor at once (0 if none), cached per kernel,
// device and shape. The first query for a kernel on a device also lifts its
// dynamic shared-memory limit to the device's maximum.
inline int resident_blocks(const void* kernel, int device, int threads, int shared_bytes) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, int>, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, device, threads, shared_bytes);
  auto it = cache.find(key);
  if (it == cache.end()) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        device_facts(device).max_shared_per_block));
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes));
    it = cache.emplace(key, blocks).first;
  }
  return it->second;
}

// Programmatic dependent launch (sm_90+). A kernel launched with it may be
// scheduled while the kernel before it in the stream is still finishing
// (once that one allows it with allow_dependent_launch()), so that its
// blocks are resident and set up as SMs free up, instead of after a launch
// gap. Before it reads memory or writes it, the kernel waits in
// wait_for_prerequisite_grids() until the kernel before has finished and
// its writes are visible. (Prefetching the matrix before that wait made
// calls slower that had nothing to overlap: benchmarks/NOTES.md, v13n.)
// MACKO_PDL=0 launches the usual way (A/B runs).
inline bool programmatic_launch(int device) {
  if (device_facts(device).major < 9) return false;
  const char* setting = std::getenv("MACKO_PDL");
  return setting == nullptr || setting[0] != '0';
}

// Launches `kernel` on `stream`, programmatically dependent on the kernel
// before it if `programmatic`.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   bool programmatic, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = programmatic ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// In a kernel: lets the next kernel of the stream, if launched
// programmatically, be scheduled now (its blocks start as SMs free up).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// In a kernel: waits until the kernels before it in the stream have finished
// and their writes are visible (returns at once without a programmatic
// launch).
__device__ __forceinline__ void wait_for_prerequisite_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace cuda
}  // namespace macko
