// multiply_tiles.cuh: the tile kernel, y = M x for 8 to 64 right-hand sides
// of 16-bit values per pass: "load as sparse, compute as dense".
//
// Algorithm. A block takes kTileRows (16) consecutive rows at a time and
// has two kinds of warps. Each of its 16 producer warps walks one row's
// stream a warp step (256 entries, an aligned group per lane) at a time,
// decoding columns as every kernel here does (group_decode.cuh), and stores
// the entries into that row of a ring of dense tiles in shared memory: the
// ring holds kRingCols (2048) columns of the 16 rows as kSlots segments of
// kSegmentCols columns. Its two consumer warps take the segments in order
// as they fill: each multiplies its part of a segment's dense 16 x
// kSegmentCols tile by x's block of those columns on the tensor cores
// (ldmatrix, mma.m16n8k16), accumulating across the row's segments: with
// one n-tile of 8 right-hand sides each consumer takes half the segment's
// columns (their sums are added at the rows' end), with more each takes
// half the n-tiles. Then it writes its part of y. Segments hand over through shared-memory barriers, two
// per slot: `full` completes when all 16 producers have stored their
// entries of the slot's segment, `empty` when the consumers have read it.
// A producer takes a slot (waits for `empty`, clears its row of it) before
// storing into it and gives it (arrives on `full`) once its walk has passed
// the slot's last column; it holds at most kSlots segments at a time, so a
// step that spans more is stored in passes. Each consumer copies x's block
// of a segment into its own small ring with cp.async a few segments ahead.
// Nothing waits for the whole block: the rows' walks run up to a ring of
// columns apart, and the next 16 rows start as soon as a warp is done.
//
// Why. The streaming kernel gathers kBatch values of x per stored entry
// from shared memory (16 bytes at batch 8, with random bank conflicts) and
// its registers grow with the batch: past batch 2-4 it is bound by those
// gathers. Here x is read by ldmatrix in whole 16-byte rows, once per
// tile, and the cost per stored entry is its decode and one 2-byte store,
// whatever the batch. The first tile kernel walked the 16 rows in lockstep,
// a block barrier per segment, and spent its time waiting for the slowest
// of 16 walks (benchmarks/NOTES.md, v13g-v13l); one without the lockstep
// but with two lanes a row lost more to instructions than it saved (v14c).
// This one keeps a warp per row and removes only the lockstep.
//
// Layout. The ring is [16 rows][kRingCols + 8] scalars: column c of the
// tile's segment s (global segment g, counted across the block's tiles)
// sits at ring column (g % kSlots) * kSegmentCols + c % kSegmentCols; the
// 16 bytes of padding put ldmatrix's 8 row addresses in distinct banks. A
// consumer's x ring is [kXSlots][its 8 * n-tiles rows][kConsumerCols + 8].
// x must have unit column stride, 16-byte aligned rows, and cols a multiple
// of 8 (multiply.cu checks, and copies x otherwise).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "async_copy.cuh"
#include "group_decode.cuh"
#include "launch_policy.cuh"
#include "row_dot.cuh"

namespace macko {
namespace cuda {
namespace tiles_impl {

constexpr int kTileRows = 16;  // one producer warp a row, one mma tile high
constexpr int kMaxBatch = 64;  // right-hand sides per pass: 8 n-tiles
constexpr int kRingCols = 2048;

// Narrow segments (256 columns; 128 for 8 n-tiles) by n-tiles of 8
// right-hand sides. Batches up to 16 take 512 by default (wide_segments,
// NOTES v15b): at d = 0.5 a warp step spans ~512 columns, so a 512-column
// segment is one take and one give a step instead of two.
constexpr int narrow_segment_cols(int n_tiles) { return n_tiles == 8 ? 128 : 256; }

constexpr int exact_log2(int v) { return v <= 1 ? 0 : 1 + exact_log2(v / 2); }

// The shapes by n-tiles of 8 right-hand sides and segment width: two blocks
// of ~100 KB of shared memory and 17-18 warps on an SM.
template <int kNTiles, int kSegmentColsArg>
struct TileShape {
  static constexpr int kSegmentCols = kSegmentColsArg;
  static constexpr int kSegmentShift = exact_log2(kSegmentCols);
  static constexpr int kSlots = kRingCols / kSegmentCols;
  static constexpr int kRowPitch = kRingCols + 8;    // scalars
  // Two consumers: with one n-tile they split each segment's k-steps (and
  // add their sums at the rows' end), with more they split the n-tiles. One
  // consumer warp, its mma chain waiting on each ldmatrix, could not keep up
  // with 16 producers (v14e's first run: ~150 cycles an mma).
  static constexpr int kConsumers = 2;
  static constexpr int kKSplit = kNTiles == 1 ? 2 : 1;
  static constexpr int kConsumerNTiles = kNTiles * kKSplit / kConsumers;
  static constexpr int kConsumerCols = kSegmentCols / kKSplit;  // a consumer's columns of a segment
  static constexpr int kConsumerKSteps = kConsumerCols / 16;
  // k-steps whose fragments are loaded before their mma: the loads of a
  // group overlap, and the mma wait once for all of them.
  static constexpr int kPipeline = kConsumerNTiles <= 2 ? 4 : 2;
  // Independent accumulators per n-tile: with one n-tile, two, so that
  // consecutive mma do not wait for each other.
  static constexpr int kAccumulators = kConsumerNTiles == 1 ? 2 : 1;
  static constexpr int kXSlots = kNTiles <= 2 && kConsumerCols <= 256 ? 4 : 2;
  static constexpr int kXRows = kConsumerNTiles * 8;
  static constexpr int kXPitch = kConsumerCols + 8;
  static constexpr int kWarps = kTileRows + kConsumers;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kMatrixBytes = kTileRows * kRowPitch * 2;
  static constexpr int kXSlotBytes = kXRows * kXPitch * 2;
  static constexpr int kXBytes = kConsumers * kXSlots * kXSlotBytes;
  // The k-split consumers' partial sums: a float4 a lane.
  static constexpr int kSumBytes = kKSplit > 1 ? kWarpSize * 16 : 0;
  static constexpr int kSharedBytes = kMatrixBytes + kXBytes + kSumBytes + 2 * kSlots * 8;
  static_assert(kSegmentCols == 1 << kSegmentShift && kRingCols % kSegmentCols == 0, "power-of-two segments");
  static_assert((kSlots & (kSlots - 1)) == 0, "ring positions wrap with a mask");
  static_assert(kWarpSize % (kSegmentCols / 8) == 0 || kSegmentCols % (8 * kWarpSize) == 0, "whole clears");
  static_assert(kConsumerKSteps % kPipeline == 0, "whole pipeline groups");
  static_assert(kXSlots >= 2 && (kXSlots & (kXSlots - 1)) == 0 && (kXRows * kConsumerCols / 8) % kWarpSize == 0,
                "x's copies: whole passes, slots by mask");
};

// Experiment variants (MACKO_TILE_VARIANT, read at each launch; NOTES
// v15i): all but kProduct cut one role's work, to see which role's pace
// sets the kernel's time; their output is not the product.
enum TileVariant : int {
  kProduct = 0,
  kNoMma = 1,     // consumers only wait for each slot and give it back (no x copies, ldmatrix or mma)
  kNoStores = 2,  // producers take and give slots but store no entry
  kWalk = 3,      // producers only walk their rows (loads, decode, scan); no hand-over, no consumers
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
  int pass_segments;  // segments a pass of a step longer than the ring stores, 1..kSlots
  bool lane_x_copies;  // the consumers' x copies from lane-constant addresses where a segment allows (NOTES v15e)
  int variant;         // a TileVariant
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(address)
               : "memory");
}

__device__ __forceinline__ void store_shared_u16(uint32_t address, uint32_t value) {
  asm volatile("st.shared.u16 [%0], %1;" ::"r"(address), "h"(static_cast<unsigned short>(value)) : "memory");
}

// The same at address + 2 * index, the address computed in the asm: left to
// the compiler, `lane_row + 2 * offset` became (position + offset) * 2 +
// ring_row, two instructions an entry instead of one.
__device__ __forceinline__ void store_shared_u16_at(uint32_t address, uint32_t index, uint32_t value) {
  asm volatile("{\n\t.reg .u32 a;\n\tmad.lo.u32 a, %1, 2, %0;\n\tst.shared.u16 [a], %2;\n\t}" ::"r"(address),
               "r"(index), "h"(static_cast<unsigned short>(value))
               : "memory");
}

__device__ __forceinline__ void store_shared_zero16(uint32_t address) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(address), "r"(0) : "memory");
}

// Warp roles: warps [0, kTileRows) produce (one row each), the rest consume.
template <typename scalar_t, typename index_t, int kNTiles, int kSegmentCols>
__global__ void __launch_bounds__(TileShape<kNTiles, kSegmentCols>::kThreads, 2)
    tile_multiply_kernel(const TileArgs<scalar_t, index_t> args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Shape = TileShape<kNTiles, kSegmentCols>;
  constexpr int kSlots = Shape::kSlots;
  extern __shared__ uint4 shared_words[];
  const uint32_t shared = static_cast<uint32_t>(__cvta_generic_to_shared(shared_words));
  const uint32_t ring = shared;
  const uint32_t x_rings = shared + Shape::kMatrixBytes;
  const uint32_t sums = x_rings + Shape::kXBytes;
  const uint32_t full_barriers = sums + Shape::kSumBytes;  // kSlots words, then kSlots `empty` words
  const uint32_t empty_barriers = full_barriers + kSlots * 8;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int segments = (args.cols + kSegmentCols - 1) / kSegmentCols;

  // x's rings start zero: rows past `batch` are never copied (their
  // products land in columns of y that are not written).
  for (int i = threadIdx.x; i < Shape::kXBytes / 16; i += blockDim.x) store_shared_zero16(x_rings + 16 * i);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kSlots; ++s) {
      // Every lane arrives: each releases its own stores (or reads).
      barrier_init(full_barriers + 8 * s, kTileRows * kWarpSize);
      barrier_init(empty_barriers + 8 * s, Shape::kConsumers * kWarpSize);
    }
  }
  __syncthreads();  // the last block-wide barrier: from here warps run apart

  if (warp < kTileRows) {
    // ---- Producer: one row of each of the block's tiles.
    const uint32_t* nibble_words = reinterpret_cast<const uint32_t*>(args.deltas);
    const uint32_t ring_row = ring + warp * Shape::kRowPitch * 2;
    const unsigned ucols = static_cast<unsigned>(args.cols);
    const bool hand_over = args.variant != kWalk;  // warp-uniform, as is `stores`
    const bool stores = hand_over && args.variant != kNoStores;
    unsigned tile_segment0 = 0;  // global number of the tile's first segment (wraps harmlessly)
    for (int64_t tile = blockIdx.x; tile < args.n_tiles; tile += gridDim.x, tile_segment0 += segments) {
      // Ring columns are tile columns + offset (mod kRingCols): the tile's
      // segment s lands in slot (tile_segment0 + s) % kSlots.
      const unsigned offset = (tile_segment0 & (kSlots - 1)) * kSegmentCols;
      int held_from = 0, held_to = 0;  // segments [held_from, held_to) taken, not yet given
      // Takes segment held_to: waits until the consumers have read the
      // slot's previous segment, then clears this row of it.
      auto take = [&]() __attribute__((always_inline)) {
        const unsigned g = tile_segment0 + held_to;
        const unsigned slot = g & (kSlots - 1);
        if (hand_over) {
          barrier_wait(empty_barriers + 8 * slot, ((g / kSlots) & 1u) ^ 1u);
          const uint32_t slot_row = ring_row + slot * kSegmentCols * 2;
#pragma unroll
          for (int i = lane; i < kSegmentCols / 8; i += kWarpSize) store_shared_zero16(slot_row + 16 * i);
        }
        ++held_to;
      };
      // Gives segments [held_from, to): every entry of this row in them is stored.
      auto give = [&](int to) __attribute__((always_inline)) {
#pragma unroll 1
        for (; held_from < to; ++held_from) {
          if (hand_over) barrier_arrive(full_barriers + 8 * ((tile_segment0 + held_from) & (kSlots - 1)));
        }
      };

      const int64_t row = tile * kTileRows + warp;
      int64_t begin = 0, end = 0;
      if (row < args.rows) row_range(args.row_indices, row, args.n_entries, begin, end);
      // Positions relative to the row's first group. A walk stops within
      // `cols` entries (each moves the column on), so capping the row's
      // length there changes nothing but keeps the positions in 32 bits.
      const int64_t first_group = begin & ~(kGroupEntries - 1);
      const int row_begin = static_cast<int>(begin - first_group);
      const int row_end = static_cast<int>(std::min<int64_t>(end - first_group, int64_t{args.cols} + 1024));
      const scalar_t* row_values = args.values + first_group;
      const uint32_t* row_nibbles = nibble_words + first_group / kGroupEntries;

      // The row's walk: three slots of a warp step's loads, used in turn.
      // The slot `current` holds the step whose entries are being stored
      // (decoded into `columns`), the other two the next two steps' loads;
      // a consumed slot is refilled with the step after those, so each
      // load has two steps to arrive. The slots never move (NOTES v13l).
      int step = 0;
      const int lane_first = lane * static_cast<int>(kGroupEntries);
      StepGroup<scalar_t, int> slot0, slot1, slot2;
      slot0.load(row_values, row_nibbles, lane_first, row_begin, row_end);
      slot1.load(row_values, row_nibbles, kWarpStepEntries + lane_first, row_begin, row_end);
      slot2.load(row_values, row_nibbles, 2 * kWarpStepEntries + lane_first, row_begin, row_end);
      int current = 0;  // warp-uniform
      unsigned prev_col = offset - 1u;  // ring space: tile column + offset
      GroupColumns columns{};
      bool walking = row_begin < row_end;  // warp-uniform
      if (walking) columns = slot0.decode_columns(prev_col);

      // Stores the step in `cur`, taking and giving segments as it goes;
      // then refills `cur` with the step two after the next and decodes
      // `next`, the new current step. False when the row's walk is over.
      auto store_and_advance = [&](StepGroup<scalar_t, int>& cur, const StepGroup<scalar_t, int>& next)
                                   __attribute__((always_inline)) {
        const unsigned last = prev_col - offset;  // the step's last column (>= cols only if corrupted)
        const uint32_t* entry = reinterpret_cast<const uint32_t*>(cur.group.words);
        auto bits = [&](int j) { return entry[j / 2] >> (16 * (j % 2)); };
        const int needed = static_cast<int>(min(last >> Shape::kSegmentShift, static_cast<unsigned>(segments - 1))) + 1;
        // Warp-uniform. Most steps lie inside the row, end before the last
        // column and span at most the ring: then every entry belongs in a
        // segment this pass holds, and is stored with no test (three or
        // four instructions; the general path below takes nine).
        const bool whole = (step >= row_begin && step + kWarpStepEntries <= row_end) && last < ucols &&
                           needed <= held_from + kSlots;
        if (whole) {
#pragma unroll 1
          while (held_to < needed) take();
          __syncwarp();  // the row's slots are clear before any lane stores into them
          const unsigned position = columns.base & (kRingCols - 1);
          if (stores) {
            if (position + columns.total() < kRingCols) {  // the lane's entries do not wrap around the ring
              const uint32_t lane_row = ring_row + 2 * position;
#pragma unroll
              for (int j = 0; j < kGroupEntries; ++j) store_shared_u16_at(lane_row, columns.offset(j), bits(j));
            } else {
#pragma unroll
              for (int j = 0; j < kGroupEntries; ++j) {
                store_shared_u16(ring_row + ((columns.column(j) & (kRingCols - 1)) << 1), bits(j));
              }
            }
          }
        } else {
          // A step that spans more than the ring is stored in passes of
          // args.pass_segments segments (the whole ring by default; half-ring
          // passes, so that the consumers read one half while the rows fill
          // the other, measured slower: NOTES v15c).
          const int pass = needed <= held_from + kSlots ? kSlots : args.pass_segments;
          while (true) {
            const int to = min(needed, held_from + pass);
#pragma unroll 1
            while (held_to < to) take();
            __syncwarp();  // the row's slots are clear before any lane stores into them
            // This pass stores the entries of the row in segments [held_from, to).
            const unsigned lo = static_cast<unsigned>(held_from) * kSegmentCols + offset;
            const unsigned span = static_cast<unsigned>(to - held_from) * kSegmentCols;
#pragma unroll
            for (int j = 0; j < kGroupEntries; ++j) {
              const unsigned col = columns.column(j);
              if (stores && ((cur.mask >> j) & 1u) && col - lo < span) {
                store_shared_u16(ring_row + ((col & (kRingCols - 1)) << 1), bits(j));
              }
            }
            if (to == needed) break;
            give(to);
          }
        }
        // Segments before the step's last column + 1 are whole.
        give(static_cast<int>(min((last + 1u) >> Shape::kSegmentShift, static_cast<unsigned>(segments))));
        step += kWarpStepEntries;
        walking = step < row_end && last + 1u < ucols;  // a corrupted stream stops at the last column
        if (!walking) return false;
        const int refill = step + 2 * kWarpStepEntries;  // > row_begin
        if (refill + kWarpStepEntries <= row_end) {  // warp-uniform
          cur.load_inside(row_values, row_nibbles, refill + lane_first);
        } else {
          cur.load(row_values, row_nibbles, refill + lane_first, row_begin, row_end);
        }
        columns = next.decode_columns(prev_col);
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
      // The rest of the row's segments hold no entries: each is given as
      // soon as it is cleared.
      give(held_to);
      while (held_to < segments) {
        take();
        give(held_to);
      }
    }
  } else {
    // ---- Consumer: its n-tiles (k-slice) of every tile.
    if (args.variant == kWalk) return;
    const bool math = args.variant != kNoMma;  // warp-uniform
    const int consumer = warp - kTileRows;
    const int k_part = consumer % Shape::kKSplit;  // its columns of a segment: k_part * kConsumerCols + [0, kConsumerCols)
    const int x_row0 = consumer / Shape::kKSplit * Shape::kXRows;  // its first right-hand side
    const uint32_t x_ring = x_rings + consumer * Shape::kXSlots * Shape::kXSlotBytes;
    const int64_t my_tiles = args.n_tiles > blockIdx.x ? (args.n_tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    const int64_t my_segments = my_tiles * segments;
    // x's block of the block's segment number h (x is the same for every
    // tile): copied into x slot h % kXSlots, one commit group per segment
    // (empty past the last), so that a wait with a constant finds it.
    int64_t x_issued = 0;
    int x_segment = 0;  // x_issued % segments
    // The slot's 16-byte chunks (8 columns each), row by row, go to the
    // lanes in turn: chunk i is column chunk i % kXRowChunks of row
    // i / kXRowChunks. A lane's copy k is chunk lane + 32k, whose row and
    // column are the lane's first (lane_row, lane_col) plus offsets known at
    // compile time (both counts are powers of two), so that a copy costs a
    // row step and the copy itself instead of ~14 instructions (NOTES v15e).
    constexpr int kXRowChunks = Shape::kConsumerCols / 8;
    constexpr int kXCopies = Shape::kXRows * kXRowChunks / kWarpSize;
    static_assert(kWarpSize % kXRowChunks == 0 || kXRowChunks % kWarpSize == 0, "lane-constant chunk columns");
    constexpr auto copy_row = [](int k) { return kWarpSize * k / kXRowChunks; };
    constexpr auto copy_col = [](int k) { return kWarpSize * k % kXRowChunks * 8; };
    const int lane_row = lane / kXRowChunks;
    const int lane_col = lane % kXRowChunks * 8 + k_part * Shape::kConsumerCols;  // within a segment
    const scalar_t* x_lane = args.x + (x_row0 + lane_row) * args.x_stride + lane_col;
    const uint32_t x_lane_slot = (lane_row * Shape::kXPitch + lane % kXRowChunks * 8) * 2;
    // Warp-uniform: some row of this consumer's x slot is a right-hand side;
    // the last that is, counted from its first.
    const bool x_some_rows = x_row0 < args.batch;
    const int x_last_row = args.batch - 1 - x_row0;
    auto issue_x = [&]() __attribute__((always_inline)) {
      __syncwarp();  // the warp's reads of the slot (ldmatrix, any lane's rows) before these lanes' writes
      if (x_issued < my_segments) {
        const uint32_t slot = x_ring + (static_cast<uint32_t>(x_issued) & (Shape::kXSlots - 1)) * Shape::kXSlotBytes +
                              x_lane_slot;
        const int segment_col = x_segment * kSegmentCols;
        const scalar_t* src = x_lane + segment_col;
        // Warp-uniform. Not in the kernel for batches 33-64 (16 copies a lane
        // beside 4 n-tiles of sums): it spills with this path.
        if (kNTiles < 8 && args.lane_x_copies && x_some_rows &&
            segment_col + (k_part + 1) * Shape::kConsumerCols <= args.cols) {
          // The source moves on by whole rows between copies (a 64-bit add)
          // rather than from `src` at each: with copy k's offset from `src`
          // the compiler kept one register pair per copy live across the
          // segment loop, and spilled. In a partial batch the rows past it
          // are skipped (one compare a copy; they stay zero) and `src` is
          // not read there (NOTES v15h: the general loop made batches 12
          // and 24 slower than 16 and 32).
#pragma unroll
          for (int k = 0; k < kXCopies; ++k) {
            if (lane_row + copy_row(k) <= x_last_row) {
              copy16_async(slot + (copy_row(k) * Shape::kXPitch + copy_col(k)) * 2, src + copy_col(k));
            }
            if (k + 1 < kXCopies) src += (copy_row(k + 1) - copy_row(k)) * args.x_stride;
          }
        } else {  // rows past the batch stay zero; columns past the last are zeroed, not left stale
#pragma unroll 4
          for (int k = 0; k < kXCopies; ++k) {
            const uint32_t dst = slot + (copy_row(k) * Shape::kXPitch + copy_col(k)) * 2;
            if (x_row0 + lane_row + copy_row(k) < args.batch) {
              if (segment_col + lane_col + copy_col(k) < args.cols) {
                copy16_async(dst, src + copy_row(k) * args.x_stride + copy_col(k));
              } else {
                store_shared_zero16(dst);
              }
            }
          }
        }
        if (++x_segment == segments) x_segment = 0;
      }
      commit_async_copies();
      ++x_issued;
    };
#pragma unroll
    for (int i = 0; i < Shape::kXSlots - 1; ++i) {
      if (math) issue_x();
    }

    // ldmatrix addresses: A (the tile, 16 x 16 at a k-step) rows lane % 16,
    // column halves lane / 16; B (x's 8 x 16 at a k-step, one n-tile) rows
    // lane % 8, column halves (lane / 8) % 2.
    const uint32_t a_lane =
        ring + ((lane % 16) * Shape::kRowPitch + k_part * Shape::kConsumerCols + (lane / 16) * 8) * 2;
    const uint32_t b_lane = ((lane % 8) * Shape::kXPitch + ((lane / 8) % 2) * 8) * 2;
    unsigned g = 0;  // global segment number (wraps harmlessly); x's ring slot is g % kXSlots too
    for (int64_t tile = blockIdx.x; tile < args.n_tiles; tile += gridDim.x) {
      float acc[Shape::kConsumerNTiles][Shape::kAccumulators][4] = {};
      for (int s = 0; s < segments; ++s, ++g) {
        if (math) {
          issue_x();  // into the slot read for segment g - 1
          wait_async_copies<Shape::kXSlots - 1>();
          __syncwarp();  // each lane's copies of x become visible to the warp
        }
        const unsigned slot = g & (kSlots - 1);
        barrier_wait(full_barriers + 8 * slot, (g / kSlots) & 1u);
        const uint32_t a_slot = a_lane + slot * kSegmentCols * 2;
        const uint32_t x_slot = x_ring + (g & (Shape::kXSlots - 1)) * Shape::kXSlotBytes + b_lane;
#pragma unroll 1
        for (int k0 = 0; math && k0 < Shape::kConsumerKSteps; k0 += Shape::kPipeline) {
          uint32_t a[Shape::kPipeline][4], b[Shape::kPipeline][Shape::kConsumerNTiles][2];
#pragma unroll
          for (int p = 0; p < Shape::kPipeline; ++p) {
            ldmatrix_x4(a[p], a_slot + (k0 + p) * 32);
#pragma unroll
            for (int t = 0; t < Shape::kConsumerNTiles; ++t) {
              ldmatrix_x2(b[p][t], x_slot + (t * 8 * Shape::kXPitch + (k0 + p) * 16) * 2);
            }
          }
#pragma unroll
          for (int p = 0; p < Shape::kPipeline; ++p) {
#pragma unroll
            for (int t = 0; t < Shape::kConsumerNTiles; ++t) {
              multiply_impl::mma_16816<scalar_t>(acc[t][p % Shape::kAccumulators], a[p], b[p][t][0], b[p][t][1]);
            }
          }
        }
        barrier_arrive(empty_barriers + 8 * slot);  // this lane's reads of the slot are done
      }
      float total[Shape::kConsumerNTiles][4];
#pragma unroll
      for (int t = 0; t < Shape::kConsumerNTiles; ++t) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          total[t][i] = 0.0f;
#pragma unroll
          for (int u = 0; u < Shape::kAccumulators; ++u) total[t][i] += acc[t][u][i];
        }
      }
      if constexpr (Shape::kKSplit > 1) {
        // The second k-slice's sums to the first through shared memory; the
        // two consumer warps meet at a named barrier (1: __syncthreads uses 0).
        static_assert(Shape::kKSplit == 2 && Shape::kConsumerNTiles == 1, "two k-slices of one n-tile");
        const uint32_t mine = sums + lane * 16;
        if (k_part == 1) {
          asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(mine), "f"(total[0][0]), "f"(total[0][1]),
                       "f"(total[0][2]), "f"(total[0][3])
                       : "memory");
        }
        asm volatile("bar.sync 1, %0;" ::"n"(2 * kWarpSize) : "memory");
        if (k_part == 0) {
          float other[4];
          asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
                       : "=f"(other[0]), "=f"(other[1]), "=f"(other[2]), "=f"(other[3])
                       : "r"(mine)
                       : "memory");
#pragma unroll
          for (int i = 0; i < 4; ++i) total[0][i] += other[i];
        }
        asm volatile("bar.sync 1, %0;" ::"n"(2 * kWarpSize) : "memory");  // read before the next tile's sums
      }
      // total[t][i] of lane 4q + r is D[q + 8 (i / 2)][2r + i % 2] (row,
      // right-hand side within n-tile t).
      if (k_part == 0) {
#pragma unroll
        for (int t = 0; t < Shape::kConsumerNTiles; ++t) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int n = x_row0 + t * 8 + 2 * (lane % 4) + i % 2;
            const int64_t out_row = tile * kTileRows + lane / 4 + 8 * (i / 2);
            if (n < args.batch && out_row < args.rows) {
              args.y[n * args.rows + out_row] = static_cast<scalar_t>(total[t][i]);
            }
          }
        }
      }
    }
    wait_async_copies<0>();  // no copy may still be writing when the warp exits
  }
#endif
}

// The tile kernel's experiment switches: environment variables read once
// per process, -1 where unset.
inline int tile_setting(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? -1 : std::atoi(value);
}

// MACKO_TILE_PASS_SEGMENTS=<n>: the passes of a step longer than the ring
// store n segments (NOTES v15c; default the whole ring: half-ring passes
// measured no faster).
inline int pass_segments(int default_segments) {
  static const int setting = tile_setting("MACKO_TILE_PASS_SEGMENTS");
  return setting > 0 ? setting : default_segments;
}

// MACKO_TILE_LANE_X_COPIES=0: the consumers' x copies by the general loop
// only (NOTES v15e).
inline bool lane_x_copies() {
  static const bool on = tile_setting("MACKO_TILE_LANE_X_COPIES") != 0;
  return on;
}

// MACKO_TILE_VARIANT=no-mma|no-stores|walk (read at each launch, so that one
// process can time them in turn): an experiment's TileVariant.
inline int tile_variant() {
  const char* name = std::getenv("MACKO_TILE_VARIANT");
  if (name == nullptr || !*name || !std::strcmp(name, "product")) return kProduct;
  if (!std::strcmp(name, "no-mma")) return kNoMma;
  if (!std::strcmp(name, "no-stores")) return kNoStores;
  if (!std::strcmp(name, "walk")) return kWalk;
  TORCH_CHECK(false, "MACKO_TILE_VARIANT=", name, ": expected product, no-mma, no-stores or walk");
}

// 512-column segments for batches up to 16 (NOTES v15b: 4-12% faster than
// 256 at batches 8 and 16); MACKO_TILE_SEGMENT_COLS=256 (an experiment
// switch) keeps the narrow ones.
inline bool wide_segments() {
  static const bool wide = tile_setting("MACKO_TILE_SEGMENT_COLS") != 256;
  return wide;
}

template <typename scalar_t, typename index_t, int kNTiles, int kSegmentCols = narrow_segment_cols(kNTiles)>
void launch_tiles(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices, int64_t rows,
                  int64_t cols, const at::Tensor& x, at::Tensor& y) {
  using Shape = TileShape<kNTiles, kSegmentCols>;
  const int device = current_device();
  const void* kernel = reinterpret_cast<const void*>(tile_multiply_kernel<scalar_t, index_t, kNTiles, kSegmentCols>);
  const int per_sm = std::max(1, resident_blocks(kernel, device, Shape::kThreads, Shape::kSharedBytes));
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
  args.pass_segments = std::clamp(pass_segments(Shape::kSlots), 1, Shape::kSlots);
  args.lane_x_copies = lane_x_copies();
  args.variant = tile_variant();
  const int64_t blocks = std::min<int64_t>(args.n_tiles, static_cast<int64_t>(per_sm) * device_facts(device).sm_count);
  tile_multiply_kernel<scalar_t, index_t, kNTiles, kSegmentCols>
      <<<static_cast<unsigned>(blocks), Shape::kThreads, Shape::kSharedBytes, c10::cuda::getCurrentCUDAStream()>>>(args);
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
    const bool wide = wide_segments();
    if (batch <= 8) {
      if (wide) {
        launch_tiles<scalar_t, index_t, 1, 512>(values, deltas, row_indices, rows, cols, x, y);
      } else {
        launch_tiles<scalar_t, index_t, 1>(values, deltas, row_indices, rows, cols, x, y);
      }
    } else if (batch <= 16) {
      if (wide) {
        launch_tiles<scalar_t, index_t, 2, 512>(values, deltas, row_indices, rows, cols, x, y);
      } else {
        launch_tiles<scalar_t, index_t, 2>(values, deltas, row_indices, rows, cols, x, y);
      }
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
