// warp_stream.cuh: the device-side pieces that the CUDA kernels share.
//
// Every kernel here walks a row with one warp. A step of the walk gives each
// lane one aligned group of kGroupEntries (8) entries: its values (16 bytes
// for fp16/bf16, 32 for fp32) and its 8 nibbles (one 32-bit word), both
// found by the same ordinal. The lanes' groups are consecutive, so a warp
// step covers 256 entries with fully coalesced 16-byte loads. A column is
// the previous column + 1 + delta, so columns are a prefix sum: each lane
// sums its 8 increments, a warp scan (5 shuffles) gives each lane the sum of
// the lanes before it, and the warp carries the step's total to the next.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../macko.h"

namespace macko {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Entries one warp covers per step of its walk.
constexpr int kWarpStepEntries = kWarpSize * static_cast<int>(kGroupEntries);

// Column numbers are 32-bit on the device. A corrupted stream can run a
// row's column past `cols` by at most one warp step (256 entries x 16)
// before the walk notices and stops, so `cols` keeps that much headroom.
constexpr int64_t kMaxCols = (int64_t{1} << 31) - 1 - 16 * kWarpStepEntries;

inline void check_cols_fit(int64_t cols) {
  TORCH_CHECK_VALUE(cols <= kMaxCols, "cols = ", cols,
                    " is larger than the CUDA kernels support (", kMaxCols, ")");
}

// `t` itself if its data is 16-byte aligned (as the vector loads need),
// else an aligned copy: a view at an odd offset is read correctly, if slower.
inline at::Tensor aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone();
}

inline int blocks_for(int64_t items, int per_block) {
  return static_cast<int>((items + per_block - 1) / per_block);
}

// Inclusive prefix sum across the warp; `total` gets the whole warp's sum.
__device__ __forceinline__ int warp_inclusive_sum(int v, int lane, int& total) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  total = __shfl_sync(kFullMask, v, kWarpSize - 1);
  return v;
}

// Inclusive prefix maximum across the warp; `total` gets the warp's max.
__device__ __forceinline__ int warp_inclusive_max(int v, int lane, int& total) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v = max(v, other);
  }
  total = __shfl_sync(kFullMask, v, kWarpSize - 1);
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Streaming loads for data read exactly once: read-only path, and no L1
// allocation so the stream does not evict the vector that every row reuses.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ uint32_t load_streaming(const uint32_t* p) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// The values of one group of kGroupEntries entries, loaded as 16-byte words.
template <typename scalar_t>
struct GroupValues {
  static constexpr int kWords = kGroupEntries * sizeof(scalar_t) / 16;
  static_assert(kWords >= 1, "a group's values must fill whole 16-byte words");
  uint4 words[kWords];

  __device__ __forceinline__ void load(const scalar_t* values, int64_t first) {
    const uint4* src = reinterpret_cast<const uint4*>(values + first);
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = load_streaming(src + w);
  }
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = make_uint4(0, 0, 0, 0);
  }
  __device__ __forceinline__ float operator[](int j) const {
    return static_cast<float>(reinterpret_cast<const scalar_t*>(words)[j]);
  }
};

// Bits [lo, hi) of the 8 entries in the group starting at `first` that lie
// inside the row [begin, end).
__device__ __forceinline__ unsigned group_row_mask(int64_t first, int64_t begin,
                                                   int64_t end) {
  const int64_t lo = begin - first;
  const int64_t hi = end - first;
  const int lo_c = lo < 0 ? 0 : (lo > 8 ? 8 : static_cast<int>(lo));
  const int hi_c = hi < 0 ? 0 : (hi > 8 ? 8 : static_cast<int>(hi));
  return hi_c > lo_c ? ((1u << hi_c) - 1u) & ~((1u << lo_c) - 1u) : 0u;
}

// One lane's part of a warp step: from its group's nibbles and row mask,
// the columns of its 8 entries. `prev_col` is the column of the last entry
// before this step (-1 at a row's start); it is warp-uniform and advanced
// past the step. Entries outside the row get no column increment.
__device__ __forceinline__ void decode_columns(uint32_t nibbles, unsigned mask,
                                               int lane, int& prev_col,
                                               int (&col)[kGroupEntries]) {
  int run = 0;
#pragma unroll
  for (int j = 0; j < kGroupEntries; ++j) {
    const int step = ((nibbles >> (4 * j)) & 0xF) + 1;
    run += ((mask >> j) & 1u) ? step : 0;
    col[j] = run;
  }
  int total;
  const int before = warp_inclusive_sum(run, lane, total) - run;
  const int base = prev_col + before;
#pragma unroll
  for (int j = 0; j < kGroupEntries; ++j) col[j] += base;
  prev_col += total;
}

}  // namespace cuda
}  // namespace macko
