// dequantize.cu: the dequantized temporary of 8-bit values (dequantize.cuh).
//
// One warp per row r, rows spread over a grid that fills the GPU once: the
// warp covers entries [lo_r, lo_(r+1)) of the stream, lo_r being row r's
// pointer clamped into the stream, with lo_0 = 0 and lo_rows = n (so the
// stream padding after the last row goes with it). For any pointers, valid
// or not, these ranges cover every entry (the first r with lo_(r+1) > k has
// lo_r <= k), so the temporary needs no zero fill first; with decreasing
// (corrupted) pointers some ranges overlap, and those entries get one of
// their rows' scales. A lane converts 16 entries at a time (one 16-byte
// load; fp16 and bf16 by the streaming kernel's conversion of groups), so
// that a warp keeps 512 bytes in flight and the pass streams at memory
// speed; a row's first and last few entries go one by one.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dequantize.cuh"
#include "group_decode.cuh"
#include "launch_policy.cuh"

namespace macko {
namespace cuda {
namespace {

constexpr int kDequantizeWarps = 8;
// Entries a lane converts at once: one 16-byte load of values.
constexpr int kChunk = 16;

// Entry q of a row of scale `scale`: (float)q * scale rounded once.
template <typename scalar_t, typename value_t>
__device__ __forceinline__ scalar_t dequantize_entry(value_t q, float scale) {
  return static_cast<scalar_t>(static_cast<float>(q) * scale);
}

// The kChunk entries at `q` (16-byte aligned) into out (aligned to the
// chunk's output bytes): for fp16 and bf16 through the streaming kernel's
// conversion of a group (group_decode.cuh: no conversion instructions, the
// same roundings), for fp32 entry by entry.
template <typename scalar_t, typename value_t>
__device__ __forceinline__ void dequantize_chunk(const value_t* q, float scale, scalar_t* out) {
  const uint4 bytes = *reinterpret_cast<const uint4*>(q);
  if constexpr (sizeof(scalar_t) == 2) {
    const RowScale<scalar_t, value_t> row_scale(scale);
    const uint2 halves[2] = {make_uint2(bytes.x, bytes.y), make_uint2(bytes.z, bytes.w)};
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      GroupValues<value_t> group;
      group.word = halves[g];
      reinterpret_cast<uint4*>(out)[g] = dequantized<scalar_t>(group, row_scale).words[0];
    }
  } else {
    const value_t* entries = reinterpret_cast<const value_t*>(&bytes);
    float4* out4 = reinterpret_cast<float4*>(out);
#pragma unroll
    for (int w = 0; w < kChunk / 4; ++w) {
      out4[w] = make_float4(dequantize_entry<float>(entries[4 * w], scale), dequantize_entry<float>(entries[4 * w + 1], scale),
                            dequantize_entry<float>(entries[4 * w + 2], scale),
                            dequantize_entry<float>(entries[4 * w + 3], scale));
    }
  }
}

// values and out 16-byte aligned (so that an entry index that is a multiple
// of kChunk is an aligned chunk of both).
template <typename value_t, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kDequantizeWarps * kWarpSize)
    dequantize_kernel(const value_t* __restrict__ values, const index_t* __restrict__ row_indices,
                      const scalar_t* __restrict__ scales, int64_t n, int64_t rows, scalar_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kDequantizeWarps;
  auto clamped = [&](int64_t r) {
    return r == 0 ? int64_t{0} : r == rows ? n : min(max(static_cast<int64_t>(row_indices[r]), int64_t{0}), n);
  };
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kDequantizeWarps + threadIdx.x / kWarpSize; r < rows;
       r += warps_total) {
    const int64_t lo = clamped(r), hi = clamped(r + 1);
    if (lo >= hi) continue;  // warp-uniform
    const float scale = static_cast<float>(scales[r]);
    // [lo, first) and [last, hi) entry by entry (fewer than kChunk each),
    // the aligned chunks between them a lane each: 512 bytes a warp step.
    const int64_t first = min(hi, (lo + kChunk - 1) & ~int64_t{kChunk - 1});
    const int64_t last = max(first, hi & ~int64_t{kChunk - 1});
    if (lo + lane < first) out[lo + lane] = dequantize_entry<scalar_t>(values[lo + lane], scale);
    for (int64_t c = first + static_cast<int64_t>(lane) * kChunk; c < last; c += kWarpSize * kChunk) {
      dequantize_chunk(values + c, scale, out + c);
    }
    if (last + lane < hi) out[last + lane] = dequantize_entry<scalar_t>(values[last + lane], scale);
  }
}

}  // namespace

at::Tensor dequantized_values(const at::Tensor& values, const at::Tensor& row_indices, int64_t rows,
                              const std::optional<at::Tensor>& scales) {
  if (!scales.has_value()) return values;
  const int64_t n = values.numel();
  at::Tensor out = at::empty({n}, values.options().dtype(scales->scalar_type()));
  if (n == 0) return out;
  if (rows == 0) return out.zero_();  // (only invalid arrays store entries without rows)
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor source = aligned16(values);
  const int device = current_device();
  MACKO_DISPATCH_MATRIX_TYPES(values.scalar_type(), scales->scalar_type(), "macko_dequantize_cuda", [&] {
    if constexpr (!std::is_same_v<value_t, scalar_t>) {
      MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
        const auto kernel = dequantize_kernel<value_t, scalar_t, index_t>;
        constexpr int kThreads = kDequantizeWarps * kWarpSize;
        const int per_sm = std::max(1, resident_blocks(reinterpret_cast<const void*>(kernel), device, kThreads, 0));
        const int64_t wanted = (rows + kDequantizeWarps - 1) / kDequantizeWarps;
        const int blocks =
            static_cast<int>(std::min<int64_t>(wanted, static_cast<int64_t>(per_sm) * device_facts(device).sm_count));
        kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            source.const_data_ptr<value_t>(), row_indices.const_data_ptr<index_t>(),
            scales->const_data_ptr<scalar_t>(), n, rows, out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return out;
}

}  // namespace cuda
}  // namespace macko
