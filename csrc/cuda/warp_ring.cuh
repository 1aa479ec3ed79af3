// warp_ring.cuh: a warp's ring of chunks of the stream in shared memory,
// filled with cp.async ahead of the warp's walk (multiply.cuh says why the
// lookahead is short).
#pragma once

#include "async_copy.cuh"
#include "group_decode.cuh"

namespace macko {
namespace cuda {
namespace multiply_impl {

// Entries per chunk of the ring: one warp step, a group per lane.
constexpr int kChunkEntries = kWarpStepEntries;
constexpr int kChunkNibbleBytes = kChunkEntries / 2;
// Warp steps per stage (one warp scan decodes the whole stage): two for
// 8- and 16-bit values; one for fp32, whose groups take twice the registers.
// value_t is the stored value type (int8_t or c10::Float8_e4m3fn for 8-bit
// values).
template <typename value_t>
constexpr int kStageSteps = sizeof(value_t) == 4 ? 1 : 2;
// Chunks each warp keeps requested beyond the up to kStageSteps + 1 that
// its current stage reads. Enough to cover DRAM latency with every warp of
// the GPU streaming, and no more: the requests of all warps share one queue,
// so a deeper lookahead only delays everyone's next chunk (measured: the
// first stage waited 8-10 us for a lookahead of 5, benchmarks/NOTES.md).
// About 2 KB a warp: three chunks of 16-bit values, two of fp32 ones, five
// of 8-bit ones (384 bytes a chunk).
template <typename value_t>
constexpr int kLookaheadChunks = sizeof(value_t) == 1 ? 5 : sizeof(value_t) == 2 ? 3 : 2;
// Chunks in each warp's ring: a power of two that holds a stage and the
// lookahead.
template <typename value_t>
constexpr int kRingChunks = sizeof(value_t) == 4 ? 4 : 8;
template <typename value_t>
constexpr int kRingBytesPerWarp = kRingChunks<value_t> * (kChunkEntries * static_cast<int>(sizeof(value_t)) +
                                                          kChunkNibbleBytes);
template <typename value_t>
constexpr bool kRingHoldsStage = kRingChunks<value_t> >= kStageSteps<value_t> + 1 + kLookaheadChunks<value_t>;
static_assert(kRingHoldsStage<int8_t> && kRingHoldsStage<c10::Half> && kRingHoldsStage<float>,
              "a ring must hold a stage and its lookahead");
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
template <typename value_t>
struct WarpRing {
  static constexpr int kChunks = kRingChunks<value_t>;
  static constexpr int kSteps = kStageSteps<value_t>;
  static constexpr int kLookahead = kLookaheadChunks<value_t>;
  static constexpr int kAhead = kSteps + 1 + kLookahead;
  static constexpr int kEntries = kChunks * kChunkEntries;
  static_assert((kChunks & (kChunks - 1)) == 0, "ring positions wrap with a mask");
  // A lane copies the values of kLaneEntries entries of a chunk: its group
  // (16 bytes of 16-bit values, 32 of fp32 ones), or two groups of 8-bit
  // values (16 bytes), so that every copy is 16 bytes; kValueLanes lanes
  // copy a chunk's values.
  static constexpr int kLaneEntries = sizeof(value_t) == 1 ? 2 * kGroupEntries : kGroupEntries;
  static constexpr int kValueLanes = kChunkEntries / kLaneEntries;
  static constexpr int kLaneCopies = kLaneEntries * static_cast<int>(sizeof(value_t)) / 16;
  static constexpr int kValuesPerCopy = 16 / sizeof(value_t);
  // Lanes that copy a chunk's nibbles, 16 bytes (32 entries) each.
  static constexpr int kNibbleLanes = kChunkNibbleBytes / 16;

  // The window's origin is rounded down to a whole 16-byte copy of deltas
  // (32 entries' nibbles), so every chunk's nibbles are 16-byte aligned.
  static constexpr int kOriginEntries = 16 * 2;
  static_assert(kChunkEntries % kOriginEntries == 0, "chunks start on whole 16-byte copies of deltas");

  // The slots, by 32-bit shared-space address, computed once (why: the
  // shared loads in group_decode.cuh).
  uint32_t values_base;   // [kEntries] values
  uint32_t nibbles_base;  // [kEntries / 8] words of nibbles
  int64_t origin;     // first entry of chunk 0 (a multiple of kOriginEntries)
  int limit;          // entries [0, limit) of the window may be read (a multiple of 8)
  int issued;         // chunks whose (possibly empty) copy group has been committed
  // The lane's sources in chunk `issued`: (lanes below kValueLanes) the
  // values of its kLaneEntries, and (lanes below kNibbleLanes) 16 bytes of
  // deltas.
  const value_t* lane_values;
  const uint8_t* lane_deltas;

  // The slots start at shared-space address `slots`: kRingBytesPerWarp
  // bytes, 16-byte aligned.
  __device__ __forceinline__ void place(uint32_t slots) {
    values_base = slots;
    nibbles_base = slots + kEntries * static_cast<uint32_t>(sizeof(value_t));
  }

  // The shared-space address of the values of the group at ring position
  // `position` (its first entry's, modulo kEntries).
  __device__ __forceinline__ uint32_t group_values(int position) const {
    return values_base + position * static_cast<uint32_t>(sizeof(value_t));
  }
  // The nibbles of that group: one word.
  __device__ __forceinline__ uint32_t group_nibbles(int position) const {
    return load_shared_u32(nibbles_base + position / static_cast<int>(kGroupEntries) * 4);
  }

  // The window is entries [first, end) of the stream, end <= n_entries;
  // issues the chunks its first stage can read.
  __device__ __forceinline__ void begin(const value_t* stream_values, const uint8_t* stream_deltas,
                                        int64_t first, int64_t end, int lane) {
    origin = first & ~int64_t{kOriginEntries - 1};
    limit = static_cast<int>(((end + kGroupEntries - 1) & ~(kGroupEntries - 1)) - origin);
    issued = 0;
    lane_values = stream_values + origin + lane * kLaneEntries;
    lane_deltas = stream_deltas + origin / 2 + lane * 16;
    issue_up_to(kSteps + 1, lane);
  }

  // Copies chunk `issued` into its slot; nothing at or past `limit` is read.
  __device__ __forceinline__ void copy_chunk(int lane) {
    const int first = issued * kChunkEntries;
    const int slot = first & (kEntries - 1);
    const uint32_t value_slot = group_values(slot + lane * kLaneEntries);
    const uint32_t nibble_slot = nibbles_base + slot / 2 + lane * 16;
    if (first + kChunkEntries <= limit) {  // warp-uniform: a whole chunk
      if (lane < kValueLanes) {
#pragma unroll
        for (int w = 0; w < kLaneCopies; ++w) {
          copy16_async(value_slot + w * 16, lane_values + w * kValuesPerCopy);
        }
      }
      if (lane < kNibbleLanes) copy16_async(nibble_slot, lane_deltas);
    } else {  // the window's last chunk: whole groups up to the limit
      const int lane_entries = limit - (first + lane * kLaneEntries);  // a multiple of 8
      if (lane < kValueLanes && lane_entries >= kLaneEntries) {
#pragma unroll
        for (int w = 0; w < kLaneCopies; ++w) {
          copy16_async(value_slot + w * 16, lane_values + w * kValuesPerCopy);
        }
      } else if (sizeof(value_t) == 1 && lane < kValueLanes && lane_entries >= kGroupEntries) {
        copy_small_async<8>(value_slot, lane_values);  // the first of the lane's two groups
      }
      const int entries = limit - (first + lane * 32);  // a multiple of 8: 4 bytes of deltas
      if (lane < kNibbleLanes && entries >= 32) {
        copy16_async(nibble_slot, lane_deltas);
      } else if (lane < kNibbleLanes) {
        if (entries >= 8) copy_small_async<4>(nibble_slot, lane_deltas);
        if (entries >= 16) copy_small_async<4>(nibble_slot + 4, lane_deltas + 4);
        if (entries >= 24) copy_small_async<4>(nibble_slot + 8, lane_deltas + 8);
      }
    }
  }

  // Commits copy groups up to chunk target - 1, each with its chunk's
  // copies if the chunk is in the window. A stage mostly issues kSteps
  // chunks (two but for fp32): unrolled by two. Left to itself, with the
  // 32-bit slot addresses the compiler unrolls by four behind three
  // remainder copies: twice the code, and no fewer instructions per chunk.
  __device__ __forceinline__ void issue_up_to(int target, int lane) {
#pragma unroll 2
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

}  // namespace multiply_impl
}  // namespace cuda
}  // namespace macko
