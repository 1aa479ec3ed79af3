// decompress.cu: MACKO -> dense on the GPU (the decompress op, and the
// slabs of multiply's dense route).
//
// Algorithm. One warp per row, rows spread over a grid that fills the GPU
// once. The warp walks the row's stream a warp step (256 entries, an aligned
// 8-entry group per lane) at a time and decodes the columns as multiply does
// (group_decode.cuh). It assembles the dense row in shared memory, one
// segment of kSegmentBytes at a time: each entry is stored at its column in
// the segment, and once the walk passes the segment's end the warp copies
// the segment to the row with 16-byte stores and clears it. Columns after
// the row's last entry are written as zeros directly.
//
// Why it is fast. The kernel moves only what it must: the stream is read
// once, and every dense byte is written once, in whole 16-byte words that a
// warp writes 512 contiguous bytes at a time. The 2-byte stores that place
// entries at their columns go to shared memory, not to DRAM. (The first
// version zero-filled the matrix and then scattered 2-byte stores into it:
// two passes, the second of partial-sector writes; benchmarks/NOTES.md, v7.)
#include <torch/library.h>

#include "decompress.cuh"
#include "dequantize.cuh"
#include "group_decode.cuh"
#include "launch_policy.cuh"

namespace macko {
namespace cuda {
namespace {

constexpr int kDecompressWarps = 8;
constexpr int kDecompressThreads = kDecompressWarps * kWarpSize;
// Bytes of a row that one warp assembles in shared memory at a time.
constexpr int kSegmentBytes = 4096;
constexpr int kSharedBytes = kDecompressWarps * kSegmentBytes;

// Warp steps whose loads each warp keeps in flight (registers: 6 a step for
// 16-bit values, 10 for fp32).
constexpr int kPrefetchSteps = 4;

// One warp's segment of a dense row in shared memory: columns
// [lo, lo + kCols) of the row, zero wherever no entry has been stored.
template <typename scalar_t>
struct Segment {
  static constexpr int kCols = kSegmentBytes / static_cast<int>(sizeof(scalar_t));
  static constexpr int kVector = 16 / static_cast<int>(sizeof(scalar_t));  // scalars per 16-byte word
  static_assert(kCols % kVector == 0, "a segment is whole 16-byte words");
  scalar_t* cols;

  // Copies the segment's first `count` columns to out_row[lo, lo + count)
  // and clears them. `vector_row`: out_row + lo is 16-byte aligned.
  __device__ __forceinline__ void flush(scalar_t* out_row, int64_t lo, int count, bool vector_row, int lane) {
    int done = 0;
    if (vector_row) {
      const int words = count / kVector;
      uint4* dst = reinterpret_cast<uint4*>(out_row + lo);
      uint4* src = reinterpret_cast<uint4*>(cols);
      for (int w = lane; w < words; w += kWarpSize) {
        dst[w] = src[w];
        src[w] = make_uint4(0, 0, 0, 0);
      }
      done = words * kVector;
    }
    for (int i = done + lane; i < count; i += kWarpSize) {
      out_row[lo + i] = cols[i];
      cols[i] = scalar_t(0);
    }
  }
};

// Zeros in columns [lo, cols) of a row (lo a multiple of 16 bytes' worth).
template <typename scalar_t>
__device__ __forceinline__ void zero_tail(scalar_t* out_row, int64_t lo, int cols, bool vector_row, int lane) {
  if (lo >= cols) return;
  constexpr int kVector = Segment<scalar_t>::kVector;
  int64_t c = lo;
  if (vector_row) {
    const int64_t words = (cols - lo) / kVector;
    uint4* dst = reinterpret_cast<uint4*>(out_row + lo);
    for (int64_t w = lane; w < words; w += kWarpSize) dst[w] = make_uint4(0, 0, 0, 0);
    c = lo + words * kVector;
  }
  for (int64_t i = c + lane; i < cols; i += kWarpSize) out_row[i] = scalar_t(0);
}

// Rows [first_row, first_row + n_rows) of the matrix into out (row i of the
// slab at out + i * ld).
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kDecompressThreads)
    decompress_rows_kernel(const scalar_t* __restrict__ values, const uint8_t* __restrict__ deltas,
                           const index_t* __restrict__ row_indices, int64_t n_entries, int64_t first_row,
                           int64_t n_rows, int cols, scalar_t* __restrict__ out, int64_t ld) {
  using Seg = Segment<scalar_t>;
  extern __shared__ uint4 segment_words[];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  constexpr int kSegmentWords = kSegmentBytes / 16;
  for (int w = lane; w < kSegmentWords; w += kWarpSize) segment_words[warp * kSegmentWords + w] = make_uint4(0, 0, 0, 0);
  __syncwarp();
  Seg segment{reinterpret_cast<scalar_t*>(segment_words + warp * kSegmentWords)};

  const uint32_t* nibble_words = reinterpret_cast<const uint32_t*>(deltas);
  const bool vector_rows = ld % Seg::kVector == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const unsigned ucols = static_cast<unsigned>(cols);
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kDecompressWarps;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kDecompressWarps + warp; i < n_rows; i += warps_total) {
    int64_t begin, end;
    row_range(row_indices, first_row + i, n_entries, begin, end);
    scalar_t* out_row = out + i * ld;
    unsigned lo = 0;          // first column of the segment being assembled
    unsigned prev_col = ~0u;  // column of the row's last entry so far (-1 before the first)
    // The lane's groups of the next kPrefetchSteps steps, loaded before the
    // first of them is decoded: a row is a serial walk, so each warp keeps
    // several steps' loads in flight (one alone leaves the warp waiting on
    // DRAM every step; slabs of the dense route have too few rows to hide
    // that with more warps).
    const int64_t first_step = begin & ~(kGroupEntries - 1);
    StepGroup<scalar_t> ahead[kPrefetchSteps];
#pragma unroll
    for (int p = 0; p < kPrefetchSteps; ++p) {
      ahead[p].load(values, nibble_words, first_step + p * kWarpStepEntries + lane * kGroupEntries, begin, end);
    }
    // The walk stops at the last column: only a corrupted stream gets there
    // before its row ends.
    for (int64_t round = first_step; round < end && prev_col + 1u < ucols;
         round += kPrefetchSteps * kWarpStepEntries) {
#pragma unroll
      for (int p = 0; p < kPrefetchSteps; ++p) {
        const int64_t step = round + p * kWarpStepEntries;
        if (step < end && prev_col + 1u < ucols) {  // warp-uniform
          // The entries' columns; entries outside the row get ~0u, which no
          // segment holds.
          unsigned col[kGroupEntries];
          ahead[p].decode(prev_col, col);
          const scalar_t* entry = reinterpret_cast<const scalar_t*>(ahead[p].group.words);
          // prev_col is now the column of the step's last entry
          // (warp-uniform): store the step's entries, and copy out every
          // segment the step ends.
          while (true) {
            const unsigned hi = lo + Seg::kCols;
#pragma unroll
            for (int j = 0; j < kGroupEntries; ++j) {
              // col - lo wraps for columns before the segment (stored already).
              if (col[j] - lo < static_cast<unsigned>(Seg::kCols) && col[j] < ucols) {
                segment.cols[col[j] - lo] = entry[j];
              }
            }
            if (prev_col < hi || hi >= ucols) break;  // warp-uniform
            __syncwarp();
            segment.flush(out_row, lo, Seg::kCols, vector_rows, lane);
            __syncwarp();
            lo = hi;
          }
        }
        ahead[p].load(values, nibble_words, step + kPrefetchSteps * kWarpStepEntries + lane * kGroupEntries, begin,
                      end);
      }
    }
    __syncwarp();
    if (lo < ucols) segment.flush(out_row, lo, min(Seg::kCols, cols - static_cast<int>(lo)), vector_rows, lane);
    zero_tail(out_row, static_cast<int64_t>(lo) + Seg::kCols, cols, vector_rows, lane);
    __syncwarp();
  }
}

template <typename scalar_t, typename index_t>
void launch_decompress_rows(const scalar_t* values, const uint8_t* deltas, const index_t* row_indices,
                            int64_t n_entries, int64_t first_row, int64_t n_rows, int cols, scalar_t* out,
                            int64_t ld) {
  if (n_rows == 0 || cols == 0) return;
  const int device = current_device();
  const void* kernel = reinterpret_cast<const void*>(decompress_rows_kernel<scalar_t, index_t>);
  const int per_sm = std::max(1, resident_blocks(kernel, device, kDecompressThreads, kSharedBytes));
  const int64_t wanted = (n_rows + kDecompressWarps - 1) / kDecompressWarps;
  const int blocks = static_cast<int>(std::min<int64_t>(wanted, static_cast<int64_t>(per_sm) * device_facts(device).sm_count));
  decompress_rows_kernel<scalar_t, index_t><<<blocks, kDecompressThreads, kSharedBytes, c10::cuda::getCurrentCUDAStream()>>>(
      values, deltas, row_indices, n_entries, first_row, n_rows, cols, out, ld);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor decompress_cuda(const at::Tensor& values_in, const at::Tensor& deltas, const at::Tensor& row_indices,
                           int64_t rows, int64_t cols, const std::optional<at::Tensor>& scales) {
  check_compressed(values_in, deltas, row_indices, rows, cols, scales);
  check_cols_fit(cols);
  const c10::cuda::CUDAGuard guard(values_in.device());
  // 8-bit values: dequantized into a temporary first (dequantize.cuh).
  const at::Tensor values = dequantized_values(values_in, row_indices, rows, scales);
  // Every element is written by the kernel.
  at::Tensor dense = at::empty({rows, cols}, values.options());
  if (rows == 0 || cols == 0) return dense;
  decompress_rows(aligned16(values), aligned16(deltas), row_indices, 0, cols, dense);
  return dense;
}

}  // namespace

void decompress_rows(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                     int64_t first_row, int64_t cols, at::Tensor& out) {
  TORCH_CHECK(out.dim() == 2 && out.size(1) == cols && out.stride(1) == 1 && out.stride(0) >= cols &&
                  out.scalar_type() == values.scalar_type(),
              "macko_spmv decompress_rows: bad output slab");
  MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_decompress_cuda", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      launch_decompress_rows<scalar_t, index_t>(values.const_data_ptr<scalar_t>(), deltas.const_data_ptr<uint8_t>(),
                                                row_indices.const_data_ptr<index_t>(), values.numel(), first_row,
                                                out.size(0), static_cast<int>(cols), out.mutable_data_ptr<scalar_t>(),
                                                out.stride(0));
    });
  });
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(macko_spmv, CUDA, m) { m.impl("decompress", &cuda::decompress_cuda); }

}  // namespace macko
