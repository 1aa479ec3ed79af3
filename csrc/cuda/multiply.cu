// multiply.cu: y = M x for a MACKO matrix M and up to 8 right-hand sides
// per pass over the matrix (larger batches go in chunks, see kMaxBatch).
//
// Algorithm. One warp per row at a time, in a persistent grid (each warp
// takes every total_warps-th row, and preloads the row pointers of its next
// 32 rows, one per lane). The warp walks its row's slice of the entry stream
// in stages of kUnroll x 256 entries (one aligned 8-entry group per lane and
// step, see warp_stream.cuh), starting at the group that holds the row's
// first entry and masking entries of the neighbouring rows. Columns are a
// prefix sum of the gaps: byte arithmetic within a lane's group, one warp
// scan per stage across lanes. Each lane multiplies its entries by the
// gathered vector elements into fp32 accumulators; a butterfly reduction
// gives the row's sums.
//
// Data layout. values and deltas are the format's arrays, read with
// 16-byte (values) and 4-byte (deltas) streaming loads. With one right-hand
// side x is read as it is; with B > 1 the batch is transposed to
// x_t[cols][kBatch] (zero-padded to a power of two), so one gathered column
// is a single contiguous load of all its right-hand sides, and the matrix is
// read once for the whole batch. Each block first copies x_t into shared
// memory when it fits (kMaxSharedXBytes).
//
// Why it is fast. SpMV at these densities moves ~2.5 bytes per stored entry
// and does 2 flops on it: it is bound by memory bandwidth, provided three
// other costs stay hidden. (1) The gather of x: at one unrolled index j the
// 32 lanes hold entries 8 apart, whose columns spread over up to 32 cache
// lines, so a gather from global memory costs up to 32 L1 wavefronts per
// instruction; from shared memory it costs only the bank conflicts of 32
// random columns (about 3-4 ways). (2) Instructions: at full bandwidth an SM
// has under one warp-instruction per entry to spend, hence the byte-wise
// decode, a clamp instead of branches, and one scan per two groups. (3)
// Latency: the next stage's loads are issued before the current one is
// consumed, across row boundaries (and the first before x is staged), and
// the stage after it is requested into L2. The stream is read exactly once
// with coalesced 16-byte loads that skip L1. Measured results and what still
// limits the kernel: benchmarks/NOTES.md.
#include <torch/library.h>

#include <cstdlib>
#include <type_traits>

#include "warp_stream.cuh"

namespace macko {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 16;
constexpr int kThreads = kRowsPerBlock * kWarpSize;
// The widest batch one kernel pass takes; larger batches go in chunks of it,
// one pass over the matrix each. (Wider kernels spill registers or lose the
// vector's shared-memory copy; a dense scratch + cuBLAS route measured 3-12x
// slower than chunks, its decompress being the cost: benchmarks/NOTES.md.)
constexpr int kMaxBatch = 8;
// Groups each lane has in flight per stage of the pipelined walk: two for
// 16-bit values; one for fp32, whose groups are twice as wide (two stages
// of two would not fit in the registers without spilling).
template <typename scalar_t>
constexpr int kUnroll = sizeof(scalar_t) == 2 ? 2 : 1;
// The largest vector block staged in shared memory: two blocks of kThreads
// must fit on one SM (227 KB on Hopper) to keep enough warps resident.
constexpr int64_t kMaxSharedXBytes = 110 * 1024;
// Default L2 prefetch distance in stages (see prefetch_stages()).
constexpr int kDefaultPrefetchStages = 1;

// kBatch consecutive scalars of x_t at one column, as floats, in as few
// loads as their width allows (x_t rows are aligned to their width). x_t is
// in shared memory or, when it does not fit there, in global memory.
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void load_x(const scalar_t* x_t, int col, float (&out)[kBatch]) {
  constexpr int kBytes = kBatch * sizeof(scalar_t);
  using Word = std::conditional_t<(kBytes >= 16), uint4,
               std::conditional_t<kBytes == 8, uint2,
               std::conditional_t<kBytes == 4, unsigned, unsigned short>>>;
  constexpr int kWords = kBytes >= 16 ? kBytes / 16 : 1;
  Word raw[kWords];
  const Word* p = reinterpret_cast<const Word*>(x_t + static_cast<int64_t>(col) * kBatch);
#pragma unroll
  for (int w = 0; w < kWords; ++w) raw[w] = p[w];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) out[b] = static_cast<float>(reinterpret_cast<const scalar_t*>(raw)[b]);
}

// One stage of a warp's walk: kUnroll groups per lane, loaded together so
// that their loads are in flight at once.
template <typename scalar_t, int kUnroll = kUnroll<scalar_t>>
struct Stage {
  GroupValues<scalar_t> group[kUnroll];
  uint32_t nibbles[kUnroll];
  unsigned mask[kUnroll];

  __device__ __forceinline__ void load(const scalar_t* values, const uint32_t* nibble_words,
                                       int64_t step, int64_t begin, int64_t end, int lane) {
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
  }
};

template <typename scalar_t, typename index_t, int kBatch, bool kSharedX>
__global__ void __launch_bounds__(kThreads, kBatch >= 8 ? 1 : 2)
    multiply_kernel(const scalar_t* __restrict__ values,
                    const uint8_t* __restrict__ deltas,
                    const index_t* __restrict__ row_indices, int64_t n_entries,
                    int64_t rows, int cols, const scalar_t* __restrict__ x_t,
                    int batch, scalar_t* __restrict__ y, int prefetch_stages) {
  extern __shared__ uint4 shared_x_words[];
  const int lane = threadIdx.x % kWarpSize;
  // The grid is persistent: warp w takes rows w, w + total_warps, ...
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  const uint32_t* nibble_words = reinterpret_cast<const uint32_t*>(deltas);
  constexpr int kStageGroups = kUnroll<scalar_t>;
  constexpr int64_t kStageEntries = kStageGroups * kWarpStepEntries;

  // The walk over the warp's rows is one pipeline: the stage after the
  // current one is always in flight, across row boundaries, so short rows
  // (low density) stream like long ones. `begin`, `end` and `step` describe
  // the row and position of the stage in flight (`next`). The row pointers
  // of the warp's next 32 rows are loaded ahead, one row per lane, so that
  // starting a row waits on no memory access.
  int64_t lane_begin = 0, lane_end = 0;
  int pointer_slot = kWarpSize;  // next row's lane in the preloaded pointers
  auto preload_pointers = [&]() {
    const int64_t lane_row = row + lane * row_stride;
    if (lane_row < rows) row_range(row_indices, lane_row, n_entries, lane_begin, lane_end);
    pointer_slot = 0;
  };
  int64_t begin = 0, end = 0, step = 0;
  Stage<scalar_t> next;
  // Stages further ahead than `next` go to L2 (prefetch_stages of them),
  // one 128-byte line a lane: that costs no registers, so the warp keeps
  // more of the stream in flight than its registers could hold.
  auto prefetch_stage = [&](int64_t first) {
    constexpr int kValuesPerLine = 128 / sizeof(scalar_t);
    constexpr int kValueLines = kStageEntries / kValuesPerLine;
    constexpr int kDeltaLines = kStageEntries / 2 / 128;
    static_assert(kValueLines + kDeltaLines <= kWarpSize, "a stage's lines fit one per lane");
    if (lane < kValueLines && first + lane * kValuesPerLine < end) {
      prefetch_l2(values + first + lane * kValuesPerLine);
    } else if (lane >= kWarpSize - kDeltaLines && first < end) {
      prefetch_l2(deltas + first / 2 + (kWarpSize - 1 - lane) * 128);
    }
  };
  auto start_row = [&]() {
    if (pointer_slot == kWarpSize) preload_pointers();
    begin = __shfl_sync(kFullMask, lane_begin, pointer_slot);
    end = __shfl_sync(kFullMask, lane_end, pointer_slot);
    ++pointer_slot;
    step = begin & ~(kGroupEntries - 1);
    next.load(values, nibble_words, step, begin, end, lane);
    for (int d = 1; d < prefetch_stages; ++d) prefetch_stage(step + d * kStageEntries);
  };
  // The first stage's loads go out before the vector is staged, so the
  // stream's latency overlaps the copy.
  if (row < rows) start_row();

  const scalar_t* x = x_t;
  if constexpr (kSharedX) {
    // Whole 16-byte words, then the scalars of a last partial word.
    const int64_t scalars = static_cast<int64_t>(cols) * kBatch;
    constexpr int kPerWord = 16 / sizeof(scalar_t);
    const int64_t words = scalars / kPerWord;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
      shared_x_words[w] = __ldg(reinterpret_cast<const uint4*>(x_t) + w);
    }
    scalar_t* shared_x = reinterpret_cast<scalar_t*>(shared_x_words);
    for (int64_t i = words * kPerWord + threadIdx.x; i < scalars; i += blockDim.x) shared_x[i] = x_t[i];
    __syncthreads();
    x = reinterpret_cast<const scalar_t*>(shared_x_words);
  }

  float acc[kBatch];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) acc[b] = 0.0f;
  int prev_col = -1;  // column of the last entry of the current row so far

  while (row < rows) {  // warp-uniform
    Stage<scalar_t> current = next;
    const int64_t current_row = row;
    const bool row_ends = step + kStageEntries >= end;
    if (row_ends) {
      row += row_stride;
      if (row < rows) start_row();
    } else {
      step += kStageEntries;
      next.load(values, nibble_words, step, begin, end, lane);
      prefetch_stage(step + prefetch_stages * kStageEntries);
    }

    GroupSteps steps[kStageGroups];
    uint32_t totals[kStageGroups];
#pragma unroll
    for (int u = 0; u < kStageGroups; ++u) {
      steps[u] = GroupSteps(current.nibbles[u], current.mask[u]);
      totals[u] = steps[u].odd_offsets() >> 24;
      if (current.mask[u] != 0xFFu) current.group[u].keep(current.mask[u]);
    }
    int base[kStageGroups];
    warp_group_bases(totals, lane, prev_col, base);
#pragma unroll
    for (int u = 0; u < kStageGroups; ++u) {
      for_each_column(steps[u], base[u], [&](int j, int col) {
        // Entries outside the row have value 0 here; the clamp only keeps a
        // corrupted stream's columns inside x (-1 wraps to the top too).
        const int clamped = static_cast<int>(min(static_cast<unsigned>(col), static_cast<unsigned>(cols - 1)));
        float xv[kBatch];
        load_x<scalar_t, kBatch>(x, clamped, xv);
        const float v = current.group[u][j];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) acc[b] = fmaf(v, xv[b], acc[b]);
      });
    }

    // A row also ends once every later column would fall outside the matrix:
    // only a corrupted stream gets there first, and stopping bounds its walk
    // by cols entries. The stage of it already in flight is then dropped.
    const bool overrun = !row_ends && prev_col >= cols - 1;
    if (row_ends || overrun) {
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const float sum = warp_sum(acc[b]);
        if (lane == b && b < batch) y[b * rows + current_row] = static_cast<scalar_t>(sum);
        acc[b] = 0.0f;
      }
      prev_col = -1;
      if (overrun) {
        row += row_stride;
        if (row < rows) start_row();
      }
    }
  }
}

// Stages of the stream each warp has requested into L2 beyond the one in
// its registers. MACKO_PREFETCH_STAGES overrides it, for tuning runs.
int prefetch_stages() {
  static const int stages = [] {
    const char* text = std::getenv("MACKO_PREFETCH_STAGES");
    const int value = text ? std::atoi(text) : kDefaultPrefetchStages;
    return value < 1 ? 1 : (value > 8 ? 8 : value);
  }();
  return stages;
}

template <typename scalar_t, typename index_t, int kBatch>
void launch_multiply(const at::Tensor& values, const at::Tensor& deltas,
                     const at::Tensor& row_indices, int64_t rows, int64_t cols,
                     const at::Tensor& x_t, int batch, at::Tensor& y) {
  if (rows == 0) return;
  const int64_t x_bytes = cols * kBatch * static_cast<int64_t>(sizeof(scalar_t));
  const bool shared_x = x_bytes <= kMaxSharedXBytes;
  auto kernel = shared_x ? multiply_kernel<scalar_t, index_t, kBatch, true>
                         : multiply_kernel<scalar_t, index_t, kBatch, false>;
  const int shared_bytes = shared_x ? static_cast<int>((x_bytes + 15) / 16 * 16) : 0;
  if (shared_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
  }
  // Persistent grid: as many blocks as fit on the GPU at once, fewer if
  // there are fewer rows than warps.
  int device, sm_count, blocks_per_sm;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, shared_bytes));
  const int blocks = std::min(blocks_for(rows, kRowsPerBlock), std::max(1, blocks_per_sm) * sm_count);
  kernel<<<blocks, kThreads, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      values.const_data_ptr<scalar_t>(), deltas.const_data_ptr<uint8_t>(),
      row_indices.const_data_ptr<index_t>(), values.numel(), rows,
      static_cast<int>(cols), x_t.const_data_ptr<scalar_t>(), batch,
      y.mutable_data_ptr<scalar_t>(), prefetch_stages());
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
      x_t = aligned16((batched ? x_in[b0] : x_in).contiguous());
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
          default: launch_multiply<scalar_t, index_t, 8>(values, deltas, row_indices, rows, cols, x_t, nb, y_chunk); break;
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
