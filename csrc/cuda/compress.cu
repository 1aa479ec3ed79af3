// compress.cu: dense -> MACKO on the GPU (decompress.cu goes back).
//
// The encoder of the format is sequential along a row (a padding
// entry is stored at the 16th, 32nd, ... zero after a nonzero, and padding
// after a row's last nonzero is dropped), but it has a closed form: element
// c of a row is stored iff it is nonzero, or it is zero and
// (c - p) % 16 == 0 where p is the row's last nonzero before c (-1 if none)
// and some nonzero follows c. A nonzero's delta is (c - p - 1) % 16, a
// padding's is 15. So one warp per row walks the row 256 elements a step
// (8 consecutive elements a lane): a warp max-scan of the lanes' last
// nonzero positions gives every lane its p, and a warp sum-scan of the
// lanes' stored counts gives every stored element its place. Two launches
// of the same walk: the first only counts each row's entries, a prefix sum
// over the counts places the rows, the second writes values and one delta
// byte per entry into scratch, which a last kernel packs two to a byte
// (packing in place would race on bytes shared by entries of two lanes or
// rows).
#include <torch/library.h>

#include "group_decode.cuh"

namespace macko {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 4;
constexpr int kThreads = kRowsPerBlock * kWarpSize;
constexpr int kElementsPerLane = 8;
constexpr int kWarpStepElements = kWarpSize * kElementsPerLane;

// Walks one row of the dense matrix. kWrite = false: stores the row's entry
// count (trailing padding excluded) in counts[row]. kWrite = true: writes the
// row's entries at row_start = starts[row], given its count.
template <typename scalar_t, bool kWrite>
__global__ void __launch_bounds__(kThreads)
    encode_rows_kernel(const scalar_t* __restrict__ dense, int64_t rows, int cols,
                       int64_t* __restrict__ counts, const int64_t* __restrict__ starts,
                       scalar_t* __restrict__ values, uint8_t* __restrict__ entry_deltas) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // warp-uniform
  const scalar_t* src = dense + row * static_cast<int64_t>(cols);

  int64_t row_start = 0, row_count = 0;
  if constexpr (kWrite) {
    row_start = starts[row];
    row_count = starts[row + 1] - row_start;
  }

  int last_nonzero = -1;  // row's last nonzero column before this step
  int64_t stored = 0;     // entries (padding included) before this step
  int64_t kept = 0;       // entries up to the last nonzero seen so far
  for (int c0 = 0; c0 < cols; c0 += kWarpStepElements) {
    const int first = c0 + lane * kElementsPerLane;
    scalar_t element[kElementsPerLane];
#pragma unroll
    for (int j = 0; j < kElementsPerLane; ++j) {
      element[j] = first + j < cols ? src[first + j] : scalar_t(0);
    }
    unsigned nonzero = 0;
#pragma unroll
    for (int j = 0; j < kElementsPerLane; ++j) {
      nonzero |= (is_nonzero(element[j]) && first + j < cols ? 1u : 0u) << j;
    }

    int lane_last = nonzero ? first + 31 - __clz(nonzero) : -1;
    int step_last;
    const int upto_lane = warp_inclusive_max(lane_last, lane, step_last);
    const int before_lane = __shfl_up_sync(kFullMask, upto_lane, 1);
    const int lane_p = max(last_nonzero, lane > 0 ? before_lane : -1);

    // Which of the lane's elements are stored, and the lane's count up to
    // its last nonzero.
    unsigned stored_bits = 0;
    int lane_kept = 0;
    int p = lane_p;
#pragma unroll
    for (int j = 0; j < kElementsPerLane; ++j) {
      const int c = first + j;
      if ((nonzero >> j) & 1u) {
        stored_bits |= 1u << j;
        lane_kept = __popc(stored_bits);
        p = c;
      } else if (c < cols && (c - p) % (kMaxDelta + 1) == 0) {
        stored_bits |= 1u << j;
      }
    }
    const int lane_stored = __popc(stored_bits);
    int step_stored;
    const int lane_offset = warp_inclusive_sum(lane_stored, lane, step_stored) - lane_stored;

    if constexpr (kWrite) {
      // Walk the stored elements again to emit them with their deltas.
      int q = lane_p;
      int64_t index = stored + lane_offset;
#pragma unroll
      for (int j = 0; j < kElementsPerLane; ++j) {
        if ((stored_bits >> j) & 1u) {
          const int c = first + j;
          const bool is_value = (nonzero >> j) & 1u;
          if (index < row_count) {
            values[row_start + index] = element[j];
            entry_deltas[row_start + index] =
                static_cast<uint8_t>(is_value ? (c - q - 1) % (kMaxDelta + 1) : kMaxDelta);
          }
          if (is_value) q = c;
          ++index;
        }
      }
    } else {
      const unsigned has_nonzero = __ballot_sync(kFullMask, nonzero != 0);
      if (has_nonzero) {
        const int last_lane = 31 - __clz(has_nonzero);
        kept = stored + __shfl_sync(kFullMask, lane_offset + lane_kept, last_lane);
      }
    }
    stored += step_stored;
    last_nonzero = max(last_nonzero, step_last);
  }
  if constexpr (!kWrite) {
    if (lane == 0) counts[row] = kept;
  }
}

// deltas[i] = entry_deltas[2i] | entry_deltas[2i + 1] << 4, grid-stride
// (the grid is capped, so any stream length fits in a launch).
__global__ void pack_nibbles_kernel(const uint8_t* __restrict__ entry_deltas,
                                    int64_t n_bytes, uint8_t* __restrict__ deltas) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_bytes;
       i += stride) {
    deltas[i] = entry_deltas[2 * i] | (entry_deltas[2 * i + 1] << 4);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compress_cuda(const at::Tensor& dense_in) {
  check_dense_matrix(dense_in, "dense");
  check_cols_fit(dense_in.size(1));
  const c10::cuda::CUDAGuard guard(dense_in.device());
  const at::Tensor dense = dense_in.contiguous();
  const int64_t rows = dense.size(0);
  const int cols = static_cast<int>(dense.size(1));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto long_options = dense.options().dtype(at::kLong);

  at::Tensor starts = at::zeros({rows + 1}, long_options);
  at::Tensor values, deltas, row_indices;
  MACKO_DISPATCH_VALUE_TYPES(dense.scalar_type(), "macko_compress_cuda", [&] {
    if (rows > 0) {
      at::Tensor counts = starts.narrow(0, 1, rows);
      encode_rows_kernel<scalar_t, false><<<blocks_for(rows, kRowsPerBlock), kThreads, 0, stream>>>(
          dense.const_data_ptr<scalar_t>(), rows, cols, counts.mutable_data_ptr<int64_t>(),
          nullptr, nullptr, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      counts.cumsum_(0);
    }
    const int64_t n = starts[rows].item<int64_t>();
    const int64_t n_padded = padded_entries(n);
    // The kernel writes entries [0, n); the stream's padding is zeroed here.
    values = at::empty({n_padded}, dense.options());
    values.narrow(0, n, n_padded - n).zero_();
    at::Tensor entry_deltas = at::empty({n_padded}, dense.options().dtype(at::kByte));
    entry_deltas.narrow(0, n, n_padded - n).zero_();
    if (n > 0) {
      encode_rows_kernel<scalar_t, true><<<blocks_for(rows, kRowsPerBlock), kThreads, 0, stream>>>(
          dense.const_data_ptr<scalar_t>(), rows, cols, nullptr,
          starts.const_data_ptr<int64_t>(), values.mutable_data_ptr<scalar_t>(),
          entry_deltas.mutable_data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    deltas = at::empty({n_padded / 2}, entry_deltas.options());
    if (n_padded > 0) {
      constexpr int kPackThreads = 256;
      constexpr int64_t kMaxPackBlocks = int64_t{1} << 20;
      const int pack_blocks =
          static_cast<int>(std::min<int64_t>((n_padded / 2 + kPackThreads - 1) / kPackThreads, kMaxPackBlocks));
      pack_nibbles_kernel<<<pack_blocks, kPackThreads, 0, stream>>>(
          entry_deltas.const_data_ptr<uint8_t>(), n_padded / 2, deltas.mutable_data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    row_indices = starts.to(row_index_dtype(n));
  });
  return {values, deltas, row_indices};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(macko_spmv, CUDA, m) { m.impl("compress", &cuda::compress_cuda); }

}  // namespace macko
