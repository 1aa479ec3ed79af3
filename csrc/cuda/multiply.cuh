// multiply.cuh: y = M x for a MACKO matrix M and up to 8 right-hand sides
// per pass over the matrix (larger batches go in chunks, see kMaxBatch).
// The kernels are instantiated per value dtype in multiply_<dtype>.cu.
//
// Algorithm. The rows are split evenly, in contiguous ranges, over every
// warp the GPU holds at once (one wave), so the entries a warp reads are one
// contiguous window of the stream. The warp copies that window into a ring
// of chunks in shared memory (256 entries a chunk, filled with cp.async: the
// bytes bypass registers and L1) and walks its rows in order through the
// ring. A row is walked in stages of kStageSteps x 256 entries, one aligned
// 8-entry group per lane and step (warp_stream.cuh), starting at the group
// that holds the row's first entry. Columns are a prefix sum of the gaps:
// byte arithmetic within a lane's group, one warp scan per stage across
// lanes. Each lane multiplies its entries by the gathered vector elements;
// with one right-hand side and 16-bit values the tensor cores do it
// (RowDot: the products of a lane's entries land on the diagonal of an
// mma's result), otherwise fp32 FMAs. A butterfly reduction gives the row's
// sums when the row ends.
//
// Data layout. values and deltas are the format's arrays. The ring holds a
// chunk's values (256 x the value size) and its nibbles (128 bytes) at the
// same ordinal, so a group is one 16-byte shared load of values (two for
// fp32) and one 4-byte load of nibbles. With one right-hand side x is read
// as it is; with B > 1 the batch is transposed to x_t[cols][kBatch]
// (zero-padded to a power of two), so one gathered column is a single
// contiguous load of all its right-hand sides, and the matrix is read once
// for the whole batch. Each block first copies x_t into shared memory when
// it fits beside the rings.
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
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "async_copy.cuh"
#include "warp_stream.cuh"

namespace macko {
namespace cuda {
namespace multiply_impl {

// The widest batch one kernel pass takes; larger batches go in chunks of it,
// one pass over the matrix each. (Wider kernels spill registers or lose the
// vector's shared-memory copy; a dense scratch + cuBLAS route measured 3-12x
// slower than chunks, its decompress being the cost: benchmarks/NOTES.md.)
constexpr int kMaxBatch = 8;
// Entries per chunk of the ring: one warp step, a group per lane.
constexpr int kChunkEntries = kWarpStepEntries;
constexpr int kChunkNibbleBytes = kChunkEntries / 2;
// Warp steps per stage (one warp scan decodes the whole stage): two for
// 16-bit values; one for fp32, whose groups take twice the registers.
template <typename scalar_t>
constexpr int kStageSteps = sizeof(scalar_t) == 2 ? 2 : 1;
// Chunks each warp keeps requested beyond the up to kStageSteps + 1 that
// its current stage reads. Enough to cover DRAM latency with every warp of
// the GPU streaming, and no more: the requests of all warps share one queue,
// so a deeper lookahead only delays everyone's next chunk (measured: the
// first stage waited 8-10 us for a lookahead of 5, benchmarks/NOTES.md).
// About 2 KB a warp: three chunks of 16-bit values, two of fp32 ones.
template <typename scalar_t>
constexpr int kLookaheadChunks = sizeof(scalar_t) == 2 ? 3 : 2;
// Chunks in each warp's ring: a power of two that holds a stage and the
// lookahead.
template <typename scalar_t>
constexpr int kRingChunks = sizeof(scalar_t) == 2 ? 8 : 4;
template <typename scalar_t>
constexpr int kRingBytesPerWarp = kRingChunks<scalar_t> * (kChunkEntries * static_cast<int>(sizeof(scalar_t)) +
                                                           kChunkNibbleBytes);
static_assert(kRingChunks<c10::Half> >= kStageSteps<c10::Half> + 1 + kLookaheadChunks<c10::Half> &&
                  kRingChunks<float> >= kStageSteps<float> + 1 + kLookaheadChunks<float>,
              "a ring must hold a stage and its lookahead");
// Threads per block: from 4 warps (GPUs with 64 KB of shared memory per
// block) to 32 (one block of 1024 per SM on Hopper); batch kernels, and those
// that gather x from global memory, need more registers and take at most 16.
template <int kBatch, bool kSharedX>
constexpr int kMaxThreads = kBatch <= 2 && kSharedX ? 1024 : 512;
constexpr int kMinWarpsPerBlock = 4;
// A warp's window is addressed with 32-bit offsets: its length (at most
// its rows * cols entries) stays below this.
constexpr int64_t kMaxWindowEntries = (int64_t{1} << 31) - (int64_t{1} << 16);

template <typename scalar_t, typename index_t>
struct MultiplyArgs {
  const scalar_t* values;
  const uint8_t* deltas;
  const index_t* row_indices;
  int64_t n_entries;  // values.numel(): every row range is clamped to it
  int64_t rows;
  int cols;
  const scalar_t* x_t;  // [cols] or [cols][kBatch]
  int batch;            // right-hand sides that are real (the rest are padding)
  scalar_t* y;          // [batch][rows]
  int64_t warps;        // warp w takes rows [w * rows / warps, (w + 1) * rows / warps)
  int x_shared_bytes;  // bytes of shared memory before the rings (x_t, 16-byte aligned)
};

// One warp's ring of chunks of its window of the stream. Chunk c holds the
// entries [origin + 256c, origin + 256c + 256) in slot c % kChunks. Every
// lane of the warp calls every method (the state is warp-uniform, but for
// the lane's own source pointers).
//
// Chunks are issued in order, up to kAhead from the lowest chunk a stage
// still reads; one commit group per chunk, an empty one for each chunk past
// the window, so that a stage always finds exactly kLookahead groups
// newer than the last chunk it needs, and waits with a constant. At the
// start only the first stage's chunks are requested, so that they are not
// queued behind every warp's lookahead.
template <typename scalar_t>
struct WarpRing {
  static constexpr int kChunks = kRingChunks<scalar_t>;
  static constexpr int kSteps = kStageSteps<scalar_t>;
  static constexpr int kLookahead = kLookaheadChunks<scalar_t>;
  static constexpr int kAhead = kSteps + 1 + kLookahead;
  static constexpr int kEntries = kChunks * kChunkEntries;
  static_assert((kChunks & (kChunks - 1)) == 0, "ring positions wrap with a mask");
  static constexpr int kValueWords = GroupValues<scalar_t>::kWords;
  static constexpr int kScalarsPerWord = 16 / sizeof(scalar_t);
  // Lanes that copy a chunk's nibbles, 16 bytes (32 entries) each.
  static constexpr int kNibbleLanes = kChunkNibbleBytes / 16;

  scalar_t* values;   // [kEntries], shared memory
  uint32_t* nibbles;  // [kEntries / 8] words, shared memory
  int64_t origin;     // first entry of chunk 0 (a multiple of 32: 16 bytes of deltas)
  int limit;          // entries [0, limit) of the window may be read (a multiple of 8)
  int issued;         // chunks whose (possibly empty) copy group has been committed
  // The lane's sources in chunk `issued`: its group's values, and (lanes
  // below kNibbleLanes) 16 bytes of deltas.
  const scalar_t* lane_values;
  const uint8_t* lane_deltas;

  // The window is entries [first, end) of the stream, end <= n_entries;
  // issues the chunks its first stage can read.
  __device__ __forceinline__ void begin(const scalar_t* stream_values, const uint8_t* stream_deltas,
                                        int64_t first, int64_t end, int lane) {
    origin = first & ~int64_t{31};
    limit = static_cast<int>(((end + kGroupEntries - 1) & ~(kGroupEntries - 1)) - origin);
    issued = 0;
    lane_values = stream_values + origin + lane * kGroupEntries;
    lane_deltas = stream_deltas + origin / 2 + lane * 16;
    issue_up_to(kSteps + 1, lane);
  }

  // Copies chunk `issued` into its slot; nothing at or past `limit` is read.
  __device__ __forceinline__ void copy_chunk(int lane) {
    const int first = issued * kChunkEntries;
    const int slot = first & (kEntries - 1);
    scalar_t* value_slot = values + slot + lane * kGroupEntries;
    uint8_t* nibble_slot = reinterpret_cast<uint8_t*>(nibbles) + slot / 2 + lane * 16;
    if (first + kChunkEntries <= limit) {  // warp-uniform: a whole chunk
#pragma unroll
      for (int w = 0; w < kValueWords; ++w) {
        copy16_async(value_slot + w * kScalarsPerWord, lane_values + w * kScalarsPerWord);
      }
      if (lane < kNibbleLanes) copy16_async(nibble_slot, lane_deltas);
    } else {  // the window's last chunk
      if (first + lane * kGroupEntries < limit) {
#pragma unroll
        for (int w = 0; w < kValueWords; ++w) {
          copy16_async(value_slot + w * kScalarsPerWord, lane_values + w * kScalarsPerWord);
        }
      }
      const int entries = limit - (first + lane * 32);  // a multiple of 8: 4 bytes of deltas
      if (lane < kNibbleLanes && entries >= 32) {
        copy16_async(nibble_slot, lane_deltas);
      } else if (lane < kNibbleLanes) {
        if (entries >= 8) copy4_async(nibble_slot, lane_deltas);
        if (entries >= 16) copy4_async(nibble_slot + 4, lane_deltas + 4);
        if (entries >= 24) copy4_async(nibble_slot + 8, lane_deltas + 8);
      }
    }
  }

  // Commits copy groups up to chunk target - 1, each with its chunk's
  // copies if the chunk is in the window.
  __device__ __forceinline__ void issue_up_to(int target, int lane) {
    while (issued < target) {  // warp-uniform
      if (issued * kChunkEntries < limit) copy_chunk(lane);
      commit_async_copies();
      lane_values += kChunkEntries;
      lane_deltas += kChunkNibbleBytes;
      ++issued;
    }
  }

  // Before a stage that starts in chunk `lowest`: requests up to chunk
  // lowest + kAhead - 1 (into slots of chunks before `lowest`, which no
  // stage reads any more), then waits for chunks lowest .. lowest + kSteps,
  // all that the stage can read.
  __device__ __forceinline__ void prepare_stage(int lowest, int lane) {
    if (issued < lowest + kAhead) {
      __syncwarp();  // every lane has finished reading the slots refilled here
      issue_up_to(lowest + kAhead, lane);
    }
    wait_async_copies<kLookahead>();
    __syncwarp();  // each lane's copies become visible to the whole warp
  }

  // No copy may still be writing to shared memory when the warp exits.
  __device__ __forceinline__ void drain() { wait_async_copies<0>(); }
};

// kBatch consecutive scalars of x_t at one column, as floats, in as few
// loads as their width allows (x_t rows are aligned to their width). x_t is
// in shared memory or, when it does not fit there, in global memory.
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void load_x(const scalar_t* x_t, unsigned col, float (&out)[kBatch]) {
  constexpr int kBytes = kBatch * sizeof(scalar_t);
  using Word = std::conditional_t<(kBytes >= 16), uint4,
               std::conditional_t<kBytes == 8, uint2,
               std::conditional_t<kBytes == 4, unsigned, unsigned short>>>;
  constexpr int kWords = kBytes >= 16 ? kBytes / 16 : 1;
  Word raw[kWords];
  const Word* p = reinterpret_cast<const Word*>(x_t + static_cast<size_t>(col) * kBatch);
#pragma unroll
  for (int w = 0; w < kWords; ++w) raw[w] = p[w];
#pragma unroll
  for (int b = 0; b < kBatch; ++b) out[b] = static_cast<float>(reinterpret_cast<const scalar_t*>(raw)[b]);
}

// acc[b] += the lane's 8 values x their gathered x (right-hand side b), in
// fp32 FMAs. Entries outside the row have value 0 here; the clamp keeps
// their columns, and a corrupted stream's, inside x.
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void fma_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                          unsigned base, const scalar_t* x, unsigned last_col,
                                          float (&acc)[kBatch]) {
  for_each_column(steps, base, [&](int j, unsigned col) {
    float xv[kBatch];
    load_x<scalar_t, kBatch>(x, min(col, last_col), xv);
    const float v = group[j];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) acc[b] = fmaf(v, xv[b], acc[b]);
  });
}

// The row sums of value * x over a warp's entries, kBatch right-hand sides,
// with fp32 FMAs: each lane converts its entries and gathered x to float.
template <typename scalar_t, int kBatch, bool kTensorCores>
struct RowDot {
  float acc[kBatch];

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int b = 0; b < kBatch; ++b) acc[b] = 0.0f;
  }
  __device__ __forceinline__ void add_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                            unsigned base, const scalar_t* x, unsigned last_col) {
    fma_group(group, steps, base, x, last_col, acc);
  }
  // The warp's sum for right-hand side b (in every lane).
  __device__ __forceinline__ float total(int b, int /*lane*/) const { return warp_sum(acc[b]); }
};

// One right-hand side, 16-bit values: the tensor cores multiply and add.
// An mma.m16n8k16 computes D[m][n] += sum_k A[m][k] B[k][n]; lane l (group
// g = l / 4, t = l % 4) holds A[g][2t, 2t+1], A[g+8][2t, 2t+1],
// A[g][2t+8, 2t+9], A[g+8][2t+8, 2t+9] in its four A registers and
// B[2t, 2t+1][g], B[2t+8, 2t+9][g] in its two B registers: the same k for
// its A rows g, g+8 and its B column g. A lane puts the gathered x of its
// 8 entries in A as pairs {x01, x45, x23, x67} and the values of entries
// 0-3 in B ({v01, v23}): then D[g][g] gains x01.v01 + x23.v23 from each of
// lanes 4g..4g+3. With the same A and B = {v45, v67}, a second accumulator's
// D[g+8][g] gains x45.v45 + x67.v67. Products are exact and sums fp32; the
// other elements of D collect products of unrelated lanes and are never
// read. Two mma per group replace 8 x (two conversions + FMA) per lane, and
// every operand is already in place (no register moves). GPUs before sm_80
// have no m16n8k16 mma: there the FMAs do it, in low[0].
template <typename scalar_t>
struct RowDot<scalar_t, 1, true> {
  static_assert(sizeof(scalar_t) == 2, "tensor-core dot products take 16-bit values");
  float low[4], high[4];  // the two accumulators (entries 0-3 and 4-7 of each group)

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int i = 0; i < 4; ++i) low[i] = high[i] = 0.0f;
  }

  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      asm(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }

  __device__ __forceinline__ void add_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                            unsigned base, const scalar_t* x, unsigned last_col) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    float acc[1] = {low[0]};
    fma_group(group, steps, base, x, last_col, acc);
    low[0] = acc[0];
#else
    const unsigned short* x_bits = reinterpret_cast<const unsigned short*>(x);
    uint32_t xs[kGroupEntries];
    for_each_column(steps, base, [&](int j, unsigned col) { xs[j] = x_bits[min(col, last_col)]; });
    const uint32_t a[4] = {__byte_perm(xs[0], xs[1], 0x5410), __byte_perm(xs[4], xs[5], 0x5410),
                           __byte_perm(xs[2], xs[3], 0x5410), __byte_perm(xs[6], xs[7], 0x5410)};
    const uint4 v = group.words[0];  // entries (0, 1), (2, 3), (4, 5), (6, 7) as pairs
    mma(low, a, v.x, v.y);
    mma(high, a, v.z, v.w);
#endif
  }

  // D[g][g] (elements 0, 1: columns 2t, 2t+1 of row g) and D[g+8][g]
  // (elements 2, 3) sit in lane 4g + g/2, element g % 2 of each pair.
  __device__ __forceinline__ float total(int /*b*/, int lane) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    return warp_sum(low[0]);
#else
    const int g = lane / 4;
    const bool odd = g % 2;
    const float diagonal = lane % 4 == g / 2 ? (odd ? low[1] + high[3] : low[0] + high[2]) : 0.0f;
    return warp_sum(diagonal);
#endif
  }
};

// Tensor cores (mma.sync, sm_80+) for one right-hand side of 16-bit
// values; FMAs otherwise.
template <typename scalar_t, int kBatch>
constexpr bool kUseTensorCores = kBatch == 1 && sizeof(scalar_t) == 2;

// Copies x_t ([cols * kBatch] scalars) into shared memory: whole 16-byte
// words, then the scalars of a last partial word.
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

template <typename scalar_t, typename index_t, int kBatch, bool kSharedX>
__global__ void __launch_bounds__(kMaxThreads<kBatch, kSharedX>, 1)
    multiply_kernel(const MultiplyArgs<scalar_t, index_t> args) {
  extern __shared__ uint4 shared_words[];
  constexpr int kSteps = kStageSteps<scalar_t>;
  constexpr int kStageEntries = kSteps * kWarpStepEntries;
  constexpr int kGroup = static_cast<int>(kGroupEntries);
  using Ring = WarpRing<scalar_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + warp;
  const int64_t first_row = warp_id < args.warps ? warp_id * args.rows / args.warps : args.rows;
  const int64_t end_row = warp_id < args.warps ? (warp_id + 1) * args.rows / args.warps : args.rows;

  uint8_t* ring_memory = reinterpret_cast<uint8_t*>(shared_words) + args.x_shared_bytes +
                         static_cast<int64_t>(warp) * kRingBytesPerWarp<scalar_t>;
  Ring ring;
  ring.values = reinterpret_cast<scalar_t*>(ring_memory);
  ring.nibbles = reinterpret_cast<uint32_t*>(ring_memory + Ring::kEntries * sizeof(scalar_t));

  // The warp's entries are the window [window_first, window_end), clamped
  // to the stream and to what its rows can hold (each row at most cols
  // entries), so that corrupted pointers stay harmless. Row pointers are
  // kept relative to the ring's origin, clamped into the window, 31 rows at
  // a time: lane l holds the pointer of row pointer_row + l, so row
  // pointer_row + s spans lanes s and s + 1. The next 31 are loaded while
  // these are used.
  int64_t window_first = 0, window_end = 0;
  auto relative_pointer = [&](int64_t row) {
    const int64_t p = static_cast<int64_t>(args.row_indices[min(row, end_row)]);
    return static_cast<int>(min(max(p, window_first), window_end) - ring.origin);
  };
  int64_t pointer_row = first_row;
  int pointer = 0, next_pointer = 0;
  if (first_row < args.rows) {
    const int64_t first = static_cast<int64_t>(args.row_indices[first_row]);
    const int64_t last = static_cast<int64_t>(args.row_indices[end_row]);
    window_first = min(max(first, int64_t{0}), args.n_entries);
    window_end = min(max(last, window_first),
                     min(args.n_entries, window_first + (end_row - first_row) * static_cast<int64_t>(args.cols)));
    ring.begin(args.values, args.deltas, window_first, window_end, lane);  // copies go out before x is staged
    pointer = relative_pointer(first_row + lane);
    if (end_row - first_row > kWarpSize - 1) next_pointer = relative_pointer(first_row + kWarpSize - 1 + lane);
  }

  const scalar_t* x = args.x_t;
  if constexpr (kSharedX) {
    stage_x<scalar_t, kBatch>(args.x_t, args.cols, shared_words);
    __syncthreads();
    x = reinterpret_cast<const scalar_t*>(shared_words);
  }
  if (first_row >= args.rows) return;  // warp-uniform, after the block's barrier

  const unsigned last_col = static_cast<unsigned>(args.cols - 1);
  RowDot<scalar_t, kBatch, kUseTensorCores<scalar_t, kBatch>> dot;
  int prev_end = __shfl_sync(kFullMask, pointer, 0);  // lane 0's pointer: the window's start
  for (int64_t row = first_row; row < end_row; ++row) {
    if (row - pointer_row == kWarpSize - 1) {
      pointer_row = row;
      pointer = next_pointer;
      if (end_row - row > kWarpSize - 1) next_pointer = relative_pointer(row + kWarpSize - 1 + lane);
    }
    const int slot = static_cast<int>(row - pointer_row);
    // The row's entries, after the previous row's and at most cols of them
    // (a no-op for a valid matrix).
    const int row_begin = max(__shfl_sync(kFullMask, pointer, slot), prev_end);
    const int row_end = min(max(__shfl_sync(kFullMask, pointer, slot + 1), row_begin), row_begin + args.cols);
    prev_end = row_end;

    dot.reset();
    // The entries of the previous row in the first group step by one each.
    unsigned prev_col = ~0u - static_cast<unsigned>(row_begin & (kGroup - 1));
    for (int step = row_begin & ~(kGroup - 1); step < row_end; step += kStageEntries) {
      ring.prepare_stage(step / kChunkEntries, lane);

      // Groups that start past the row's end are not read (their slots may
      // be in flight): they count as empty, and a half stage of them is
      // skipped whole.
      const bool stage_in_row = step + kStageEntries <= row_end;
      int first[kSteps];  // the lane's groups
      GroupValues<scalar_t> group[kSteps];
      uint32_t nibbles[kSteps];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        first[u] = step + (u * kWarpSize + lane) * kGroup;
        const int position = first[u] & (Ring::kEntries - 1);
        if (stage_in_row || first[u] < row_end) {  // warp-uniform true inside a row
          group[u].load_shared(ring.values + position);
          nibbles[u] = ring.nibbles[position / kGroup];
        } else {
          group[u].clear();
          nibbles[u] = 0;
        }
      }
      if (step < row_begin || !stage_in_row) {  // warp-uniform: a row's first or last stage
        // Zero the values outside the row in the (at most two) groups that
        // straddle its edges; the leading entries' nibbles too.
#pragma unroll
        for (int u = 0; u < kSteps; ++u) {
          if (first[u] < row_begin || (first[u] < row_end && row_end < first[u] + kGroup)) {
            group[u].keep(group_row_mask(first[u], row_begin, row_end));
          }
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
      warp_group_bases(totals, lane, prev_col, base);
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (u == 0 || step + u * kWarpStepEntries < row_end) {  // warp-uniform
          dot.add_group(group[u], steps[u], base[u], x, last_col);
        }
      }

    }

#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const float sum = dot.total(b, lane);
      if (lane == b && b < args.batch) args.y[b * args.rows + row] = static_cast<scalar_t>(sum);
    }
  }
  ring.drain();
}

// Facts about a device that every launch needs, read once.
struct DeviceFacts {
  int sm_count;
  int max_shared_per_block;  // bytes, with the opt-in above 48 KB
};

inline const DeviceFacts& device_facts(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> facts;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = facts.find(device);
  if (it == facts.end()) {
    DeviceFacts f{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&f.sm_count, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&f.max_shared_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    it = facts.emplace(device, f).first;
  }
  return it->second;
}

// Blocks of `threads` threads and `shared_bytes` of shared memory that fit
// on one SM at once (0 if none), cached per kernel, device and shape. The
// first query for a kernel on a device also lifts its shared-memory limit
// to the device's maximum.
inline int resident_blocks(const void* kernel, int device, int threads, int shared_bytes) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, int>, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, device, threads, shared_bytes);
  auto it = cache.find(key);
  if (it == cache.end()) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        device_facts(device).max_shared_per_block));
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes));
    it = cache.emplace(key, blocks).first;
  }
  return it->second;
}

template <typename scalar_t, typename index_t, int kBatch>
void launch_multiply(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                     int64_t rows, int64_t cols, const at::Tensor& x_t, int batch, at::Tensor& y) {
  if (rows == 0) return;
  int device;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const DeviceFacts& facts = device_facts(device);
  constexpr int ring_bytes = kRingBytesPerWarp<scalar_t>;
  // x_t goes to shared memory when a block of kMinWarpsPerBlock warps still
  // fits beside it; otherwise it is gathered from global memory (L1/L2).
  const int64_t x_bytes = (cols * kBatch * static_cast<int64_t>(sizeof(scalar_t)) + 15) / 16 * 16;
  const bool shared_x = x_bytes + kMinWarpsPerBlock * ring_bytes <= facts.max_shared_per_block;
  const void* kernel = shared_x ? reinterpret_cast<const void*>(multiply_kernel<scalar_t, index_t, kBatch, true>)
                                : reinterpret_cast<const void*>(multiply_kernel<scalar_t, index_t, kBatch, false>);
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

  MultiplyArgs<scalar_t, index_t> args{};
  args.values = values.const_data_ptr<scalar_t>();
  args.deltas = deltas.const_data_ptr<uint8_t>();
  args.row_indices = row_indices.const_data_ptr<index_t>();
  args.n_entries = values.numel();
  args.rows = rows;
  args.cols = static_cast<int>(cols);
  args.x_t = x_t.const_data_ptr<scalar_t>();
  args.batch = batch;
  args.y = y.mutable_data_ptr<scalar_t>();
  args.warps = warps;
  args.x_shared_bytes = x_shared_bytes;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(blocks)), block(warps_per_block * kWarpSize);
  if (shared_x) {
    multiply_kernel<scalar_t, index_t, kBatch, true><<<grid, block, shared_bytes, stream>>>(args);
  } else {
    multiply_kernel<scalar_t, index_t, kBatch, false><<<grid, block, shared_bytes, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs y = M x_t for one value dtype, with kernels of every batch width
// (instantiated once per dtype, in multiply_<dtype>.cu, so that the
// dtypes compile in parallel). width: the kernel batch width (1, 2, 4, 8)
// that x_t [cols][width] was padded to; batch: the real right-hand sides.
template <typename scalar_t>
void multiply_typed(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                    int64_t rows, int64_t cols, const at::Tensor& x_t, int width, int batch, at::Tensor& y) {
  MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
    switch (width) {
      case 1: launch_multiply<scalar_t, index_t, 1>(values, deltas, row_indices, rows, cols, x_t, batch, y); break;
      case 2: launch_multiply<scalar_t, index_t, 2>(values, deltas, row_indices, rows, cols, x_t, batch, y); break;
      case 4: launch_multiply<scalar_t, index_t, 4>(values, deltas, row_indices, rows, cols, x_t, batch, y); break;
      default: launch_multiply<scalar_t, index_t, 8>(values, deltas, row_indices, rows, cols, x_t, batch, y); break;
    }
  });
}

}  // namespace multiply_impl

// Defined in multiply_fp16.cu, multiply_bf16.cu, multiply_fp32.cu.
extern template void multiply_impl::multiply_typed<c10::Half>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              int64_t, int64_t, const at::Tensor&, int, int, at::Tensor&);
extern template void multiply_impl::multiply_typed<c10::BFloat16>(const at::Tensor&, const at::Tensor&,
                                                                  const at::Tensor&, int64_t, int64_t,
                                                                  const at::Tensor&, int, int, at::Tensor&);
extern template void multiply_impl::multiply_typed<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          int64_t, int64_t, const at::Tensor&, int, int, at::Tensor&);

}  // namespace cuda
}  // namespace macko
