// multiply_tiles.cuh: the tile kernel, y = M x for 8 to 64 right-hand sides
// of 16-bit values per pass: "load as sparse, compute as dense".
//
// Algorithm. A block takes kTileRows (16) consecutive rows, and its kPanels
// (8) warps split the columns into as many panels, one a warp. First each
// warp scans two of the rows' nibbles (4 groups a lane, one warp scan per
// 1024 entries) and records, for every panel, the first group of the row
// holding an entry of that panel or past it, and the column before that
// group's first entry: the walk's starting point within the panel (shared
// memory, one barrier). Then each warp walks its panel of all 16 rows by
// itself: two lanes a row, one aligned 8-entry group each per iteration,
// their columns a prefix sum within the lane and one shuffle between the
// two. The panel is taken kBlockCols (128) columns at a time: the warp
// stores the rows' entries of those columns into its own dense 16 x 128 tile
// in shared memory, keeps a pair of groups that runs past them for the next
// columns, and then multiplies the tile by x's 128 columns on the tensor
// cores (ldmatrix + mma.m16n8k16: the 16 rows are the m dimension, 8
// right-hand sides an n-tile), accumulating across the panel. At the end the
// 8 panels' sums are added in shared memory, in a fixed order, and written.
//
// Why. The streaming kernel gathers kBatch values of x per stored entry from
// shared memory (16 bytes at batch 8, with random bank conflicts): past
// batch 2-4 those gathers bound it. Here each stored entry costs its decode
// and one 2-byte store whatever the batch; x is read in whole 16-byte rows,
// once per 16 rows. The first version of this kernel walked the 16 rows
// with 16 warps in lockstep through the columns, with a block barrier per
// segment; the slowest of 16 serial row walks set every segment's pace
// (benchmarks/NOTES.md, v13g-v13l). A warp here waits for no other until the
// rows' end, and its 32 lanes walk 16 rows at once.
//
// Loads. Each lane copies its own next groups (16 bytes of values, 4 of
// nibbles) into its own ring of kRingGroups slots with cp.async, kRingGroups
// groups ahead of the one it decodes, and waits for them one at a time
// (cp.async groups are per thread, so no lane waits for another). A row's
// copies stop at its panel's last group, which the scan found (the start of
// the next panel): no bytes past the panel are read. x's 128 columns are
// loaded into registers as a step starts and stored into the warp's x tile
// before its products, so their latency hides behind the step's decoding.
//
// Layout. The tile is [16 rows][kPitch scalars], x's tile [8 x kNTiles
// right-hand sides][kPitch]: kPitch = 128 + 8 puts ldmatrix's 8 row
// addresses in distinct banks. x must have unit column stride, 16-byte
// aligned rows, and cols a multiple of 8 (multiply.cu checks, and copies x
// otherwise). Columns are 32-bit unsigned; a corrupted stream's columns past
// `cols` are never stored, and each pair of groups moves a row's column on
// by at least one, so every walk ends.
#pragma once

#include <algorithm>

#include "async_copy.cuh"
#include "group_decode.cuh"
#include "launch_policy.cuh"
#include "row_dot.cuh"

namespace macko {
namespace cuda {
namespace tiles_impl {

constexpr int kTileRows = 16;  // rows of a block: one mma tile high
constexpr int kPanels = 8;     // warps of a block, one column panel each
constexpr int kTileThreads = kPanels * kWarpSize;
constexpr int kBlockCols = 128;     // columns of a warp's tile per step
constexpr int kPitch = kBlockCols + 8;
constexpr int kLanesPerRow = kWarpSize / kTileRows;  // 2
constexpr int kGroupsPerLane = 2;   // groups a lane decodes per iteration
constexpr int kSetGroups = kLanesPerRow * kGroupsPerLane;  // a row's groups per iteration
constexpr int kRingSets = 4;        // sets a lane's ring holds (the next three in flight)
constexpr int kScanGroups = 16;     // groups a lane scans per step of the first phase (4 loads)
static_assert(kLanesPerRow == 2, "a pair of lanes per row: one shuffle per iteration");
static_assert(kTileRows % kPanels == 0, "each warp scans the same number of rows");

template <int kNTiles>
struct TileShape {
  static constexpr int kBatchPad = kNTiles * 8;
  static constexpr int kMatrixBytes = kTileRows * kPitch * 2;
  static constexpr int kXBytes = kBatchPad * kPitch * 2;
  static constexpr int kRingValueBytes = kRingSets * kWarpSize * kGroupsPerLane * 16;
  static constexpr int kRingNibbleBytes = kRingSets * kWarpSize * kGroupsPerLane * 4;
  static constexpr int kWarpBytes = kMatrixBytes + kXBytes + kRingValueBytes + kRingNibbleBytes;
  // The scan's results: [row][panel] start group (relative to the row's
  // first) and the column before it.
  static constexpr int kMetaBytes = kTileRows * kPanels * 8;
  static constexpr int kSharedBytes = kPanels * kWarpBytes + kMetaBytes;
  // x's 16-byte chunks of one step, and a lane's share.
  static constexpr int kXChunks = kBatchPad * kBlockCols / 8;
  static constexpr int kXChunksPerLane = kXChunks / kWarpSize;
  // Up to two n-tiles, x's chunks are loaded as a step starts (4 registers
  // each) and stored before its products; wider batches load them there.
  static constexpr bool kXAhead = kNTiles <= 2;
  static_assert(kXChunksPerLane * kWarpSize == kXChunks, "x's chunks split evenly");
  static_assert(kTileRows * kBlockCols / 8 % kWarpSize == 0, "the tile clears in whole stores a lane");
  static_assert(kPanels * kNTiles * kWarpSize * 4 * 4 <= kPanels * kWarpBytes, "the panels' sums fit");
};

template <typename scalar_t, typename index_t>
struct TileArgs {
  const scalar_t* values;
  const uint8_t* deltas;
  const index_t* row_indices;
  int64_t n_entries;
  int64_t rows;
  int cols;
  int panel_cols;  // a multiple of kBlockCols; kPanels panels cover cols
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

// The first phase for one row [begin, end): for each panel p, starts[p] =
// the first group (counted from the row's first, begin / 8) whose last entry
// lies in panel p or past it, and prevs[p] = the column of the row's entry
// before that group (~0u if none); panels the row does not reach get the
// group past its end. A group spans at most 8 x 16 = 128 <= panel_cols
// columns, so it starts at most one panel. A warp step covers kScanGroups
// groups a lane (4096 entries: most rows of LLM layers in one step), and the
// loads of all the warp's rows are issued before any is scanned, so the
// phase costs about one DRAM trip (it was a chain of one trip per 1024
// entries and row, a first version's largest cost).
struct RowScan {
  int64_t begin, end, g0, g1;
  unsigned prev;  // the column of the last entry before the next step
  uint4 words[kScanGroups / 4];
  bool done;
};

__device__ __forceinline__ void scan_load(RowScan& scan, const uint32_t* nibble_words, int64_t n_groups,
                                          int64_t step, int lane) {
  const int64_t first = step + kScanGroups * lane;
#pragma unroll
  for (int w = 0; w < kScanGroups / 4; ++w) {
    const int64_t group = first + 4 * w;
    scan.words[w] = make_uint4(0, 0, 0, 0);
    if (scan.done || group >= scan.g1 || group + 4 <= scan.g0) continue;
    if (group + 4 <= n_groups) {
      scan.words[w] = __ldg(reinterpret_cast<const uint4*>(nibble_words + group));
    } else {  // the stream's last groups: no read past its end
      uint32_t* word = &scan.words[w].x;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (group + k < n_groups) word[k] = __ldg(nibble_words + group + k);
      }
    }
  }
}

__device__ __forceinline__ void scan_step(RowScan& scan, int64_t step, unsigned ucols, unsigned panel_cols,
                                          int lane, int* starts, unsigned* prevs) {
  if (scan.done) return;  // warp-uniform
  const int64_t first = step + kScanGroups * lane;
  unsigned totals[kScanGroups];
  int lane_total = 0;
#pragma unroll
  for (int k = 0; k < kScanGroups; ++k) {
    const uint32_t nibbles = (&scan.words[k / 4].x)[k % 4];
    const unsigned mask = group_row_mask(kGroupEntries * (first + k), scan.begin, scan.end);
    totals[k] = mask ? GroupSteps(nibbles, mask).odd_offsets() >> 24 : 0u;
    lane_total += static_cast<int>(totals[k]);
  }
  int warp_total;
  const int inclusive = warp_inclusive_sum(lane_total, lane, warp_total);
  unsigned before = scan.prev + static_cast<unsigned>(inclusive - lane_total);
#pragma unroll
  for (int k = 0; k < kScanGroups; ++k) {
    const unsigned after = before + totals[k];  // the group's last column
    const unsigned p = after / panel_cols;
    if (totals[k] != 0 && p >= 1 && p < kPanels && before + 1u <= p * panel_cols) {
      starts[p] = static_cast<int>(first + k - scan.g0);
      prevs[p] = before;
    }
    before = after;
  }
  scan.prev += static_cast<unsigned>(warp_total);
  // Done at the row's end, or when every later entry lies past the last column.
  scan.done = step + kScanGroups * kWarpSize >= scan.g1 || scan.prev + 1u >= ucols;
}

template <typename scalar_t, typename index_t, int kNTiles>
__global__ void __launch_bounds__(kTileThreads, kNTiles <= 2 ? 2 : 1) tile_multiply_kernel(const TileArgs<scalar_t, index_t> args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Shape = TileShape<kNTiles>;
  extern __shared__ uint4 shared_words[];
  char* shared = reinterpret_cast<char*>(shared_words);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int pair_row = lane / kLanesPerRow;  // this lane's row of the tile
  const int half = lane % kLanesPerRow;      // and its group of the pair
  char* own = shared + warp * Shape::kWarpBytes;
  scalar_t* matrix_tile = reinterpret_cast<scalar_t*>(own);
  scalar_t* x_tile = reinterpret_cast<scalar_t*>(own + Shape::kMatrixBytes);
  const uint32_t ring_values =
      static_cast<uint32_t>(__cvta_generic_to_shared(own + Shape::kMatrixBytes + Shape::kXBytes)) +
      16 * kGroupsPerLane * lane;
  const uint32_t ring_nibbles = ring_values - 16 * kGroupsPerLane * lane + Shape::kRingValueBytes + 4 * kGroupsPerLane * lane;
  int* meta_start = reinterpret_cast<int*>(shared + kPanels * Shape::kWarpBytes);
  unsigned* meta_prev = reinterpret_cast<unsigned*>(meta_start + kTileRows * kPanels);
  const uint32_t* nibble_words = reinterpret_cast<const uint32_t*>(args.deltas);
  const int64_t n_groups = args.n_entries / kGroupEntries;
  const unsigned ucols = static_cast<unsigned>(args.cols);
  const unsigned panel_cols = static_cast<unsigned>(args.panel_cols);
  const unsigned panel_lo = static_cast<unsigned>(warp) * panel_cols;
  const unsigned panel_hi = min(panel_lo + panel_cols, ucols);

  for (int64_t tile = blockIdx.x; tile < args.n_tiles; tile += gridDim.x) {
    constexpr int kScanRows = kTileRows / kPanels;  // rows this warp scans
    RowScan scans[kScanRows];
#pragma unroll
    for (int k = 0; k < kScanRows; ++k) {
      const int tile_row = warp * kScanRows + k;
      const int64_t row = tile * kTileRows + tile_row;
      RowScan& scan = scans[k];
      scan.begin = scan.end = 0;
      if (row < args.rows) row_range(args.row_indices, row, args.n_entries, scan.begin, scan.end);
      scan.g0 = scan.begin / kGroupEntries;
      scan.g1 = (scan.end + kGroupEntries - 1) / kGroupEntries;
      scan.prev = ~0u;
      scan.done = scan.g0 >= scan.g1;
      if (lane < kPanels) {
        meta_start[tile_row * kPanels + lane] = lane == 0 ? 0 : static_cast<int>(scan.g1 - scan.g0);
        meta_prev[tile_row * kPanels + lane] = ~0u;
      }
    }
    __syncwarp();
    // Steps are aligned to 4 groups (16-byte loads); each row from its own.
    int64_t steps[kScanRows];
#pragma unroll
    for (int k = 0; k < kScanRows; ++k) steps[k] = scans[k].g0 & ~int64_t{3};
    bool scanning = true;
    while (scanning) {  // warp-uniform
#pragma unroll
      for (int k = 0; k < kScanRows; ++k) scan_load(scans[k], nibble_words, n_groups, steps[k], lane);
      scanning = false;
#pragma unroll
      for (int k = 0; k < kScanRows; ++k) {
        const int tile_row = warp * kScanRows + k;
        scan_step(scans[k], steps[k], ucols, panel_cols, lane, meta_start + tile_row * kPanels,
                  meta_prev + tile_row * kPanels);
        steps[k] += kScanGroups * kWarpSize;
        scanning |= !scans[k].done;
      }
    }
    // The tile starts zero (the previous rows' sums were added in it).
#pragma unroll
    for (int i = 0; i < kTileRows * kBlockCols / 8 / kWarpSize; ++i) {
      const int chunk = i * kWarpSize + lane;
      reinterpret_cast<uint4*>(matrix_tile + (chunk / (kBlockCols / 8)) * kPitch)[chunk % (kBlockCols / 8)] =
          make_uint4(0, 0, 0, 0);
    }
    __syncthreads();  // every row's panel starts are in shared memory

    // This lane's row and its walk through the panel, in sets of
    // kSetGroups (4) consecutive groups: this lane decodes groups set_group
    // + 2 half and the one after. Group numbers count from the row's first
    // group (32 bits: a walk never passes `cols` columns, each group moving
    // at least one).
    const int64_t row = tile * kTileRows + pair_row;
    int64_t begin = 0, end = 0;
    if (row < args.rows) row_range(args.row_indices, row, args.n_entries, begin, end);
    const int64_t g0 = begin / kGroupEntries;
    const int n_row_groups = static_cast<int>(std::min<int64_t>((end + kGroupEntries - 1) / kGroupEntries - g0, int64_t{kMaxCols}));
    const int begin_in = static_cast<int>(begin - g0 * kGroupEntries);  // 0..7
    const int end_in = static_cast<int>(std::min<int64_t>(end - g0 * kGroupEntries, int64_t{kMaxCols}));
    const scalar_t* row_values = args.values + g0 * kGroupEntries;
    const uint32_t* row_nibbles = nibble_words + g0;
    int set_group = meta_start[pair_row * kPanels + warp];
    unsigned prev = meta_prev[pair_row * kPanels + warp];
    // The panel's last group: where the next panel starts (a group can hold
    // entries of both), or the row's last.
    const int last_group = std::min(n_row_groups - 1, warp + 1 < kPanels ? meta_start[pair_row * kPanels + warp + 1]
                                                                          : n_row_groups - 1);
    bool row_live = panel_lo < panel_hi && set_group <= last_group;

    int slot = 0;  // the ring slot of the set being decoded
    const int lane_first = kGroupsPerLane * half;  // this lane's first group within a set
    auto fetch = [&](int ring_slot, int set) {
#pragma unroll
      for (int k = 0; k < kGroupsPerLane; ++k) {
        const int group = set + lane_first + k;
        if (group <= last_group) {
          copy16_async(ring_values + (ring_slot * kWarpSize * kGroupsPerLane + k) * 16,
                       row_values + group * kGroupEntries);
          copy_small_async<4>(ring_nibbles + (ring_slot * kWarpSize * kGroupsPerLane + k) * 4, row_nibbles + group);
        }
      }
      commit_async_copies();
    };
    uint4 words[kGroupsPerLane];
    uint32_t nibbles[kGroupsPerLane];
    unsigned masks[kGroupsPerLane];
#pragma unroll
    for (int k = 0; k < kGroupsPerLane; ++k) words[k] = make_uint4(0, 0, 0, 0), nibbles[k] = 0, masks[k] = 0;
    auto read = [&](int set) {
      wait_async_copies<kRingSets - 1>();
#pragma unroll
      for (int k = 0; k < kGroupsPerLane; ++k) {
        const int group = set + lane_first + k;
        masks[k] = group <= last_group ? group_row_mask<int>(group * static_cast<int>(kGroupEntries), begin_in, end_in) : 0u;
        words[k] = load_shared_v4(ring_values + (slot * kWarpSize * kGroupsPerLane + k) * 16);
        nibbles[k] = load_shared_u32(ring_nibbles + (slot * kWarpSize * kGroupsPerLane + k) * 4);
      }
    };
    if (row_live) {
#pragma unroll
      for (int s = 0; s < kRingSets; ++s) fetch(s, set_group + kSetGroups * s);
      read(set_group);
    }

    float acc[kNTiles][4];
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    scalar_t* tile_row = matrix_tile + pair_row * kPitch;

    for (unsigned lo = panel_lo; lo < panel_hi; lo += kBlockCols) {
      const unsigned width = min(lo + kBlockCols, panel_hi) - lo;
      // x's chunk i of these columns for this lane (zero past `batch` and
      // past the last column, which the tile's zero columns meet).
      auto x_chunk = [&](int i) {
        const int chunk = i * kWarpSize + lane;
        const int b = chunk / (kBlockCols / 8);
        const unsigned col = lo + (chunk % (kBlockCols / 8)) * 8;
        return b < args.batch && col < ucols ? __ldg(reinterpret_cast<const uint4*>(args.x + b * args.x_stride + col))
                                             : make_uint4(0, 0, 0, 0);
      };
      auto store_x = [&](int i, uint4 v) {
        const int chunk = i * kWarpSize + lane;
        reinterpret_cast<uint4*>(x_tile + (chunk / (kBlockCols / 8)) * kPitch)[chunk % (kBlockCols / 8)] = v;
      };
      constexpr int kHeld = Shape::kXAhead ? Shape::kXChunksPerLane : 1;
      uint4 x_chunks[kHeld];
      if constexpr (Shape::kXAhead) {
#pragma unroll
        for (int i = 0; i < kHeld; ++i) x_chunks[i] = x_chunk(i);
      }

      // The rows' entries of columns [lo, lo + width) into the tile. No
      // entry is tested for being in the row: those before a row's first
      // (in its first group) step by 0 from the column before the row,
      // ~0u, which lies outside every block; those past its last repeat the
      // last one's column, so a lane stores its entries last to first and
      // the row's own value lands over them. A group outside the row stores
      // nothing (its width is 0).
      bool active = row_live;
      while (__any_sync(kFullMask, active)) {
        GroupSteps steps[kGroupsPerLane];
        unsigned totals[kGroupsPerLane];
        unsigned lane_total = 0;
#pragma unroll
        for (int k = 0; k < kGroupsPerLane; ++k) {
          steps[k] = GroupSteps(nibbles[k], masks[k]);
          totals[k] = steps[k].odd_offsets() >> 24;
          lane_total += totals[k];
        }
        const unsigned other = __shfl_xor_sync(kFullMask, lane_total, 1);
        if (active) {
          unsigned base = prev + (half ? other : 0u) - lo;  // relative to the block
#pragma unroll
          for (int k = 0; k < kGroupsPerLane; ++k) {
            const scalar_t* entry = reinterpret_cast<const scalar_t*>(&words[k]);
            const unsigned group_width = masks[k] ? width : 0u;
            const uint32_t odd_end = steps[k].odd_offsets();
            const uint32_t even_end = odd_end - steps[k].odd;
#pragma unroll
            for (int j = kGroupEntries - 1; j >= 0; --j) {
              const uint32_t offsets = j % 2 ? odd_end : even_end;
              const unsigned c = base + __byte_perm(offsets, 0u, 0x4440u + j / 2);
              if (c < group_width) tile_row[c] = entry[j];
            }
            base += totals[k];
          }
          const unsigned set_end = prev + lane_total + other;  // the set's last column
          if (set_end < lo + width) {  // the set is done: on to the next
            prev = set_end;
            fetch(slot, set_group + kSetGroups * kRingSets);
            slot = slot + 1 == kRingSets ? 0 : slot + 1;
            set_group += kSetGroups;
            row_live = set_group <= last_group;
            if (row_live) read(set_group);
            active = row_live;
          } else {
            active = false;  // it goes on past these columns
          }
        }
      }

      // The tile times x's columns.
      __syncwarp();
      if constexpr (Shape::kXAhead) {
#pragma unroll
        for (int i = 0; i < kHeld; ++i) store_x(i, x_chunks[i]);
      } else {
#pragma unroll 4
        for (int i = 0; i < Shape::kXChunksPerLane; ++i) store_x(i, x_chunk(i));
      }
      __syncwarp();
#pragma unroll
      for (int k = 0; k < kBlockCols; k += 16) {
        uint32_t a[4];
        ldmatrix_x4(a, matrix_tile + (lane % 16) * kPitch + k + (lane / 16) * 8);
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          uint32_t b[2];
          ldmatrix_x2(b, x_tile + (n * 8 + lane % 8) * kPitch + k + ((lane / 8) % 2) * 8);
          multiply_impl::mma_16816<scalar_t>(acc[n], a, b[0], b[1]);
        }
      }
      __syncwarp();
#pragma unroll
      for (int i = 0; i < kTileRows * kBlockCols / 8 / kWarpSize; ++i) {
        const int chunk = i * kWarpSize + lane;
        reinterpret_cast<uint4*>(matrix_tile + (chunk / (kBlockCols / 8)) * kPitch)[chunk % (kBlockCols / 8)] =
            make_uint4(0, 0, 0, 0);
      }
      __syncwarp();
    }
    wait_async_copies<0>();  // copies past the panel's end land before the ring is reused

    // The panels' sums, added in shared memory in a fixed order.
    __syncthreads();
    float* partial = reinterpret_cast<float*>(shared);
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[((warp * kNTiles + n) * kWarpSize + lane) * 4 + i] = acc[n][i];
    }
    __syncthreads();
    // acc[n][i] of lane 4g + t is D[g + 8 (i / 2)][2t + i % 2] (row, right-
    // hand side within n-tile n).
    for (int o = threadIdx.x; o < kTileRows * Shape::kBatchPad; o += blockDim.x) {
      const int m = o % kTileRows;
      const int b = o / kTileRows;
      const int source_lane = (m % 8) * 4 + (b % 8) / 2;
      const int i = (m / 8) * 2 + b % 2;
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kPanels; ++w) sum += partial[((w * kNTiles + b / 8) * kWarpSize + source_lane) * 4 + i];
      const int64_t out_row = tile * kTileRows + m;
      if (b < args.batch && out_row < args.rows) args.y[b * args.rows + out_row] = static_cast<scalar_t>(sum);
    }
    __syncthreads();  // the sums are read before the next rows clear their tiles
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
  const int64_t panel_cols = (cols + kPanels - 1) / kPanels;
  args.panel_cols = static_cast<int>((panel_cols + kBlockCols - 1) / kBlockCols * kBlockCols);
  const int64_t blocks = std::min<int64_t>(args.n_tiles, static_cast<int64_t>(per_sm) * device_facts(device).sm_count);
  tile_multiply_kernel<scalar_t, index_t, kNTiles>
      <<<static_cast<unsigned>(blocks), kTileThreads, Shape::kSharedBytes, c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The widest batch one pass takes on `device`: 8 right-hand sides per
// n-tile, as many n-tiles (1, 2, 4 or 8) as the block's shared memory
// allows there (sm_86 and sm_89 hold one n-tile, sm_90 eight); 0 if none.
inline int max_batch(int device) {
  const int limit = device_facts(device).max_shared_per_block;
  if (TileShape<8>::kSharedBytes <= limit) return 64;
  if (TileShape<4>::kSharedBytes <= limit) return 32;
  if (TileShape<2>::kSharedBytes <= limit) return 16;
  if (TileShape<1>::kSharedBytes <= limit) return 8;
  return 0;
}

// y [batch, rows] = x [batch, cols] M^T for 1 <= batch <= max_batch(device),
// 16-bit values, x as the header says.
template <typename scalar_t>
void multiply_tiles_typed(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                          int64_t rows, int64_t cols, const at::Tensor& x, at::Tensor& y) {
  const int64_t batch = x.size(0);
  const int widest = max_batch(current_device());
  TORCH_CHECK(batch >= 1 && batch <= widest, "macko_spmv multiply (tiles): batch ", batch, " outside 1..", widest);
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
