// launch_policy.cuh: what every launch needs to know about the device, read
// once and cached: multiprocessor count, shared memory per block, and how
// many blocks of a kernel fit on one multiprocessor.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>

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

}  // namespace cuda
}  // namespace macko
