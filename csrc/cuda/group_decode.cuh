// group_decode.cuh: decoding the stream in aligned groups, and the warp
// scans that turn gaps into columns; shared by every CUDA kernel.
//
// Every kernel here walks a row with one warp. A step of the walk gives each
// lane one aligned group of kGroupEntries (8) entries: its values (16 bytes
// for fp16/bf16, 32 for fp32) and its 8 nibbles (one 32-bit word), both
// found by the same ordinal. The lanes' groups are consecutive, so a warp
// step covers 256 entries with fully coalesced 16-byte loads. A column is
// the previous column + 1 + delta, so columns are a prefix sum: each lane
// sums its 8 increments, a warp scan (5 shuffles) gives each lane the sum of
// the lanes before it, and the warp carries the step's total to the next.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Float8_e4m3fn.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../macko.h"

namespace macko {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Entries one warp covers per step of its walk.
constexpr int kWarpStepEntries = kWarpSize * static_cast<int>(kGroupEntries);

// Column numbers are 32-bit unsigned on the device. A corrupted stream can
// run a row's columns past `cols`: decompress and the tile kernel stop such
// a walk within a warp step (256 entries x 16 columns), and the streaming
// kernel clamps every column it reads x at (its walk is bounded by the
// row's length, cols entries, so columns can wrap, harmlessly). `cols`
// keeps headroom below 2^31 for the walks that stop.
constexpr int64_t kMaxCols = (int64_t{1} << 31) - (int64_t{1} << 20);

inline void check_cols_fit(int64_t cols) {
  TORCH_CHECK_VALUE(cols <= kMaxCols, "cols = ", cols,
                    " is larger than the CUDA kernels support (", kMaxCols, ")");
}

// `t` itself if its data is 16-byte aligned (as the vector loads need),
// else an aligned copy: a view at an odd offset is read correctly, if slower.
inline at::Tensor aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone();
}

inline int blocks_for(int64_t items, int per_block) {
  return static_cast<int>((items + per_block - 1) / per_block);
}

// Inclusive prefix sum across the warp; `total` gets the whole warp's sum.
__device__ __forceinline__ int warp_inclusive_sum(int v, int lane, int& total) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  total = __shfl_sync(kFullMask, v, kWarpSize - 1);
  return v;
}

// Inclusive prefix maximum across the warp; `total` gets the warp's max.
__device__ __forceinline__ int warp_inclusive_max(int v, int lane, int& total) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v = max(v, other);
  }
  total = __shfl_sync(kFullMask, v, kWarpSize - 1);
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Streaming loads for data read exactly once: read-only path, and no L1
// allocation so the stream does not evict the vector that every row reuses.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ uint32_t load_streaming(const uint32_t* p) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// Loads from shared memory at a 32-bit shared-space address (as
// __cvta_generic_to_shared gives): the streaming kernel computes its ring's
// and x's addresses once, where a generic pointer would need the window's
// generic base at every load (with registers at the cap the compiler
// re-derives it each time). The ring's slots are written by cp.async, which
// the compiler does not see as a store to them: each load is asm volatile
// with a "memory" clobber, a compiler barrier like the cp.async asm (also
// volatile, also clobbering memory) and __syncwarp, so that a load is never
// moved before the cp.async.wait_group and __syncwarp that make its slot's
// contents visible, nor after the cp.async that refills the slot next. (On
// sm_90a the kernels' SASS is the same without the clobber.)
__device__ __forceinline__ uint32_t load_shared_u16(uint32_t address) {
  uint32_t r;  // zero-extended
  asm volatile("ld.shared.u16 %0, [%1];" : "=r"(r) : "r"(address) : "memory");
  return r;
}

__device__ __forceinline__ uint32_t load_shared_u32(uint32_t address) {
  uint32_t r;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(r) : "r"(address) : "memory");
  return r;
}

__device__ __forceinline__ uint2 load_shared_v2(uint32_t address) {
  uint2 r;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "r"(address) : "memory");
  return r;
}

__device__ __forceinline__ uint4 load_shared_v4(uint32_t address) {
  uint4 r;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "r"(address)
               : "memory");
  return r;
}

// The values of one group of kGroupEntries entries, loaded as 16-byte words.
template <typename scalar_t>
struct GroupValues {
  static constexpr int kWords = kGroupEntries * sizeof(scalar_t) / 16;
  static_assert(kWords >= 1, "a group's values must fill whole 16-byte words");
  uint4 words[kWords];

  __device__ __forceinline__ void load(const scalar_t* values, int64_t first) {
    const uint4* src = reinterpret_cast<const uint4*>(values + first);
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = load_streaming(src + w);
  }
  // The same from shared memory (a ring of the stream, warp_ring.cuh), at
  // the group's shared-space address.
  __device__ __forceinline__ void load_shared(uint32_t address) {
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = load_shared_v4(address + 16 * w);
  }
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int w = 0; w < kWords; ++w) words[w] = make_uint4(0, 0, 0, 0);
  }
  // Zeroes the entries whose bit in `mask` is clear.
  __device__ __forceinline__ void keep(unsigned mask) {
    scalar_t* entry = reinterpret_cast<scalar_t*>(words);
#pragma unroll
    for (int j = 0; j < kGroupEntries; ++j) {
      if (!((mask >> j) & 1u)) entry[j] = scalar_t(0);
    }
  }
  __device__ __forceinline__ float operator[](int j) const {
    return static_cast<float>(reinterpret_cast<const scalar_t*>(words)[j]);
  }
  // The first 4 bytes (experiment variants: something the loads produced).
  __device__ __forceinline__ uint32_t first_bits() const { return words[0].x; }
};

// The values of one group of 8-bit values (int8_t or c10::Float8_e4m3fn,
// the quantized matrices): 8 bytes, entry j in byte j % 4 of word j / 4. A
// zero byte is the value 0 in both types.
struct GroupBytes {
  uint2 word;

  __device__ __forceinline__ void load_shared(uint32_t address) { word = load_shared_v2(address); }
  __device__ __forceinline__ uint32_t first_bits() const { return word.x; }
  __device__ __forceinline__ void clear() { word = make_uint2(0, 0); }
  // Zeroes the entries whose bit in `mask` is clear.
  __device__ __forceinline__ void keep(unsigned mask) {
    uint32_t low = 0, high = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      low |= ((mask >> k) & 1u) * (0xFFu << (8 * k));
      high |= ((mask >> (k + 4)) & 1u) * (0xFFu << (8 * k));
    }
    word.x &= low;
    word.y &= high;
  }
};
template <>
struct GroupValues<int8_t> : GroupBytes {};
template <>
struct GroupValues<c10::Float8_e4m3fn> : GroupBytes {};

// A row's scale for dequantizing 8-bit values of type value_t into the
// activation type scalar_t (fp16 or bf16): the factor of the exactly
// converted q, as a float and (fp16) in both halves of a word. e4m3 values
// convert to q * 2^-8 (below), so their factor is 256 * scale: exact, and
// finite, since a valid scale is at most largest / 448 (validate).
template <typename scalar_t, typename value_t>
struct RowScale {
  float value;
  uint32_t pair;

  __device__ __forceinline__ explicit RowScale(float scale)
      : value(std::is_same_v<value_t, c10::Float8_e4m3fn> ? scale * 256.0f : scale), pair(0) {
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      const __half2 both = __float2half2_rn(value);  // exact: the scale is stored in fp16
      pair = *reinterpret_cast<const uint32_t*>(&both);
    }
  }
};

// A group of 8-bit values dequantized into the activation type: entry q of
// the row stands for q * scale rounded once to scalar_t, bit for bit what
// decompress gives (csrc/cpu/decompress.cpp, dequantize.cuh), so that
// every route multiplies the same matrix. No saturation: for a valid
// matrix every q * scale is finite (validate), and NaN propagates. Exact
// steps first; into fp16 on the integer and fp16 pipes only (no conversion
// instruction: those issue at a fraction of the rate, NOTES v13r-v13s):
//   int8 -> fp16: with the sign bit flipped a byte is u = q + 128; the half
//     with bits 0x6400 | u is 1024 + u, so subtracting 1152 gives q (one
//     byte permutation and one half2 subtraction a pair); then one half2
//     multiplication by the scale rounds q * scale once.
//   e4m3 -> fp16: q * 2^-8 by bits, every e4m3 value (subnormals too) an
//     fp16 one: a byte permutation sign-extends each byte into its half
//     (copies of the sign in bits 15..7, exponent and mantissa in bits
//     6..0), a shift by 7
//     moves exponent and mantissa into fp16's places (e4m3's exponent bias
//     is 7 against fp16's 15: hence 2^-8), and a mask clears the copies of
//     the sign; then one half2 multiplication by 256 * scale (RowScale)
//     rounds q * scale once. (e4m3's NaN bytes, which validate refuses,
//     come out finite.)
//   to bf16: q as a float (int8: 0x4B000000 | u is 2^23 + u; e4m3: its
//     fp16 pair widened), times the factor in fp32 (exact: 8 significant
//     bits times 8), rounded once when packed.
__device__ __forceinline__ uint32_t scaled_half_pair(uint32_t q_pair, uint32_t scale_pair) {
  uint32_t pair;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(pair) : "r"(q_pair), "r"(scale_pair));
  return pair;
}

__device__ __forceinline__ uint32_t bf16_pair(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// Bytes k and k + 1 (k = 0 or 2) of `word`, two e4m3 values, as the fp16
// pair of their values times 2^-8 (exact).
template <int k>
__device__ __forceinline__ uint32_t e4m3_half_pair(uint32_t word) {
  static_assert(k == 0 || k == 2, "a pair of bytes of a word");
  // Selector nibbles, low to high: byte k, its sign replicated (bit 3 of a
  // nibble), byte k + 1, its sign replicated.
  constexpr uint32_t kSelector = k == 0 ? 0x9180u : 0xB3A2u;
  uint32_t extended;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(extended) : "r"(word), "n"(kSelector));
  return (extended << 7) & 0xBF80BF80u;
}

// kScaled false (an experiment variant of the streaming kernel, whose row
// sums are scaled instead): q itself (e4m3: q * 2^-8), converted exactly.
template <typename scalar_t, bool kScaled = true>
__device__ __forceinline__ GroupValues<scalar_t> dequantized(const GroupValues<int8_t>& group,
                                                            const RowScale<scalar_t, int8_t>& scale) {
  static_assert(sizeof(scalar_t) == 2, "8-bit values dequantize into fp16 or bf16");
  GroupValues<scalar_t> out;
  uint32_t* pairs = &out.words[0].x;
  const uint32_t words[2] = {group.word.x ^ 0x80808080u, group.word.y ^ 0x80808080u};  // byte k: q_k + 128
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const uint32_t biased = words[p / 2];
    const int k = 2 * (p % 2);  // the pair's first byte in its word
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      constexpr uint32_t kOffset = 0x64806480u;  // 1152.0 in both halves
      uint32_t q = __byte_perm(biased, 0x64646464u, 0x4040 + k + ((k + 1) << 8));
      asm("sub.f16x2 %0, %0, %1;" : "+r"(q) : "r"(kOffset));
      pairs[p] = kScaled ? scaled_half_pair(q, scale.pair) : q;
    } else {
      constexpr float kOffset = 8388736.0f;  // 2^23 + 128
      const float low = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440 + k)) - kOffset;
      const float high = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440 + k + 1)) - kOffset;
      pairs[p] = kScaled ? bf16_pair(low * scale.value, high * scale.value) : bf16_pair(low, high);
    }
  }
  return out;
}

template <typename scalar_t, bool kScaled = true>
__device__ __forceinline__ GroupValues<scalar_t> dequantized(const GroupValues<c10::Float8_e4m3fn>& group,
                                                            const RowScale<scalar_t, c10::Float8_e4m3fn>& scale) {
  static_assert(sizeof(scalar_t) == 2, "8-bit values dequantize into fp16 or bf16");
  GroupValues<scalar_t> out;
  uint32_t* pairs = &out.words[0].x;
  const uint32_t q_pairs[4] = {e4m3_half_pair<0>(group.word.x), e4m3_half_pair<2>(group.word.x),
                               e4m3_half_pair<0>(group.word.y), e4m3_half_pair<2>(group.word.y)};
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const uint32_t q = q_pairs[p];
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      pairs[p] = kScaled ? scaled_half_pair(q, scale.pair) : q;
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&q));
      pairs[p] = kScaled ? bf16_pair(f.x * scale.value, f.y * scale.value) : bf16_pair(f.x, f.y);
    }
  }
  return out;
}

// Bits [lo, hi) of the 8 entries in the group starting at `first` that lie
// inside the row [begin, end). `index_t`: global (int64_t) or window-relative
// (int) entry numbers.
template <typename index_t>
__device__ __forceinline__ unsigned group_row_mask(index_t first, index_t begin, index_t end) {
  const index_t lo = begin - first;
  const index_t hi = end - first;
  const int lo_c = lo < 0 ? 0 : (lo > 8 ? 8 : static_cast<int>(lo));
  const int hi_c = hi < 0 ? 0 : (hi > 8 ? 8 : static_cast<int>(hi));
  return hi_c > lo_c ? ((1u << hi_c) - 1u) & ~((1u << lo_c) - 1u) : 0u;
}

// The column steps (delta + 1) of a lane's 8 entries, one byte each: even
// entries (0, 2, 4, 6) in `even`, odd ones in `odd`. Entries outside the row
// step by 0, so they repeat a neighbour's column and must be given value 0.
// Byte arithmetic (SWAR) keeps the decode at a few instructions per group:
// a row's column offsets within a group are at most 8 * 16 = 128.
struct GroupSteps {
  uint32_t even, odd;

  GroupSteps() = default;
  __device__ __forceinline__ GroupSteps(uint32_t nibbles, unsigned mask) {
    even = (nibbles & 0x0F0F0F0Fu) + 0x01010101u;
    odd = ((nibbles >> 4) & 0x0F0F0F0Fu) + 0x01010101u;
    if (mask != 0xFFu) {  // only a row's first and last groups
      uint32_t keep_even = 0, keep_odd = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        keep_even |= ((mask >> (2 * k)) & 1u) * (0xFFu << (8 * k));
        keep_odd |= ((mask >> (2 * k + 1)) & 1u) * (0xFFu << (8 * k));
      }
      even &= keep_even;
      odd &= keep_odd;
    }
  }

  // Byte k: offset of entry 2k + 1's column from the lane's base column
  // (the column before its first entry); byte 3 is the lane's total step.
  __device__ __forceinline__ uint32_t odd_offsets() const {
    uint32_t offsets = even + odd;
    offsets += offsets << 8;
    offsets += offsets << 16;
    return offsets;
  }
};

template <int k>
__device__ __forceinline__ unsigned byte_at(uint32_t word) {
  return __byte_perm(word, 0u, 0x4440u + k);
}

// v plus the v of the lane kOffset below (nothing for the lowest kOffset
// lanes), for a warp's inclusive scan: the shuffle's own predicate says
// whether that lane exists, so no lane comparison is computed (with
// registers at a kernel's cap the compiler recomputed those every scan).
template <int kOffset>
__device__ __forceinline__ uint32_t add_from_lane_below(uint32_t v) {
  asm("{\n\t.reg .pred p;\n\t.reg .b32 other;\n\t"
      "shfl.sync.up.b32 other|p, %0, %1, 0, -1;\n\t"
      "@p add.u32 %0, %0, other;\n\t}"
      : "+r"(v)
      : "n"(kOffset));
  return v;
}

// Base columns of kGroups (1 or 2) consecutive warp steps from the lanes'
// total steps, with one warp scan: the two totals (each at most 128, so the
// warp's at most 4096) share one 32-bit word. `prev_col` (warp-uniform, -1
// at a row's start) moves past both steps. Columns are unsigned so that a
// corrupted stream's columns wrap around (defined) instead of overflowing;
// the kernels clamp or test every column before using it.
template <int kGroups>
__device__ __forceinline__ void warp_group_bases(const uint32_t (&totals)[kGroups], unsigned& prev_col,
                                                 unsigned (&base)[kGroups]) {
  static_assert(kGroups == 1 || kGroups == 2, "one or two groups per scan");
  uint32_t packed = totals[0];
  if constexpr (kGroups == 2) packed |= totals[1] << 16;
  static_assert(kWarpSize == 32, "five scan levels");
  uint32_t inclusive = add_from_lane_below<1>(packed);
  inclusive = add_from_lane_below<2>(inclusive);
  inclusive = add_from_lane_below<4>(inclusive);
  inclusive = add_from_lane_below<8>(inclusive);
  inclusive = add_from_lane_below<16>(inclusive);
  const uint32_t warp_total = __shfl_sync(kFullMask, inclusive, kWarpSize - 1);
  const uint32_t exclusive = inclusive - packed;
  base[0] = prev_col + (exclusive & 0xFFFFu);
  if constexpr (kGroups == 2) {
    base[1] = prev_col + (warp_total & 0xFFFFu) + (exclusive >> 16);
    prev_col += (warp_total & 0xFFFFu) + (warp_total >> 16);
  } else {
    prev_col += warp_total;
  }
}

// Calls visit(j, offset) for the lane's 8 entries in order, offset = the
// entry's column minus the lane's base column (0 to 8 x 16 = 128; entries
// outside the row repeat a neighbour's offset).
template <typename Visit>
__device__ __forceinline__ void for_each_offset(const GroupSteps& steps, Visit&& visit) {
  const uint32_t odd_end = steps.odd_offsets();
  const uint32_t even_end = odd_end - steps.odd;  // no borrows: byte k >= odd's byte k
  visit(0, byte_at<0>(even_end));
  visit(1, byte_at<0>(odd_end));
  visit(2, byte_at<1>(even_end));
  visit(3, byte_at<1>(odd_end));
  visit(4, byte_at<2>(even_end));
  visit(5, byte_at<2>(odd_end));
  visit(6, byte_at<3>(even_end));
  visit(7, byte_at<3>(odd_end));
}

// Calls visit(j, col) for the lane's 8 entries in order, col = the entry's
// column (entries outside the row repeat a neighbour's column, or -1 before
// a row's first entry).
template <typename Visit>
__device__ __forceinline__ void for_each_column(const GroupSteps& steps, unsigned base, Visit&& visit) {
  for_each_offset(steps, [&](int j, unsigned offset) { visit(j, base + offset); });
}

// A lane's group, decoded: entry j's column is base + offset(j). Entries
// outside the row repeat a neighbour's offset (the caller skips them by the
// group's mask).
struct GroupColumns {
  unsigned base;      // the column before the lane's first entry
  uint32_t even_end;  // byte k: the offset of entry 2k
  uint32_t odd_end;   // byte k: the offset of entry 2k + 1; byte 3 the lane's total step

  __device__ __forceinline__ unsigned offset(int j) const {
    return __byte_perm(j % 2 ? odd_end : even_end, 0u, 0x4440u + j / 2);
  }
  __device__ __forceinline__ unsigned total() const { return odd_end >> 24; }
  __device__ __forceinline__ unsigned column(int j) const { return base + offset(j); }
};

// A lane's group of one warp step of a row's walk (one warp per row), loaded
// ahead of its decoding. Groups outside the row [begin, end) are not read
// (mask 0, all zero). index_t: global entry numbers (int64_t), or 32-bit
// ones relative to the row's first group with `values` and `nibble_words`
// moved there (the tile kernel: fewer instructions per load).
template <typename scalar_t, typename index_t = int64_t>
struct StepGroup {
  GroupValues<scalar_t> group;
  uint32_t nibbles;
  unsigned mask;  // the group's entries that belong to the row

  __device__ __forceinline__ void load(const scalar_t* values, const uint32_t* nibble_words, index_t first,
                                       index_t begin, index_t end) {
    mask = group_row_mask<index_t>(first, begin, end);
    group.clear();
    nibbles = 0;
    if (mask) fetch(values, nibble_words, first);
  }
  // The same for a group the caller knows to lie inside the row.
  __device__ __forceinline__ void load_inside(const scalar_t* values, const uint32_t* nibble_words, index_t first) {
    mask = 0xFFu;
    fetch(values, nibble_words, first);
  }
  // A group that overlaps the row starts at or after the row's first group,
  // so first >= 0 in both index conventions and first >> 3 is its ordinal.
  __device__ __forceinline__ void fetch(const scalar_t* values, const uint32_t* nibble_words, index_t first) {
    static_assert(kGroupEntries == 8, "first >> 3 is the group's ordinal");
    group.load(values, first);
    nibbles = load_streaming(nibble_words + (first >> 3));
  }

  // The columns of the lane's entries, with one warp scan; prev_col
  // (warp-uniform, ~0u before the row's first step) moves to the column of
  // the step's last entry.
  __device__ __forceinline__ GroupColumns decode_columns(unsigned& prev_col) const {
    const GroupSteps steps(nibbles, mask);
    GroupColumns columns;
    columns.odd_end = steps.odd_offsets();
    columns.even_end = columns.odd_end - steps.odd;  // no borrows: byte k >= odd's byte k
    const uint32_t totals[1] = {columns.total()};
    unsigned base[1];
    warp_group_bases(totals, prev_col, base);
    columns.base = base[0];
    return columns;
  }

  // The same as one column per entry, ~0u for entries outside the row.
  __device__ __forceinline__ void decode(unsigned& prev_col, unsigned (&col)[kGroupEntries]) const {
    const GroupColumns columns = decode_columns(prev_col);
#pragma unroll
    for (int j = 0; j < kGroupEntries; ++j) col[j] = ((mask >> j) & 1u) ? columns.column(j) : ~0u;
  }
};

}  // namespace cuda
}  // namespace macko
