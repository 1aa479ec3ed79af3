// multiply_tiles.cuh: the tile kernel, y = M x for 8 to 64 right-hand sides
// of 16-bit values per pass: "load as sparse, compute as dense".
//
// Algorithm. A block takes kTileRows (16) consecutive rows, one warp per
// row, and walks them in lockstep through the columns, one segment of
// kSegmentCols columns at a time (1024, 512 or 256 by batch width:
// segment_cols). For each segment every warp clears its row of a dense tile
// in shared memory and stores its row's entries of the segment into it: the
// warp walks its row's stream a warp step (256 entries, an aligned group
// per lane) at a time, decoding columns as every kernel here does
// (group_decode.cuh), and keeps a step that runs into the next segment for
// the next one. Meanwhile the block copies the segment's columns of x
// ([batch][cols]) into a second tile with cp.async. After one barrier the
// tile is a dense 16 x kSegmentCols block of M and x's kSegmentCols x batch
// block beside it: the tensor cores multiply them (mma.m16n8k16, operands
// loaded with ldmatrix), each warp one n-tile of 8 right-hand sides and a
// slice of the segment's k-steps, accumulating across segments. Two buffers
// alternate, so a segment's stores overlap the previous segment's
// products, and x's block of a segment is copied during the segment before;
// at the rows' end the warps' partial sums are added in shared memory and
// written to y.
//
// Why. The streaming kernel gathers kBatch values of x per stored entry
// from shared memory (16 bytes at batch 8, with random bank conflicts) and
// its registers grow with the batch: past batch 2-4 it is bound by those
// gathers. Here x is read by ldmatrix in whole 16-byte rows, once per tile,
// and the cost per stored entry is its decode and one 2-byte store, whatever
// the batch; the dense products cost the tensor cores little. The matrix is
// still read once per pass, in coalesced 16-byte loads, with two steps per
// warp in flight. What a segment costs besides its entries (clearing, x's
// copies, the barrier) is the same for every segment, hence wide segments.
//
// Layout. Tile rows are kRowPitch scalars apart (kSegmentCols + 8: the 16
// bytes of padding put ldmatrix's 8 row addresses in distinct banks). x
// must have unit column stride, 16-byte aligned rows, and cols a multiple
// of 8 (multiply.cu checks, and copies x otherwise).
#pragma once

#include <algorithm>

#include "async_copy.cuh"
#include "group_decode.cuh"
#include "launch_policy.cuh"
#include "row_dot.cuh"

namespace macko {
namespace cuda {
namespace tiles_impl {

constexpr int kTileRows = 16;  // one warp a row, one mma tile high
constexpr int kTileThreads = kTileRows * kWarpSize;
constexpr int kMaxBatch = 64;  // right-hand sides per pass: 8 n-tiles
// Columns a warp clears with one 16-byte store a lane.
constexpr int kClearCols = kWarpSize * 8;

// A segment's width, by n-tiles: as wide as keeps two blocks' double
// buffers (~100 KB each) on one SM. Each segment costs every warp a fixed
// ~190 instructions (clearing, x's copies, the walk's entry and exit, the
// barrier: Nsight Compute on an H200, NOTES v13i), so wider segments spend
// fewer of them per column.
constexpr int segment_cols(int n_tiles) { return n_tiles == 1 ? 1024 : n_tiles <= 4 ? 512 : 256; }

template <int kNTiles>
struct TileShape {
  static constexpr int kSegmentCols = segment_cols(kNTiles);
  static constexpr int kKSteps = kSegmentCols / 16;  // mma k-steps per segment
  // Tile rows kRowPitch scalars apart: 16 bytes past a multiple of 128 put
  // ldmatrix's 8 row addresses in distinct banks.
  static constexpr int kRowPitch = kSegmentCols + 8;
  static constexpr int kBatchPad = kNTiles * 8;
  static constexpr int kWarpsPerNTile = kTileRows / kNTiles;  // k-slices of each n-tile
  static constexpr int kKStepsPerWarp = kKSteps / kWarpsPerNTile;
  static constexpr int kMatrixBytes = kTileRows * kRowPitch * 2;
  static constexpr int kXBytes = kBatchPad * kRowPitch * 2;
  static constexpr int kBufferBytes = kMatrixBytes + kXBytes;
  static constexpr int kSharedBytes = 2 * kBufferBytes;
  // x's copies of a segment: 16 bytes each, kXCopiesPerThread a thread.
  static constexpr int kChunksPerXRow = kSegmentCols / 8;
  static constexpr int kXCopiesPerThread = kBatchPad * kChunksPerXRow / kTileThreads;
  static_assert(kSegmentCols % kClearCols == 0 && kSegmentCols % 64 == 0, "whole clearing stores, skewed pitch");
  static_assert(kTileRows % kNTiles == 0 && kKSteps % kWarpsPerNTile == 0, "warps split the n-tiles evenly");
  static_assert(kXCopiesPerThread * kTileThreads == kBatchPad * kChunksPerXRow, "x's copies split evenly");
  static_assert(kTileRows * kWarpSize * 4 * 4 <= kMatrixBytes, "the final sums fit in buffer 0's matrix tile");
};

template <typename scalar_t, typename index_t>
struct TileArgs {
  const scalar_t* values;
  const uint8_t* deltas;
  const index_t* row_indices;
  int64_t n_entries;
  int64_t rows;
  int cols;
  const scalar_t* x;  // [batch][cols], row stride x_stride
  int64_t x_stride;
  int batch;
  scalar_t* y;  // [batch][rows]
  int64_t n_tiles;
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
}

template <typename scalar_t, typename index_t, int kNTiles>
__global__ void __launch_bounds__(kTileThreads, 2) tile_multiply_kernel(const TileArgs<scalar_t, index_t> args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Shape = TileShape<kNTiles>;
  constexpr int kSegmentCols = Shape::kSegmentCols;
  constexpr int kRowPitch = Shape::kRowPitch;
  extern __shared__ uint4 shared_words[];
  char* shared = reinterpret_cast<char*>(shared_words);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const unsigned ucols = static_cast<unsigned>(args.cols);
  const int segments = (args.cols + kSegmentCols - 1) / kSegmentCols;
  const uint32_t* nibble_words = reinterpret_cast<const uint32_t*>(args.deltas);
  // This warp's share of the products: n-tile n_tile, k-slice k_slice.
  const int n_tile = warp / Shape::kWarpsPerNTile;
  const int k_slice = warp % Shape::kWarpsPerNTile;

  // Both buffers start zero: x's rows past `batch` are never copied (their
  // products land in columns of y that are not written).
  for (int i = threadIdx.x; i < Shape::kSharedBytes / 16; i += blockDim.x) shared_words[i] = make_uint4(0, 0, 0, 0);
  __syncthreads();

  // Copies x's columns of segment `segment` into that segment's buffer, 8
  // columns (16 bytes) a copy; zeros past the last column, so that the
  // tile's zero columns there multiply zeros, not stale data.
  auto copy_x = [&](int segment) {
    scalar_t* x_tile = reinterpret_cast<scalar_t*>(shared + (segment & 1) * Shape::kBufferBytes + Shape::kMatrixBytes);
    const int lo = segment * kSegmentCols;
#pragma unroll
    for (int i = 0; i < Shape::kXCopiesPerThread; ++i) {
      const int c = threadIdx.x + i * kTileThreads;
      const int b = c / Shape::kChunksPerXRow;  // powers of two: shifts
      const int first_col = lo + (c % Shape::kChunksPerXRow) * 8;
      scalar_t* dst = x_tile + b * kRowPitch + (first_col - lo);
      if (b >= args.batch) continue;
      if (first_col < args.cols) {
        copy16_async(dst, args.x + b * args.x_stride + first_col);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
    commit_async_copies();
  };

  for (int64_t tile = blockIdx.x; tile < args.n_tiles; tile += gridDim.x) {
    // x's block for a segment is requested one segment ahead: a copy from
    // L2 waited for in the same segment would stall every segment (the
    // first version did, at ~1.8 us a segment).
    copy_x(0);
    const int64_t row = tile * kTileRows + warp;
    int64_t begin = 0, end = 0;
    if (row < args.rows) row_range(args.row_indices, row, args.n_entries, begin, end);
    // The row's walk: three slots of a warp step's loads, used in turn. The
    // slot `current` holds the step whose entries are being stored
    // (decoded into col), the other two the next two steps' loads. A
    // consumed slot is refilled with the step after those, so each load
    // has two steps to arrive; the slots never move (copying a slot whose
    // load is in flight would wait for it: the first version did, and so
    // waited for a load it had just issued at every step, NOTES v13l).
    int64_t step = begin & ~(kGroupEntries - 1);
    unsigned prev_col = ~0u;
    StepGroup<scalar_t> slot0, slot1, slot2;
    slot0.load(args.values, nibble_words, step + lane * kGroupEntries, begin, end);
    slot1.load(args.values, nibble_words, step + kWarpStepEntries + lane * kGroupEntries, begin, end);
    slot2.load(args.values, nibble_words, step + 2 * kWarpStepEntries + lane * kGroupEntries, begin, end);
    int current = 0;  // warp-uniform
    unsigned col[kGroupEntries];
    bool walking = step < end;  // warp-uniform
    if (walking) slot0.decode(lane, prev_col, col);

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int segment = 0; segment < segments; ++segment) {
      char* buffer = shared + (segment & 1) * Shape::kBufferBytes;
      scalar_t* matrix_tile = reinterpret_cast<scalar_t*>(buffer);
      scalar_t* x_tile = reinterpret_cast<scalar_t*>(buffer + Shape::kMatrixBytes);
      const unsigned lo = static_cast<unsigned>(segment) * kSegmentCols;
      const unsigned hi = lo + kSegmentCols;
      // This warp's row of the tile: cleared, then the row's entries of the
      // segment.
      scalar_t* tile_row = matrix_tile + warp * kRowPitch;
#pragma unroll
      for (int i = 0; i < kSegmentCols / kClearCols; ++i) {
        reinterpret_cast<uint4*>(tile_row)[i * kWarpSize + lane] = make_uint4(0, 0, 0, 0);
      }
      __syncwarp();
      // Stores the step in `cur` (its entries in this segment); then, unless
      // the step goes on into the next segment or the row ends, refills
      // `cur` with the step two after the next and decodes `next`, the new
      // current step. True if the walk moved on to `next`.
      auto store_and_advance = [&](StepGroup<scalar_t>& cur, const StepGroup<scalar_t>& next)
                                   __attribute__((always_inline)) {
        const scalar_t* entry = reinterpret_cast<const scalar_t*>(cur.group.words);
#pragma unroll
        for (int j = 0; j < kGroupEntries; ++j) {
          if (col[j] - lo < static_cast<unsigned>(kSegmentCols)) tile_row[col[j] - lo] = entry[j];
        }
        if (prev_col >= hi) return false;  // the step goes on into the next segment
        step += kWarpStepEntries;
        walking = step < end && prev_col + 1u < ucols;  // a corrupted stream stops at the last column
        if (!walking) return false;
        cur.load(args.values, nibble_words, step + 2 * kWarpStepEntries + lane * kGroupEntries, begin, end);
        next.decode(lane, prev_col, col);
        return true;
      };
      while (walking) {  // warp-uniform; each branch names its slots, so they stay put in registers
        bool moved;
        if (current == 0) {
          moved = store_and_advance(slot0, slot1);
        } else if (current == 1) {
          moved = store_and_advance(slot1, slot2);
        } else {
          moved = store_and_advance(slot2, slot0);
        }
        if (!moved) break;
        current = current == 2 ? 0 : current + 1;
      }
      wait_async_copies<0>();
      __syncthreads();  // the tile is whole, and x's block has arrived
      // The next segment's buffer was last read by the previous segment's
      // products, which every warp finished before this barrier.
      if (segment + 1 < segments) copy_x(segment + 1);

#pragma unroll
      for (int s = 0; s < Shape::kKStepsPerWarp; ++s) {
        const int k = (k_slice * Shape::kKStepsPerWarp + s) * 16;
        uint32_t a[4], b[2];
        ldmatrix_x4(a, matrix_tile + (lane % 16) * kRowPitch + k + (lane / 16) * 8);
        ldmatrix_x2(b, x_tile + (n_tile * 8 + lane % 8) * kRowPitch + k + ((lane / 8) % 2) * 8);
        multiply_impl::mma_16816<scalar_t>(acc, a, b[0], b[1]);
      }
      // No barrier here: the next segment fills the other buffer, and this
      // one is filled again only after the next segment's barrier, which
      // comes after every warp's products from this one.
    }

    // The k-slices' partial sums, added in shared memory (buffer 0, free
    // once every warp is past the last segment's products).
    __syncthreads();
    float* partial = reinterpret_cast<float*>(shared);
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[(warp * kWarpSize + lane) * 4 + i] = acc[i];
    __syncthreads();
    // acc[i] of lane 4g + t is D[g + 8 (i / 2)][2t + i % 2] (row, right-hand
    // side within the n-tile).
    for (int o = threadIdx.x; o < kTileRows * Shape::kBatchPad; o += blockDim.x) {
      const int m = o % kTileRows;
      const int n = o / kTileRows;
      const int source_lane = (m % 8) * 4 + (n % 8) / 2;
      const int i = (m / 8) * 2 + n % 2;
      float sum = 0.0f;
#pragma unroll
      for (int s = 0; s < Shape::kWarpsPerNTile; ++s) {
        sum += partial[(((n / 8) * Shape::kWarpsPerNTile + s) * kWarpSize + source_lane) * 4 + i];
      }
      const int64_t out_row = tile * kTileRows + m;
      if (n < args.batch && out_row < args.rows) args.y[n * args.rows + out_row] = static_cast<scalar_t>(sum);
    }
    // Buffer 0 is cleared by the next rows' first segment only after this.
    __syncthreads();
  }
#endif
}

template <typename scalar_t, typename index_t, int kNTiles>
void launch_tiles(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices, int64_t rows,
                  int64_t cols, const at::Tensor& x, at::Tensor& y) {
  using Shape = TileShape<kNTiles>;
  const int device = current_device();
  const void* kernel = reinterpret_cast<const void*>(tile_multiply_kernel<scalar_t, index_t, kNTiles>);
  const int per_sm = std::max(1, resident_blocks(kernel, device, kTileThreads, Shape::kSharedBytes));
  TileArgs<scalar_t, index_t> args{};
  args.values = values.const_data_ptr<scalar_t>();
  args.deltas = deltas.const_data_ptr<uint8_t>();
  args.row_indices = row_indices.const_data_ptr<index_t>();
  args.n_entries = values.numel();
  args.rows = rows;
  args.cols = static_cast<int>(cols);
  args.x = x.const_data_ptr<scalar_t>();
  args.x_stride = x.stride(0);
  args.batch = static_cast<int>(x.size(0));
  args.y = y.mutable_data_ptr<scalar_t>();
  args.n_tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t blocks = std::min<int64_t>(args.n_tiles, static_cast<int64_t>(per_sm) * device_facts(device).sm_count);
  tile_multiply_kernel<scalar_t, index_t, kNTiles>
      <<<static_cast<unsigned>(blocks), kTileThreads, Shape::kSharedBytes, c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// y [batch, rows] = x [batch, cols] M^T for 1 <= batch <= kMaxBatch, 16-bit
// values, x as the header says.
template <typename scalar_t>
void multiply_tiles_typed(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                          int64_t rows, int64_t cols, const at::Tensor& x, at::Tensor& y) {
  const int64_t batch = x.size(0);
  TORCH_CHECK(batch >= 1 && batch <= kMaxBatch, "macko_spmv multiply (tiles): batch ", batch, " outside 1..", kMaxBatch);
  MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
    if (batch <= 8) {
      launch_tiles<scalar_t, index_t, 1>(values, deltas, row_indices, rows, cols, x, y);
    } else if (batch <= 16) {
      launch_tiles<scalar_t, index_t, 2>(values, deltas, row_indices, rows, cols, x, y);
    } else if (batch <= 32) {
      launch_tiles<scalar_t, index_t, 4>(values, deltas, row_indices, rows, cols, x, y);
    } else {
      launch_tiles<scalar_t, index_t, 8>(values, deltas, row_indices, rows, cols, x, y);
    }
  });
}

}  // namespace tiles_impl

// The tile kernels of the 16-bit dtypes, compiled in multiply_<dtype>.cu.
#define MACKO_INSTANTIATE_TILES(scalar_t)                                                                     \
  template void tiles_impl::multiply_tiles_typed<scalar_t>(const at::Tensor&, const at::Tensor&, const at::Tensor&, \
                                                           int64_t, int64_t, const at::Tensor&, at::Tensor&)
extern MACKO_INSTANTIATE_TILES(c10::Half);
extern MACKO_INSTANTIATE_TILES(c10::BFloat16);

}  // namespace cuda
}  // namespace macko
