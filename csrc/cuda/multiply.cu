// multiply.cu: y = M x for a MACKO matrix M and up to 16 right-hand sides.
//
// Algorithm. One warp per row; a block holds kRowsPerBlock rows. The warp
// walks its row's slice of the entry stream in steps of 256 entries (one
// aligned 8-entry group per lane, see warp_stream.cuh), starting at the
// group that holds the row's first entry and masking entries of the
// neighbouring rows. Columns come from a warp prefix sum of the 4-bit gaps.
// Each lane multiplies its entries by the gathered vector elements into fp32
// accumulators; a butterfly reduction gives the row's sums.
//
// Data layout. values and deltas are the format's arrays, read with
// 16-byte (values) and 4-byte (deltas) streaming loads. With one right-hand
// side x is read in place; with B > 1 the batch is transposed to
// x_t[cols][kBatch] (zero-padded to a power of two), so one gathered column
// is a single contiguous load of all its right-hand sides, and the matrix is
// read once for the whole batch.
//
// Why it is fast. SpMV at these densities moves ~2.5 bytes per stored entry
// and does 2 flops on it: it is bound by memory bandwidth. Every byte of
// the stream is read exactly once with coalesced 16-byte loads, kUnroll
// groups per lane are in flight before the first is used, the streaming
// loads skip L1 so the vector (which every row reuses) stays there, and the
// per-entry work (nibble extraction, one shuffle scan per 8 entries) is
// small enough to hide under the loads.
#include <torch/library.h>

#include "warp_stream.cuh"

namespace macko {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr int kThreads = kRowsPerBlock * kWarpSize;
// The widest batch one kernel instance reads the matrix once for.
constexpr int kMaxBatch = 16;

// kBatch consecutive scalars of x_t at one column, as floats, in as few
// loads as their width allows (x_t rows are aligned to their width).
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void load_x(const scalar_t* x_t, int col,
                                       float (&out)[kBatch]) {
  constexpr int kBytes = kBatch * sizeof(scalar_t);
  const scalar_t* p = x_t + static_cast<int64_t>(col) * kBatch;
  if constexpr (kBytes >= 16) {
    uint4 raw[kBytes / 16];
#pragma unroll
    for (int w = 0; w < kBytes / 16; ++w) raw[w] = __ldg(reinterpret_cast<const uint4*>(p) + w);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) out[b] = static_cast<float>(reinterpret_cast<const scalar_t*>(raw)[b]);
  } else if constexpr (kBytes == 8) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
#pragma unroll
    for (int b = 0; b < kBatch; ++b) out[b] = static_cast<float>(reinterpret_cast<const scalar_t*>(&raw)[b]);
  } else if constexpr (kBytes == 4) {
    const unsigned raw = __ldg(reinterpret_cast<const unsigned*>(p));
#pragma unroll
    for (int b = 0; b < kBatch; ++b) out[b] = static_cast<float>(reinterpret_cast<const scalar_t*>(&raw)[b]);
  } else {
    static_assert(kBytes == 2, "unexpected batch width");
    const unsigned short raw = __ldg(reinterpret_cast<const unsigned short*>(p));
    out[0] = static_cast<float>(*reinterpret_cast<const scalar_t*>(&raw));
  }
}

template <typename scalar_t, typename index_t, int kBatch, int kUnroll>
__global__ void __launch_bounds__(kThreads)
    multiply_kernel(const scalar_t* __restrict__ values,
                    const uint8_t* __restrict__ deltas,
                    const index_t* __restrict__ row_indices, int64_t n_entries,
                    int64_t rows, int cols, const scalar_t* __restrict__ x_t,
                    int batch, scalar_t* __restrict__ y) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // warp-uniform

  int64_t begin, end;
  row_range(row_indices, row, n_entries, begin, end);
  const uint32_t* nibble_words = reinterpret_cast<const uint32_t*>(deltas);

  float acc[kBatch];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) acc[b] = 0.0f;

  int prev_col = -1;
  // The walk ends at the row's end, or once every later column would fall
  // outside the matrix (only a corrupted stream gets there first).
  for (int64_t step = begin & ~(kGroupEntries - 1); step < end && prev_col < cols - 1;
       step += kUnroll * kWarpStepEntries) {
    GroupValues<scalar_t> group[kUnroll];
    uint32_t nibbles[kUnroll];
    unsigned mask[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t first = step + (u * kWarpSize + lane) * kGroupEntries;
      mask[u] = group_row_mask(first, begin, end);
      if (mask[u]) {
        group[u].load(values, first);
        nibbles[u] = load_streaming(nibble_words + first / kGroupEntries);
      } else {
        group[u].clear();
        nibbles[u] = 0;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int col[kGroupEntries];
      decode_columns(nibbles[u], mask[u], lane, prev_col, col);
#pragma unroll
      for (int j = 0; j < kGroupEntries; ++j) {
        if (((mask[u] >> j) & 1u) && col[j] < cols) {
          float xv[kBatch];
          load_x<scalar_t, kBatch>(x_t, col[j], xv);
          const float v = group[u][j];
#pragma unroll
          for (int b = 0; b < kBatch; ++b) acc[b] = fmaf(v, xv[b], acc[b]);
        }
      }
    }
  }

#pragma unroll
  for (int b = 0; b < kBatch; ++b) {
    const float sum = warp_sum(acc[b]);
    if (lane == b && b < batch) y[b * rows + row] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t, int kBatch>
void launch_multiply(const at::Tensor& values, const at::Tensor& deltas,
                     const at::Tensor& row_indices, int64_t rows, int64_t cols,
                     const at::Tensor& x_t, int batch, at::Tensor& y) {
  constexpr int kUnroll = 2;
  if (rows == 0) return;
  multiply_kernel<scalar_t, index_t, kBatch, kUnroll>
      <<<blocks_for(rows, kRowsPerBlock), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          values.const_data_ptr<scalar_t>(), deltas.const_data_ptr<uint8_t>(),
          row_indices.const_data_ptr<index_t>(), values.numel(), rows,
          static_cast<int>(cols), x_t.const_data_ptr<scalar_t>(), batch,
          y.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Smallest kernel batch width (a power of two) that holds `batch` vectors.
int kernel_batch(int64_t batch) {
  int width = 1;
  while (width < batch) width *= 2;
  return width;
}

at::Tensor multiply_cuda(const at::Tensor& values_in, const at::Tensor& deltas_in,
                         const at::Tensor& row_indices, int64_t rows, int64_t cols,
                         const at::Tensor& x_in) {
  check_compressed(values_in, deltas_in, row_indices, rows, cols);
  check_multiply_input(values_in, cols, x_in);
  check_cols_fit(cols);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = aligned16(values_in);
  const at::Tensor deltas = aligned16(deltas_in);

  const bool batched = x_in.dim() == 2;
  const int64_t batch = batched ? x_in.size(0) : 1;
  at::Tensor y = batched ? at::empty({batch, rows}, values.options())
                         : at::empty({rows}, values.options());
  if (batch == 0 || rows == 0) return y;

  // Right-hand sides in chunks of at most kMaxBatch, each chunk one pass
  // over the matrix.
  for (int64_t b0 = 0; b0 < batch; b0 += kMaxBatch) {
    const int64_t nb = std::min<int64_t>(kMaxBatch, batch - b0);
    const int width = kernel_batch(nb);
    at::Tensor x_t;
    if (width == 1) {
      x_t = (batched ? x_in[b0] : x_in).contiguous();
    } else {
      x_t = at::zeros({cols, width}, x_in.options());
      x_t.narrow(1, 0, nb).copy_(x_in.narrow(0, b0, nb).t());
    }
    at::Tensor y_chunk = batched ? y.narrow(0, b0, nb) : y;
    MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_multiply_cuda", [&] {
      MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
        switch (width) {
          case 1: launch_multiply<scalar_t, index_t, 1>(values, deltas, row_indices, rows, cols, x_t, nb, y_chunk); break;
          case 2: launch_multiply<scalar_t, index_t, 2>(values, deltas, row_indices, rows, cols, x_t, nb, y_chunk); break;
          case 4: launch_multiply<scalar_t, index_t, 4>(values, deltas, row_indices, rows, cols, x_t, nb, y_chunk); break;
          case 8: launch_multiply<scalar_t, index_t, 8>(values, deltas, row_indices, rows, cols, x_t, nb, y_chunk); break;
          default: launch_multiply<scalar_t, index_t, 16>(values, deltas, row_indices, rows, cols, x_t, nb, y_chunk); break;
        }
      });
    });
  }
  return y;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(macko_spmv, CUDA, m) { m.impl("multiply", &cuda::multiply_cuda); }

}  // namespace macko
