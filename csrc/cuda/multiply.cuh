// multiply.cuh: the streaming kernel, y = M x for a MACKO matrix M and up
// to 8 right-hand sides per pass over the matrix; multiply.cu picks it,
// the tile kernel or the dense route (decompress + cuBLAS) per call. The kernels are
// instantiated per value dtype in multiply_<dtype>.cu. Pieces: the ring of
// chunks (warp_ring.cuh), the group decoding and warp scans
// (group_decode.cuh), the arithmetic (row_dot.cuh), launch facts
// (launch_policy.cuh).
//
// Algorithm. The rows are split evenly, in contiguous ranges, over every
// warp the GPU holds at once (one wave), so the entries a warp reads are one
// contiguous window of the stream. The warp copies that window into a ring
// of chunks in shared memory (256 entries a chunk, filled with cp.async: the
// bytes bypass registers and L1) and walks its rows in order through the
// ring. A row is walked in stages of kStageSteps x 256 entries, one aligned
// 8-entry group per lane and step (group_decode.cuh), starting at the group
// that holds the row's first entry. Columns are a prefix sum of the gaps:
// byte arithmetic within a lane's group, one warp scan per stage across
// lanes. Each lane multiplies its entries by the gathered vector elements;
// with 16-bit values the tensor cores do it (RowDot: the products of a
// lane's entries land on the diagonal of an mma's result, one right-hand
// side or two per mma), with fp32 values FMAs. A butterfly reduction gives
// the row's sums when the row ends.
//
// Data layout. values and deltas are the format's arrays. The ring holds a
// chunk's values (256 x the value size) and its nibbles (128 bytes) at the
// same ordinal, so a group is one 16-byte shared load of values (two for
// fp32) and one 4-byte load of nibbles. With one right-hand side x is read
// as it is; with B > 1 the batch is transposed to x_t[cols][kBatch]
// (zero-padded to a power of two), so one gathered column is a single
// contiguous load of all its right-hand sides, and the matrix is read once
// for the whole batch. Each block first copies x into shared memory when it
// fits beside the rings, transposing a batch as it goes (no separate
// transposition kernel); otherwise x_t is made once and gathered from
// global memory.
//
// 8-bit values (int8, float8_e4m3fn; a quantized matrix, whose row r
// stands for its values times scales[r]): the ring holds 1-byte values, a
// chunk's 256 bytes copied by 16 lanes, a group's one 8-byte shared load.
// Before the mma each group is dequantized into the activation type,
// q * scale rounded once (group_decode.cuh), exactly what decompress and
// the other routes multiply. The rows' scales come 31 rows at a time, like
// the row pointers.
//
// Row edges. A row's first group may start with up to 7 entries of the
// previous row: their nibbles are cleared (each then steps the column by
// one) and the walk starts at column -1 - (their count), so the row's own
// entries get their true columns; their values, and those of the entries
// past the row's end in its last stage, are zeroed. Interior stages skip
// all of this.
//
// Why it is fast. SpMV at these densities moves ~2.5 bytes per stored entry
// and does 2 flops on it: it is bound by memory bandwidth, provided the
// rest stays hidden. (1) Latency: each warp keeps its next chunks in flight
// without spending registers on them, across row boundaries; the stream is
// read exactly once, in order. The lookahead is deliberately short
// (kLookaheadChunks): all warps' requests share one queue, and a deep one
// only delays every warp's next chunk (at start-up a lookahead of 5 chunks
// kept every warp idle for 8-10 us). (2) The gather of x comes from shared
// memory. (3) Instructions: a warp spends ~300 instructions on a 512-entry
// stage, most of them on the integer pipe (16 lanes a scheduler, so two
// issue cycles each); with 32 warps an SM then streams about as fast as
// DRAM delivers, which is where the kernel stands on the large shapes.
// Measured results, the experiments behind these choices, and what still
// limits the kernel: benchmarks/NOTES.md.
#pragma once

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>

#include "group_decode.cuh"
#include "launch_policy.cuh"
#include "row_dot.cuh"
#include "warp_ring.cuh"

namespace macko {
namespace cuda {
namespace multiply_impl {

// The widest batch one kernel pass takes; larger batches go in chunks of it
// (route "stream", multiply.cu), one pass over the matrix each. Wider
// kernels spill registers or lose the vector's shared-memory copy.
constexpr int kMaxBatch = 8;
// Threads per block: from 4 warps (GPUs with 64 KB of shared memory per
// block) to 32 (one block of 1024 per SM on Hopper); batch kernels, and those
// that gather x from global memory, need more registers and take at most 16.
template <int kBatch, bool kSharedX>
constexpr int kMaxThreads = kBatch <= 2 && kSharedX ? 1024 : 512;
constexpr int kMinWarpsPerBlock = 4;
// A warp's window is addressed with 32-bit offsets: its length (at most
// its rows * cols entries) stays below this.
constexpr int64_t kMaxWindowEntries = (int64_t{1} << 31) - (int64_t{1} << 16);

// One pass of the kernel: y = M x for up to kMaxBatch right-hand sides.
struct MultiplyProblem {
  at::Tensor values, deltas, row_indices;  // the matrix (values and deltas 16-byte aligned)
  int64_t rows, cols;
  at::Tensor x;  // [batch, cols], unit column stride, any row stride
  at::Tensor y;  // [batch, rows], rows contiguous with row stride `rows`
  int width;     // the kernel's batch width: 1, 2, 4 or 8, at least batch
  at::Tensor scales;  // 8-bit values only: [rows], the rows' scales in x's dtype (undefined otherwise)
};

// scalar_t: the dtype of x and y; value_t: the stored values' type, the
// same or, for a quantized matrix, int8_t or c10::Float8_e4m3fn, whose row
// r stands for its values times scales[r].
template <typename scalar_t, typename value_t, typename index_t>
struct MultiplyArgs {
  const value_t* values;
  const uint8_t* deltas;
  const index_t* row_indices;
  int64_t n_entries;  // values.numel(): every row range is clamped to it
  int64_t rows;
  int cols;
  const scalar_t* x;    // staged into shared memory: [cols] (16-byte aligned), or [batch][cols] with row stride x_stride
  int64_t x_stride;
  const scalar_t* x_t;  // gathered from global memory: [cols] or [cols][kBatch]
  int batch;            // right-hand sides that are real (the rest are padding)
  scalar_t* y;          // [batch][rows]
  const scalar_t* scales;  // [rows] for 8-bit values, else nullptr
  int64_t warps;        // warp w takes rows [w * rows / warps, (w + 1) * rows / warps)
  int x_shared_bytes;  // bytes of shared memory before the rings (x_t, 16-byte aligned)
};

// Copies x_t ([cols * kBatch] scalars, 16-byte aligned) into shared memory:
// whole 16-byte words, then the scalars of a last partial word.
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void stage_x(const scalar_t* x_t, int cols, uint4* shared_x_words) {
  const int64_t scalars = static_cast<int64_t>(cols) * kBatch;
  constexpr int kPerWord = 16 / sizeof(scalar_t);
  const int64_t words = scalars / kPerWord;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
    shared_x_words[w] = __ldg(reinterpret_cast<const uint4*>(x_t) + w);
  }
  scalar_t* shared_x = reinterpret_cast<scalar_t*>(shared_x_words);
  for (int64_t i = words * kPerWord + threadIdx.x; i < scalars; i += blockDim.x) shared_x[i] = x_t[i];
}

// Copies a batch x [batch][cols] (row stride x_stride, unit column stride)
// into shared memory transposed, as x_t[cols][kBatch] with zeros for the
// right-hand sides past `batch`: each thread packs one column's kBatch
// scalars into whole words and stores them at once (consecutive threads,
// consecutive words: no bank conflicts), reading x coalesced along cols.
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void stage_x_transposed(const scalar_t* x, int64_t x_stride, int batch, int cols,
                                                   uint4* shared_x_words) {
  constexpr int kWords = kBatch * static_cast<int>(sizeof(scalar_t)) / 4;  // 32-bit words per column
  static_assert(kWords == 1 || kWords == 2 || kWords % 4 == 0, "a column of x_t is 4, 8 or 16k bytes");
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    uint32_t packed[kWords];
    if constexpr (sizeof(scalar_t) == 2) {
      const unsigned short* bits = reinterpret_cast<const unsigned short*>(x);
#pragma unroll
      for (int p = 0; p < kWords; ++p) {
        const uint32_t lo = 2 * p < batch ? bits[(2 * p) * x_stride + c] : 0u;
        const uint32_t hi = 2 * p + 1 < batch ? bits[(2 * p + 1) * x_stride + c] : 0u;
        packed[p] = lo | hi << 16;
      }
    } else {
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(x);
#pragma unroll
      for (int b = 0; b < kWords; ++b) packed[b] = b < batch ? bits[b * x_stride + c] : 0u;
    }
    if constexpr (kWords == 1) {
      reinterpret_cast<uint32_t*>(shared_x_words)[c] = packed[0];
    } else if constexpr (kWords == 2) {
      reinterpret_cast<uint2*>(shared_x_words)[c] = make_uint2(packed[0], packed[1]);
    } else {
#pragma unroll
      for (int w = 0; w < kWords / 4; ++w) {
        shared_x_words[c * (kWords / 4) + w] =
            make_uint4(packed[4 * w], packed[4 * w + 1], packed[4 * w + 2], packed[4 * w + 3]);
      }
    }
  }
}

// What a kernel computes: the product, or (experiments only, one vector of
// fp16 x, MACKO_STREAM_VARIANT=ring|decode|sums; y then holds no product of
// the library's) the same walk cut short after a stage's ring loads, or
// after its decode and warp scan, or (8-bit values) with each group
// converted exactly and the row's fp32 sum times its scale instead of each
// entry rounded to q * scale: to time what each part of a stage costs
// (benchmarks/experiments/stream_ablation.py).
enum StreamVariant : int { kStreamProduct = 0, kStreamRingOnly = 1, kStreamDecodeOnly = 2, kStreamScaledSums = 3 };

inline StreamVariant stream_variant() {
  const char* setting = std::getenv("MACKO_STREAM_VARIANT");
  if (setting == nullptr) return kStreamProduct;
  const std::string name(setting);
  const StreamVariant variant = name == "ring"     ? kStreamRingOnly
                                : name == "decode" ? kStreamDecodeOnly
                                : name == "sums"   ? kStreamScaledSums
                                                   : kStreamProduct;
  if (variant != kStreamProduct) {
    TORCH_WARN_ONCE("MACKO_STREAM_VARIANT=", name, ": one-vector multiply with fp16 x returns no product of the ",
                    "library's (an experiment switch); unset it for results");
  }
  return variant;
}

template <typename scalar_t, typename value_t, typename index_t, int kBatch, bool kSharedX,
          int kVariant = kStreamProduct>
__global__ void __launch_bounds__(kMaxThreads<kBatch, kSharedX>, 1)
    multiply_kernel(const MultiplyArgs<scalar_t, value_t, index_t> args) {
  static_assert(kVariant == kStreamProduct || kBatch == 1, "the experiment variants take one vector");
  constexpr bool kScaled = !std::is_same_v<value_t, scalar_t>;  // 8-bit values
  extern __shared__ uint4 shared_words[];
  constexpr int kSteps = kStageSteps<value_t>;
  constexpr int kStageEntries = kSteps * kWarpStepEntries;
  constexpr int kGroup = static_cast<int>(kGroupEntries);
  using Ring = WarpRing<value_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + warp;
  const int64_t first_row = warp_id < args.warps ? warp_id * args.rows / args.warps : args.rows;
  const int64_t end_row = warp_id < args.warps ? (warp_id + 1) * args.rows / args.warps : args.rows;

  // Shared memory is addressed by 32-bit shared-space addresses (the
  // shared loads in group_decode.cuh say why): x_t at the window's start,
  // then one ring per warp.
  const uint32_t shared_base = static_cast<uint32_t>(__cvta_generic_to_shared(shared_words));
  Ring ring;
  ring.place(shared_base + args.x_shared_bytes + warp * kRingBytesPerWarp<value_t>);

  // The warp's entries are the window [window_first, window_end), clamped
  // to the stream and to what its rows can hold (each row at most cols
  // entries), so that corrupted pointers stay harmless. Row pointers are
  // kept relative to the ring's origin, clamped into the window, 31 rows at
  // a time: lane l holds the pointer of row pointer_row + l, so row
  // pointer_row + s spans lanes s and s + 1. The next 31 are loaded while
  // these are used. The rows' scales (8-bit values) come along the same
  // way, lane l holding row pointer_row + l's.
  int64_t window_first = 0, window_end = 0;
  auto relative_pointer = [&](int64_t row) {
    const int64_t p = static_cast<int64_t>(args.row_indices[min(row, end_row)]);
    return static_cast<int>(min(max(p, window_first), window_end) - ring.origin);
  };
  auto load_scale = [&](int64_t row) {
    if constexpr (kScaled) {
      return static_cast<float>(args.scales[min(row, end_row - 1)]);
    } else {
      return 1.0f;
    }
  };
  int64_t pointer_row = first_row;
  int pointer = 0, next_pointer = 0;
  float scale = 1.0f, next_scale = 1.0f;
  // With a programmatic launch this block may start while the kernel
  // before it finishes: it lets the next kernel be scheduled, then waits
  // for that one before it reads anything or writes y.
  allow_dependent_launch();
  wait_for_prerequisite_grids();
  if (first_row < args.rows) {
    const int64_t first = static_cast<int64_t>(args.row_indices[first_row]);
    const int64_t last = static_cast<int64_t>(args.row_indices[end_row]);
    window_first = min(max(first, int64_t{0}), args.n_entries);
    window_end = min(max(last, window_first),
                     min(args.n_entries, window_first + (end_row - first_row) * static_cast<int64_t>(args.cols)));
    ring.begin(args.values, args.deltas, window_first, window_end, lane);  // copies go out before x is staged
    pointer = relative_pointer(first_row + lane);
    scale = load_scale(first_row + lane);
    if (end_row - first_row > kWarpSize - 1) {
      next_pointer = relative_pointer(first_row + kWarpSize - 1 + lane);
      next_scale = load_scale(first_row + kWarpSize - 1 + lane);
    }
  }

  // What add_group gathers x from: one vector in shared memory by its
  // shared-space address, a batch there by a generic pointer, x_t in global
  // memory by its pointer.
  const auto x = [&] {
    if constexpr (kSharedX && kBatch == 1) {
      return SharedVector<scalar_t>{shared_base};
    } else if constexpr (kSharedX) {
      return reinterpret_cast<const scalar_t*>(shared_words);
    } else {
      return args.x_t;
    }
  }();
  if constexpr (kSharedX) {
    if constexpr (kBatch == 1) {
      stage_x<scalar_t, 1>(args.x, args.cols, shared_words);
    } else {
      stage_x_transposed<scalar_t, kBatch>(args.x, args.x_stride, args.batch, args.cols, shared_words);
    }
    __syncthreads();
  }
  if (first_row >= args.rows) return;  // warp-uniform, after the block's barrier

  const unsigned last_col = static_cast<unsigned>(args.cols - 1);
  RowDot<scalar_t, kBatch, kUseTensorCores<scalar_t, kBatch>> dot;
  uint32_t sink = 0;  // the experiment variants: what the cut-off work would have consumed
  int prev_end = __shfl_sync(kFullMask, pointer, 0);  // lane 0's pointer: the window's start
  for (int64_t row = first_row; row < end_row; ++row) {
    if (row - pointer_row == kWarpSize - 1) {
      pointer_row = row;
      pointer = next_pointer;
      scale = next_scale;
      if (end_row - row > kWarpSize - 1) {
        next_pointer = relative_pointer(row + kWarpSize - 1 + lane);
        next_scale = load_scale(row + kWarpSize - 1 + lane);
      }
    }
    const int slot = static_cast<int>(row - pointer_row);
    // The row's entries, after the previous row's and at most cols of them
    // (a no-op for a valid matrix).
    const int row_begin = max(__shfl_sync(kFullMask, pointer, slot), prev_end);
    const int row_end = min(max(__shfl_sync(kFullMask, pointer, slot + 1), row_begin), row_begin + args.cols);
    prev_end = row_end;
    const RowScale<scalar_t, value_t> row_scale(kScaled ? __shfl_sync(kFullMask, scale, slot) : 1.0f);

    dot.reset();
    // The entries of the previous row in the first group step by one each.
    unsigned prev_col = ~0u - static_cast<unsigned>(row_begin & (kGroup - 1));
    for (int step = row_begin & ~(kGroup - 1); step < row_end; step += kStageEntries) {
      ring.prepare_stage(step / kChunkEntries, lane);

      // Groups that start past the row's end are not read (past the
      // window's limit their slots hold stale or never-written data): they
      // count as empty, and a half stage of them is skipped whole.
      const bool stage_in_row = step + kStageEntries <= row_end;
      int first[kSteps];  // the lane's groups
      GroupValues<value_t> group[kSteps];
      uint32_t nibbles[kSteps];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        first[u] = step + (u * kWarpSize + lane) * kGroup;
        const int position = first[u] & (Ring::kEntries - 1);
        if (stage_in_row || first[u] < row_end) {  // warp-uniform true inside a row
          group[u].load_shared(ring.group_values(position));
          nibbles[u] = ring.group_nibbles(position);
        } else {
          group[u].clear();
          nibbles[u] = 0;
        }
      }
      if constexpr (kVariant == kStreamRingOnly) {
#pragma unroll
        for (int u = 0; u < kSteps; ++u) sink += group[u].first_bits() ^ nibbles[u];
        continue;
      }
      // A row's first or last stage (warp-uniform): its entries in each of
      // the lane's groups; the values outside the row are zeroed in the (at
      // most two) groups that straddle its edges, the leading entries'
      // nibbles too, and add_group gives their x no weight either (one select
      // per entry in every stage: a second copy of the gather for the edge
      // stages spilled a register in the 1024-thread kernel).
      const bool edge_stage = step < row_begin || !stage_in_row;
      unsigned in_row[kSteps] = {};
      if (edge_stage) {
#pragma unroll
        for (int u = 0; u < kSteps; ++u) {
          in_row[u] = group_row_mask(first[u], row_begin, row_end);
          if (first[u] < row_begin || (first[u] < row_end && row_end < first[u] + kGroup)) group[u].keep(in_row[u]);
        }
        if (lane == 0 && step < row_begin) nibbles[0] &= ~0u << (4 * (row_begin - step));
      }

      GroupSteps steps[kSteps];
      uint32_t totals[kSteps];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        steps[u] = GroupSteps(nibbles[u], 0xFFu);
        totals[u] = steps[u].odd_offsets() >> 24;
      }
      unsigned base[kSteps];
      warp_group_bases(totals, prev_col, base);
      if constexpr (kVariant == kStreamDecodeOnly) {
#pragma unroll
        for (int u = 0; u < kSteps; ++u) sink += base[u] + steps[u].odd_offsets() + group[u].first_bits();
        continue;
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (u == 0 || step + u * kWarpStepEntries < row_end) {  // warp-uniform
          const unsigned in_row_u = edge_stage ? in_row[u] : 0xFFu;
          if constexpr (kVariant == kStreamScaledSums) {
            dot.add_group(dequantized<scalar_t, false>(group[u], row_scale), steps[u], base[u], x, last_col,
                          in_row_u);
          } else if constexpr (kScaled) {
            dot.add_group(dequantized<scalar_t>(group[u], row_scale), steps[u], base[u], x, last_col, in_row_u);
          } else {
            dot.add_group(group[u], steps[u], base[u], x, last_col, in_row_u);
          }
        }
      }

    }

    if constexpr (kVariant == kStreamScaledSums) {
      const float sum = dot.total(0, lane);
      if (lane == 0) args.y[row] = static_cast<scalar_t>(sum * row_scale.value);
      continue;
    } else if constexpr (kVariant != kStreamProduct) {
      // A butterfly, not __reduce_xor_sync: that needs sm_80, and the
      // wheels build these kernels for sm_75 too.
      uint32_t kept = sink;
#pragma unroll
      for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) kept ^= __shfl_xor_sync(kFullMask, kept, offset);
      if (lane == 0) reinterpret_cast<uint16_t*>(args.y)[row] = static_cast<uint16_t>(kept ^ (kept >> 16));
      continue;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const float sum = dot.total(b, lane);
      if (lane == b && b < args.batch) args.y[b * args.rows + row] = static_cast<scalar_t>(sum);
    }
  }
  ring.drain();
}

template <typename scalar_t, typename value_t, typename index_t, int kBatch>
void launch_multiply(const MultiplyProblem& problem) {
  const int64_t rows = problem.rows, cols = problem.cols;
  if (rows == 0) return;
  const int device = current_device();
  const DeviceFacts& facts = device_facts(device);
  constexpr int ring_bytes = kRingBytesPerWarp<value_t>;
  // x_t goes to shared memory when a block of kMinWarpsPerBlock warps still
  // fits beside it; otherwise it is gathered from global memory (L1/L2).
  const int64_t x_bytes = (cols * kBatch * static_cast<int64_t>(sizeof(scalar_t)) + 15) / 16 * 16;
  const bool shared_x = x_bytes + kMinWarpsPerBlock * ring_bytes <= facts.max_shared_per_block;
  // The experiment variants exist for fp16 x (with fp16 or 8-bit values),
  // 32-bit row pointers and one vector in shared memory only.
  using Args = MultiplyArgs<scalar_t, value_t, index_t>;
  using SharedXKernel = void (*)(Args);
  SharedXKernel shared_x_kernel = multiply_kernel<scalar_t, value_t, index_t, kBatch, true>;
  if constexpr (kBatch == 1 && std::is_same_v<scalar_t, c10::Half> && std::is_same_v<index_t, int>) {
    const StreamVariant variant = stream_variant();
    if (variant == kStreamRingOnly) shared_x_kernel = multiply_kernel<scalar_t, value_t, index_t, 1, true, kStreamRingOnly>;
    if (variant == kStreamDecodeOnly) {
      shared_x_kernel = multiply_kernel<scalar_t, value_t, index_t, 1, true, kStreamDecodeOnly>;
    }
    if constexpr (!std::is_same_v<value_t, scalar_t>) {
      if (variant == kStreamScaledSums) {
        shared_x_kernel = multiply_kernel<scalar_t, value_t, index_t, 1, true, kStreamScaledSums>;
      }
    }
  }
  const auto global_x_kernel = multiply_kernel<scalar_t, value_t, index_t, kBatch, false>;
  const void* kernel = shared_x ? reinterpret_cast<const void*>(shared_x_kernel)
                                : reinterpret_cast<const void*>(global_x_kernel);
  const int x_shared_bytes = shared_x ? static_cast<int>(x_bytes) : 0;

  // The block size that keeps the most warps resident per SM (ties: the
  // larger block, which stages x fewer times), but no larger than spreads
  // the rows' warps over every SM when there are few rows.
  int warps_per_block = 0, resident_warps = 0, shared_bytes = 0;
  const int max_threads = shared_x ? kMaxThreads<kBatch, true> : kMaxThreads<kBatch, false>;
  for (int warps = kMinWarpsPerBlock; warps * kWarpSize <= max_threads; warps *= 2) {
    const int bytes = x_shared_bytes + warps * ring_bytes;
    if (bytes > facts.max_shared_per_block) break;
    const int resident = resident_blocks(kernel, device, warps * kWarpSize, bytes) * warps;
    if (resident == 0) continue;
    const bool spreads = warps == kMinWarpsPerBlock || rows >= static_cast<int64_t>(warps) * facts.sm_count;
    if (resident >= resident_warps && spreads) {
      warps_per_block = warps;
      resident_warps = resident;
      shared_bytes = bytes;
    }
  }
  TORCH_CHECK(resident_warps > 0, "macko_spmv multiply: no launch configuration fits this GPU");

  // One wave: the rows split evenly (to one row) over every warp the GPU
  // holds at once, in contiguous ranges; more warps only where a warp's
  // window would outgrow 32-bit offsets.
  const int64_t warp_slots = static_cast<int64_t>(resident_warps) * facts.sm_count;
  const int64_t max_rows_per_warp = std::max<int64_t>(1, kMaxWindowEntries / std::max<int64_t>(cols, 1) - 1);
  const int64_t warps = std::max(std::min(warp_slots, rows), (rows + max_rows_per_warp - 1) / max_rows_per_warp);
  const int64_t blocks = (warps + warps_per_block - 1) / warps_per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "macko_spmv multiply: too many rows (", rows, ")");

  // x: one vector goes as it is (16-byte aligned); a batch is transposed
  // to x_t[cols][kBatch], by each block as it stages x in shared memory, or
  // here when x_t is gathered from global memory.
  const int batch = static_cast<int>(problem.x.size(0));
  at::Tensor x_t;
  if (kBatch == 1) {
    x_t = aligned16(problem.x[0].contiguous());
  } else if (!shared_x) {
    x_t = at::zeros({cols, kBatch}, problem.x.options());
    x_t.narrow(1, 0, batch).copy_(problem.x.t());
  }
  Args args{};
  args.values = problem.values.const_data_ptr<value_t>();
  args.deltas = problem.deltas.const_data_ptr<uint8_t>();
  args.row_indices = problem.row_indices.const_data_ptr<index_t>();
  args.n_entries = problem.values.numel();
  args.rows = rows;
  args.cols = static_cast<int>(cols);
  args.x = kBatch == 1 ? x_t.const_data_ptr<scalar_t>() : problem.x.const_data_ptr<scalar_t>();
  args.x_stride = problem.x.stride(0);
  args.x_t = x_t.defined() ? x_t.const_data_ptr<scalar_t>() : nullptr;
  args.batch = batch;
  args.y = problem.y.mutable_data_ptr<scalar_t>();
  if constexpr (!std::is_same_v<value_t, scalar_t>) args.scales = problem.scales.const_data_ptr<scalar_t>();
  args.warps = warps;
  args.x_shared_bytes = x_shared_bytes;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(blocks)), block(warps_per_block * kWarpSize);
  const bool programmatic = programmatic_launch(device);
  if (shared_x) {
    launch_kernel(shared_x_kernel, grid, block, shared_bytes, stream, programmatic, args);
  } else {
    launch_kernel(global_x_kernel, grid, block, shared_bytes, stream, programmatic, args);
  }
}

// Runs y = M x for one dtype of x (scalar_t) and of the stored values
// (value_t: the same, or 8-bit), with the kernel of the problem's batch
// width (instantiated once per pair, in multiply_<dtype>.cu, so that they
// compile in parallel).
template <typename scalar_t, typename value_t>
void multiply_typed(const MultiplyProblem& problem) {
  MACKO_DISPATCH_INDEX_TYPES(problem.row_indices.scalar_type(), "macko_row_indices", [&] {
    switch (problem.width) {
      case 1: launch_multiply<scalar_t, value_t, index_t, 1>(problem); break;
      case 2: launch_multiply<scalar_t, value_t, index_t, 2>(problem); break;
      case 4: launch_multiply<scalar_t, value_t, index_t, 4>(problem); break;
      case 8: launch_multiply<scalar_t, value_t, index_t, 8>(problem); break;
      default: TORCH_CHECK(false, "macko_spmv multiply: no kernel of batch width ", problem.width);
    }
  });
}

}  // namespace multiply_impl

// The kernels of one pair of x's dtype and the values' type, compiled in
// multiply_<dtype>.cu (MACKO_INSTANTIATE_MULTIPLY there, extern here).
#define MACKO_INSTANTIATE_MULTIPLY(scalar_t, value_t) \
  template void multiply_impl::multiply_typed<scalar_t, value_t>(const multiply_impl::MultiplyProblem&)
extern MACKO_INSTANTIATE_MULTIPLY(c10::Half, c10::Half);
extern MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16, c10::BFloat16);
extern MACKO_INSTANTIATE_MULTIPLY(float, float);
extern MACKO_INSTANTIATE_MULTIPLY(c10::Half, int8_t);
extern MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16, int8_t);
extern MACKO_INSTANTIATE_MULTIPLY(c10::Half, c10::Float8_e4m3fn);
extern MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16, c10::Float8_e4m3fn);

}  // namespace cuda
}  // namespace macko
