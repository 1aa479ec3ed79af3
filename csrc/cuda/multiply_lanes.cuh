// multiply_lanes.cuh: the lane kernel, y = M x for 1 to 16 right-hand sides
// of 16-bit values, one lane per row (an experiment: route "lanes", opt-in
// with MACKO_MULTIPLY_ROUTE=lanes; benchmarks/NOTES.md, "one lane per row").
//
// Algorithm. A block takes a band of 32 rows, lane l of every warp row
// band * 32 + l, and splits the columns into one panel per warp: warp w
// takes segments [w * S / P, (w + 1) * S / P) of the S segments of
// kSegmentCols columns. A lane walks its row's entries itself, a group of
// 8 at a time: a group's columns are its base column plus the byte-wise
// prefix sums of its steps (group_decode.cuh), and the base of the next
// group is the last column of this one, so no warp scan is needed. For each
// segment of its panel the warp clears its private dense tile (32 rows x
// kSegmentCols in shared memory), every lane stores its row's entries of
// the segment into its row of the tile (a group that runs past the segment
// is kept for the next one), and the warp multiplies the tile with x's
// columns on the tensor cores (ldmatrix for the two 16-row halves,
// mma.m16n8k16 with x's B fragments loaded from global memory, L1-cached),
// accumulating in registers. Only __syncwarp orders a warp's phases; at the
// end the block adds its warps' partial sums in shared memory and writes y.
//
// Where a lane's walk of a panel starts: it sums its row's steps from the
// row's start, 32 entries (16 bytes of deltas) at a time, up to the first
// chunk whose last column reaches the panel; entries before the panel are
// walked but not stored (their columns are below the first segment).
//
// Loads. A lane's groups come through its own ring of kRingGroups slots in
// shared memory, filled with cp.async kRingGroups - 1 groups ahead (values
// 16 bytes, deltas 4): each lane reads only what it copied, so its own wait
// makes the data visible, and no register slot is ever shifted (NOTES v13l).
//
// Why. A warp that walks one row pays a warp scan per step; a lane that
// walks a row pays about an add, a compare and a 2-byte store per entry.
// x is never gathered per entry: the tile holds the entries, and x is read
// once per tile in mma fragments. inf and NaN in x meet the tile's zeros
// (as in the tile kernel), so this route does not keep the streaming
// kernel's rule that they meet stored entries only.
//
// Layout. Tile rows are kRowPitch scalars apart (kSegmentCols + 8: the 16
// bytes of padding put ldmatrix's 8 row addresses in distinct banks). x:
// [batch][cols] with unit column stride, rows 4-byte aligned, cols a
// multiple of 8 (multiply.cu checks). y: [batch][rows].
#pragma once

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "async_copy.cuh"
#include "group_decode.cuh"
#include "launch_policy.cuh"
#include "multiply_tiles.cuh"
#include "row_dot.cuh"

namespace macko {
namespace cuda {
namespace lanes_impl {

constexpr int kBandRows = kWarpSize;  // one lane a row: two mma tiles high
constexpr int kSegmentCols = 64;      // a warp's tile: 4 mma k-steps
constexpr int kKSteps = kSegmentCols / 16;
constexpr int kRowPitch = kSegmentCols + 8;
constexpr int kRingGroups = 4;  // a power of two
constexpr int kMaxBatch = 16;   // two n-tiles
constexpr int kMaxPanels = 31;  // warps a block: shared memory (kWarpBytes each) and 1024 threads
constexpr int kTileBytes = kBandRows * kRowPitch * 2;
constexpr int kRingValueBytes = kRingGroups * kWarpSize * 16;
constexpr int kRingNibbleBytes = kRingGroups * kWarpSize * 4;
constexpr int kWarpBytes = kTileBytes + kRingValueBytes + kRingNibbleBytes;
static_assert(kTileBytes % 16 == 0 && kRingValueBytes % 16 == 0, "16-byte aligned regions");
static_assert((kRingGroups & (kRingGroups - 1)) == 0, "ring slots wrap with a mask");

template <typename scalar_t, typename index_t>
struct LaneArgs {
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
  int panels;   // warps a block
};

// The sum of the 32 steps (delta + 1) of a 32-entry chunk's deltas.
__device__ __forceinline__ unsigned chunk_steps(const uint4& nibbles) {
  unsigned bytes = 0;
  const uint32_t words[4] = {nibbles.x, nibbles.y, nibbles.z, nibbles.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) bytes += (words[i] & 0x0F0F0F0Fu) + ((words[i] >> 4) & 0x0F0F0F0Fu);
  return 32u + static_cast<unsigned>(__dp4a(static_cast<int>(bytes), 0x01010101, 0));
}

// Clears the nibbles of a chunk's first `lead` entries (0 to 31).
__device__ __forceinline__ uint4 clear_leading(uint4 nibbles, int lead) {
  uint32_t words[4] = {nibbles.x, nibbles.y, nibbles.z, nibbles.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = lead - 8 * i;  // nibbles of word i to clear
    words[i] = n <= 0 ? words[i] : (n >= 8 ? 0u : words[i] & (~0u << (4 * n)));
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// One lane's walk of its row: the group being stored and its ring.
template <typename scalar_t>
struct LaneWalk {
  int64_t group;      // first entry of the current group (a multiple of 8)
  int64_t end;        // the row's end
  int64_t row_group;  // the group that holds the row's first entry (its leading nibbles are not the row's)
  int lead;           // entries of the previous row in that group
  unsigned base;      // column before the current group's first entry
  int pending;        // the current group's first entry not yet stored
  bool active;        // entries left
  uint4 values;
  uint32_t nibbles;
  scalar_t* ring_values;   // this warp's [kRingGroups][32] 16-byte slots
  uint32_t* ring_nibbles;  // [kRingGroups][32]

  __device__ __forceinline__ void issue(const scalar_t* stream_values, const uint8_t* stream_deltas, int64_t g,
                                        int lane) {
    const int slot = static_cast<int>((g / kGroupEntries) & (kRingGroups - 1));
    const bool inside = g < end;
    copy_async_if<16>(inside, ring_values + (slot * kWarpSize + lane) * 8, stream_values + (inside ? g : 0));
    copy_async_if<4>(inside, ring_nibbles + slot * kWarpSize + lane, stream_deltas + (inside ? g / 2 : 0));
    commit_async_copies();
  }

  // Waits for the current group (issued kRingGroups - 2 groups before the
  // newest) and reads it from the ring.
  __device__ __forceinline__ void take(int lane) {
    wait_async_copies<kRingGroups - 2>();
    const int slot = static_cast<int>((group / kGroupEntries) & (kRingGroups - 1));
    values = *reinterpret_cast<const uint4*>(ring_values + (slot * kWarpSize + lane) * 8);
    nibbles = ring_nibbles[slot * kWarpSize + lane];
    if (group == row_group) nibbles &= ~0u << (4 * lead);  // the previous row's entries step by one
  }
};

template <typename scalar_t, typename index_t, int kNTiles>
__global__ void __launch_bounds__(kMaxPanels * kWarpSize) lane_multiply_kernel(const LaneArgs<scalar_t, index_t> args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ uint4 shared_words[];
  char* shared = reinterpret_cast<char*>(shared_words);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t band = blockIdx.x;
  const int64_t row = band * kBandRows + lane;
  char* warp_memory = shared + warp * kWarpBytes;
  scalar_t* tile = reinterpret_cast<scalar_t*>(warp_memory);
  scalar_t* tile_row = tile + lane * kRowPitch;

  allow_dependent_launch();
  wait_for_prerequisite_grids();

  const int segments = (args.cols + kSegmentCols - 1) / kSegmentCols;
  const int first_segment = static_cast<int>(static_cast<int64_t>(segments) * warp / args.panels);
  const int end_segment = static_cast<int>(static_cast<int64_t>(segments) * (warp + 1) / args.panels);
  const unsigned panel_lo = static_cast<unsigned>(first_segment) * kSegmentCols;

  LaneWalk<scalar_t> walk;
  walk.ring_values = reinterpret_cast<scalar_t*>(warp_memory + kTileBytes);
  walk.ring_nibbles = reinterpret_cast<uint32_t*>(warp_memory + kTileBytes + kRingValueBytes);
  int64_t begin = 0;
  walk.end = 0;
  if (row < args.rows) row_range(args.row_indices, row, args.n_entries, begin, walk.end);
  walk.row_group = begin & ~int64_t{kGroupEntries - 1};
  walk.lead = static_cast<int>(begin - walk.row_group);
  walk.group = walk.row_group;
  walk.base = ~0u - static_cast<unsigned>(walk.lead);
  walk.pending = walk.lead;
  walk.active = begin < walk.end && first_segment < end_segment;

  // Skip whole 32-entry chunks whose last column lies before the panel,
  // kScanChunks chunks' deltas requested at once.
  if (walk.active && panel_lo > 0) {
    constexpr int kScanChunks = 8;
    int64_t chunk = begin & ~int64_t{31};
    unsigned before = ~0u - static_cast<unsigned>(begin - chunk);  // the column before the chunk's first entry
    const uint4* chunk_nibbles = reinterpret_cast<const uint4*>(args.deltas);
    bool found = false;
    while (!found && chunk + 32 <= walk.end) {
      uint4 nibbles[kScanChunks];
#pragma unroll
      for (int i = 0; i < kScanChunks; ++i) {
        const int64_t c = chunk + 32 * i;
        nibbles[i] = c + 32 <= walk.end ? load_streaming(chunk_nibbles + c / 32) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int i = 0; i < kScanChunks; ++i) {
        if (found || chunk + 32 > walk.end) break;
        const uint4 steps = chunk < begin ? clear_leading(nibbles[i], static_cast<int>(begin - chunk)) : nibbles[i];
        const unsigned last = before + chunk_steps(steps);
        if (last >= panel_lo) {
          found = true;
        } else {
          before = last;
          chunk += 32;
        }
      }
    }
    if (chunk > walk.row_group) {  // past the row's first group: start at the chunk
      walk.group = chunk;
      walk.base = before;
      walk.pending = 0;
    }
  }
#pragma unroll
  for (int i = 0; i < kRingGroups - 1; ++i) {
    walk.issue(args.values, args.deltas, walk.group + i * kGroupEntries, lane);
  }
  if (walk.active) walk.take(lane);

  float acc[2][kNTiles][4] = {};
  for (int segment = first_segment; segment < end_segment; ++segment) {
    const unsigned lo = static_cast<unsigned>(segment) * kSegmentCols;
    const unsigned hi = lo + kSegmentCols;
    // x's B fragments for this segment, requested before the stores: lane
    // (g, t) = (lane / 4, lane % 4) holds x[n][k + 2t, 2t + 1] and
    // x[n][k + 2t + 8, 2t + 9] for n = 8 n_tile + g; zero past cols or batch.
    uint32_t b[kKSteps][kNTiles][2];
#pragma unroll
    for (int s = 0; s < kKSteps; ++s) {
#pragma unroll
      for (int t = 0; t < kNTiles; ++t) {
        const int n = t * 8 + lane / 4;
        const int k = static_cast<int>(lo) + s * 16 + (lane % 4) * 2;
        const bool real = n < args.batch;
        const uint32_t* x_row = reinterpret_cast<const uint32_t*>(args.x + (real ? n : 0) * args.x_stride);
        b[s][t][0] = real && k < args.cols ? __ldg(x_row + k / 2) : 0u;
        b[s][t][1] = real && k + 8 < args.cols ? __ldg(x_row + (k + 8) / 2) : 0u;
      }
    }
    // Clear the tile: 32 rows x kSegmentCols, 16 bytes a store.
#pragma unroll
    for (int i = 0; i < kBandRows * kSegmentCols / 8 / kWarpSize; ++i) {
      const int chunk = i * kWarpSize + lane;
      const int r = chunk / (kSegmentCols / 8);
      const int c = chunk % (kSegmentCols / 8);
      *reinterpret_cast<uint4*>(tile + r * kRowPitch + c * 8) = make_uint4(0, 0, 0, 0);
    }
    __syncwarp();

    // Each lane stores its row's entries of [lo, hi).
    bool blocked = !walk.active;
    while (__any_sync(kFullMask, !blocked)) {
      if (!blocked) {
        const GroupSteps steps(walk.nibbles, 0xFFu);
        const int64_t left = walk.end - walk.group;
        const int in_row = left >= kGroupEntries ? kGroupEntries : static_cast<int>(left);
        const scalar_t* entry = reinterpret_cast<const scalar_t*>(&walk.values);
        // Entries done after this segment: stored before, below hi, or
        // outside the row (the previous row's leading ones count as stored).
        unsigned below = 0;
        for_each_offset(steps, [&](int j, unsigned offset) {
          const unsigned c = walk.base + offset;
          if (j < in_row && j >= walk.pending && c - lo < static_cast<unsigned>(kSegmentCols)) {
            tile_row[c - lo] = entry[j];
          }
          if (j >= in_row || j < walk.pending || c < hi) below |= 1u << j;
        });
        if (below == 0xFFu) {  // the group is done: on to the next
          walk.base += steps.odd_offsets() >> 24;
          walk.group += kGroupEntries;
          walk.pending = 0;
          if (walk.group >= walk.end) {
            walk.active = false;
            blocked = true;
          } else {
            walk.issue(args.values, args.deltas, walk.group + (kRingGroups - 2) * kGroupEntries, lane);
            walk.take(lane);
          }
        } else {  // the rest of the group is for a later segment
          walk.pending = __ffs(~below) - 1;
          blocked = true;
        }
      }
    }
    __syncwarp();

#pragma unroll
    for (int s = 0; s < kKSteps; ++s) {
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        uint32_t a[4];
        tiles_impl::ldmatrix_x4(a, tile + (m * 16 + lane % 16) * kRowPitch + s * 16 + (lane / 16) * 8);
#pragma unroll
        for (int t = 0; t < kNTiles; ++t) multiply_impl::mma_16816<scalar_t>(acc[m][t], a, b[s][t][0], b[s][t][1]);
      }
    }
    __syncwarp();  // the tile is cleared again only after every lane's ldmatrix
  }
  wait_async_copies<0>();  // no copy may still write to the ring when its memory is reused

  // The panels' partial sums, added in shared memory (each warp's own tile).
  __syncthreads();
  float* partial = reinterpret_cast<float*>(warp_memory);
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int t = 0; t < kNTiles; ++t) {
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[((m * kNTiles + t) * 4 + i) * kWarpSize + lane] = acc[m][t][i];
    }
  }
  __syncthreads();
  // acc[m][t][i] of lane 4g + q is D[g + 8 (i / 2)][2q + i % 2] of M-tile m,
  // n-tile t (row within the half, right-hand side within the n-tile).
  for (int o = threadIdx.x; o < kBandRows * kNTiles * 8; o += blockDim.x) {
    const int r = o % kBandRows;
    const int n = o / kBandRows;
    const int m = r / 16, in_half = r % 16;
    const int t = n / 8, in_tile = n % 8;
    const int source_lane = (in_half % 8) * 4 + in_tile / 2;
    const int i = (in_half / 8) * 2 + in_tile % 2;
    float sum = 0.0f;
    for (int w = 0; w < args.panels; ++w) {
      sum += reinterpret_cast<const float*>(shared + w * kWarpBytes)[((m * kNTiles + t) * 4 + i) * kWarpSize +
                                                                      source_lane];
    }
    const int64_t out_row = band * kBandRows + r;
    if (n < args.batch && out_row < args.rows) args.y[n * args.rows + out_row] = static_cast<scalar_t>(sum);
  }
#endif
}

// Panels a band (warps a block): enough warps for about kTargetWarpsPerSm
// on every SM, at most one per segment and kMaxPanels. More panels, more
// warps, but each panel's lanes first sum their rows' deltas up to the
// panel (half a row on average): MACKO_LANES_WARPS_PER_SM overrides the
// target, for experiments.
constexpr int kTargetWarpsPerSm = 16;

inline int target_warps_per_sm() {
  const char* setting = std::getenv("MACKO_LANES_WARPS_PER_SM");
  const int value = setting == nullptr ? 0 : std::atoi(setting);
  return value > 0 ? value : kTargetWarpsPerSm;
}

template <typename scalar_t, typename index_t, int kNTiles>
void launch_lanes(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices, int64_t rows,
                  int64_t cols, const at::Tensor& x, at::Tensor& y) {
  const int device = current_device();
  const DeviceFacts& facts = device_facts(device);
  const int64_t bands = (rows + kBandRows - 1) / kBandRows;
  const int64_t segments = (cols + kSegmentCols - 1) / kSegmentCols;
  const int64_t wanted = (static_cast<int64_t>(facts.sm_count) * target_warps_per_sm() + bands - 1) / bands;
  const int max_panels = std::min(kMaxPanels, facts.max_shared_per_block / kWarpBytes);
  const int panels = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({wanted, segments, max_panels})));
  const int shared_bytes = panels * kWarpBytes;
  const void* kernel = reinterpret_cast<const void*>(lane_multiply_kernel<scalar_t, index_t, kNTiles>);
  TORCH_CHECK(resident_blocks(kernel, device, panels * kWarpSize, shared_bytes) > 0,
              "macko_spmv multiply (lanes): no launch configuration fits this GPU");
  TORCH_CHECK(bands <= std::numeric_limits<int>::max(), "macko_spmv multiply (lanes): too many rows (", rows, ")");
  LaneArgs<scalar_t, index_t> args{};
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
  args.panels = panels;
  launch_kernel(lane_multiply_kernel<scalar_t, index_t, kNTiles>, dim3(static_cast<unsigned>(bands)),
                dim3(panels * kWarpSize), shared_bytes, c10::cuda::getCurrentCUDAStream(),
                programmatic_launch(device), args);
}

// y [batch, rows] = x [batch, cols] M^T for 1 <= batch <= kMaxBatch, 16-bit
// values, x as the header says.
template <typename scalar_t>
void multiply_lanes_typed(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                          int64_t rows, int64_t cols, const at::Tensor& x, at::Tensor& y) {
  MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
    dispatch_n_tiles<kMaxBatch / 8>(x.size(0), "lanes", [&](auto n_tiles) {
      launch_lanes<scalar_t, index_t, decltype(n_tiles)::value>(values, deltas, row_indices, rows, cols, x, y);
    });
  });
}

}  // namespace lanes_impl

// The lane kernels of the 16-bit dtypes, compiled in multiply_<dtype>.cu.
#define MACKO_INSTANTIATE_LANES(scalar_t) MACKO_INSTANTIATE_BATCH_KERNEL(lanes_impl::multiply_lanes_typed, scalar_t)
extern MACKO_INSTANTIATE_LANES(c10::Half);
extern MACKO_INSTANTIATE_LANES(c10::BFloat16);

}  // namespace cuda
}  // namespace macko
