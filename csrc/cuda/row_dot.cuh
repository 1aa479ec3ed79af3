// row_dot.cuh: the arithmetic of multiply: a warp's row sums of
// value x gathered x, for 1 to 8 right-hand sides, from the decoded groups
// (group_decode.cuh). Tensor cores for 16-bit values (mma.sync, sm_80+),
// fp32 FMAs otherwise.
#pragma once

#include <type_traits>

#include "group_decode.cuh"

namespace macko {
namespace cuda {
namespace multiply_impl {

// Where a one-vector kernel gathers x from: a generic pointer (x in global
// memory), or, for x in shared memory, its 32-bit shared-space address, so
// that each gathered element is one ld.shared at base + 2 col (with
// registers at the cap, a generic pointer into shared memory costs the
// re-derivation of the window's generic base before the gathers). The
// batch kernels take generic pointers.
template <typename scalar_t>
struct SharedVector {
  uint32_t address;
};

// The raw bits of x[col], 16-bit scalars.
template <typename scalar_t>
__device__ __forceinline__ uint32_t x_bits(const scalar_t* x, unsigned col) {
  static_assert(sizeof(scalar_t) == 2, "16-bit scalars");
  return reinterpret_cast<const unsigned short*>(x)[col];
}
template <typename scalar_t>
__device__ __forceinline__ uint32_t x_bits(SharedVector<scalar_t> x, unsigned col) {
  static_assert(sizeof(scalar_t) == 2, "16-bit scalars");
  return load_shared_u16(x.address + 2 * col);
}

// x as a generic pointer, for the FMA path's loads.
template <typename scalar_t>
__device__ __forceinline__ const scalar_t* x_pointer(const scalar_t* x) {
  return x;
}
template <typename scalar_t>
__device__ __forceinline__ const scalar_t* x_pointer(SharedVector<scalar_t> x) {
  return static_cast<const scalar_t*>(__cvta_shared_to_generic(x.address));
}

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
// their columns, and a corrupted stream's, inside x. The x of entries whose
// bit in `in_row` is clear counts as 0 too, so that an inf or NaN in x at
// their (a neighbour row's, or clamped) column does not make 0 * inf = NaN
// in this row.
template <typename scalar_t, int kBatch>
__device__ __forceinline__ void fma_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                          unsigned base, const scalar_t* x, unsigned last_col, unsigned in_row,
                                          float (&acc)[kBatch]) {
  for_each_column(steps, base, [&](int j, unsigned col) {
    float xv[kBatch];
    load_x<scalar_t, kBatch>(x, min(col, last_col), xv);
    if (!((in_row >> j) & 1u)) {
#pragma unroll
      for (int b = 0; b < kBatch; ++b) xv[b] = 0.0f;
    }
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
  // in_row: the group's entries that belong to the row (the others get no
  // weight, see fma_group). x: a pointer, or (one vector) a SharedVector.
  template <typename Vector>
  __device__ __forceinline__ void add_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                            unsigned base, const Vector& x, unsigned last_col, unsigned in_row) {
    fma_group(group, steps, base, x_pointer(x), last_col, in_row, acc);
  }
  // The warp's sum for right-hand side b (in every lane).
  __device__ __forceinline__ float total(int b, int /*lane*/) const { return warp_sum(acc[b]); }
};

// D += A B for one mma.m16n8k16 with 16-bit A and B and fp32 D (sm_80+).
template <typename scalar_t>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
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

// One right-hand side, 16-bit values: the tensor cores multiply and add.
// An mma.m16n8k16 computes D[m][n] += sum_k A[m][k] B[k][n]; lane l (group
// g = l / 4, t = l % 4) holds A[g][2t, 2t+1], A[g+8][2t, 2t+1],
// A[g][2t+8, 2t+9], A[g+8][2t+8, 2t+9] in its four A registers and
// B[2t, 2t+1][g], B[2t+8, 2t+9][g] in its two B registers: the same k for
// its A rows g, g+8 and its B column g. A lane puts the gathered x of its
// 8 entries in A as pairs {x01, x45, x23, x67} and the values of entries
// 0-3 in B ({v01, v23}): then D[g][g] gains x01.v01 + x23.v23 from each of
// lanes 4g..4g+3. With the same A and B = {v45, v67}, a second accumulator's
// D[g+8][g] gains x45.v45 + x67.v67. Products are exact and summed in the
// tensor cores' fp32 accumulators (not rounded to nearest at every add); the
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

  // in_row: the group's entries that belong to the row (the others get no
  // weight, see fma_group). x: a pointer, or a SharedVector.
  template <typename Vector>
  __device__ __forceinline__ void add_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                            unsigned base, const Vector& x, unsigned last_col, unsigned in_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    float acc[1] = {low[0]};
    fma_group(group, steps, base, x_pointer(x), last_col, in_row, acc);
    low[0] = acc[0];
#else
    uint32_t xs[kGroupEntries];
    for_each_column(steps, base, [&](int j, unsigned col) {
      xs[j] = (in_row >> j) & 1u ? x_bits(x, min(col, last_col)) : 0u;
    });
    const uint32_t a[4] = {__byte_perm(xs[0], xs[1], 0x5410), __byte_perm(xs[4], xs[5], 0x5410),
                           __byte_perm(xs[2], xs[3], 0x5410), __byte_perm(xs[6], xs[7], 0x5410)};
    const uint4 v = group.words[0];  // entries (0, 1), (2, 3), (4, 5), (6, 7) as pairs
    mma_16816<scalar_t>(low, a, v.x, v.y);
    mma_16816<scalar_t>(high, a, v.z, v.w);
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

// The raw bits of kBatch consecutive 16-bit scalars of x_t at one column,
// as kBatch / 2 words: word p holds right-hand sides 2p (low half) and
// 2p + 1 (high half). x_t rows are aligned to their width.
template <int kBatch>
__device__ __forceinline__ void load_x_pairs(const void* x_t, unsigned col, uint32_t (&out)[kBatch / 2]) {
  static_assert(kBatch == 2 || kBatch == 4 || kBatch == 8, "2, 4 or 8 right-hand sides");
  const char* row = static_cast<const char*>(x_t) + static_cast<size_t>(col) * kBatch * 2;
  if constexpr (kBatch == 8) {
    const uint4 w = *reinterpret_cast<const uint4*>(row);
    out[0] = w.x, out[1] = w.y, out[2] = w.z, out[3] = w.w;
  } else if constexpr (kBatch == 4) {
    const uint2 w = *reinterpret_cast<const uint2*>(row);
    out[0] = w.x, out[1] = w.y;
  } else {
    out[0] = *reinterpret_cast<const uint32_t*>(row);
  }
}

// 2, 4 or 8 right-hand sides of 16-bit values: the same diagonal trick,
// with A's rows g and g+8 holding two right-hand sides instead of two
// halves of the group. For the pair of right-hand sides (2p, 2p+1) a lane
// puts x of its entries 0-3 in A (a0 = x0, x1 of rhs 2p; a1 = the same of
// rhs 2p+1; a2, a3 likewise for entries 2, 3) and their values in B
// ({v01, v23}): D[g][g] gains the rhs-2p products of lanes 4g..4g+3 and
// D[g+8][g] the rhs-(2p+1) ones. A second mma with entries 4-7 ({v45, v67})
// adds to the same accumulator. Per group: kBatch mma, and one byte
// permutation per entry and pair of right-hand sides to pair up the
// gathered x; against 2 conversions and an FMA per entry and right-hand
// side on the FMA path. Products are exact and summed in fp32, as there.
template <typename scalar_t, int kBatch>
struct RowDot<scalar_t, kBatch, true> {
  static_assert(sizeof(scalar_t) == 2, "tensor-core dot products take 16-bit values");
  static constexpr int kPairs = kBatch / 2;
  // acc[p]: the mma accumulator of right-hand sides 2p and 2p + 1. On GPUs
  // without m16n8k16 (before sm_80) the FMA path keeps rhs 2p in
  // acc[p][0] and rhs 2p + 1 in acc[p][1].
  float acc[kPairs][4];

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[p][i] = 0.0f;
    }
  }

  // in_row: the group's entries that belong to the row (the others get no
  // weight, see fma_group).
  __device__ __forceinline__ void add_group(const GroupValues<scalar_t>& group, const GroupSteps& steps,
                                            unsigned base, const scalar_t* x, unsigned last_col, unsigned in_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    float sums[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) sums[b] = acc[b / 2][b % 2];
    fma_group(group, steps, base, x, last_col, in_row, sums);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) acc[b / 2][b % 2] = sums[b];
#else
    uint32_t xs[kGroupEntries][kPairs];
    for_each_column(steps, base, [&](int j, unsigned col) {
      load_x_pairs<kBatch>(x, min(col, last_col), xs[j]);
      if (!((in_row >> j) & 1u)) {
#pragma unroll
        for (int p = 0; p < kPairs; ++p) xs[j][p] = 0u;
      }
    });
    const uint4 v = group.words[0];  // entries (0, 1), (2, 3), (4, 5), (6, 7) as pairs
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      const uint32_t low[4] = {__byte_perm(xs[0][p], xs[1][p], 0x5410), __byte_perm(xs[0][p], xs[1][p], 0x7632),
                               __byte_perm(xs[2][p], xs[3][p], 0x5410), __byte_perm(xs[2][p], xs[3][p], 0x7632)};
      mma_16816<scalar_t>(acc[p], low, v.x, v.y);
      const uint32_t high[4] = {__byte_perm(xs[4][p], xs[5][p], 0x5410), __byte_perm(xs[4][p], xs[5][p], 0x7632),
                                __byte_perm(xs[6][p], xs[7][p], 0x5410), __byte_perm(xs[6][p], xs[7][p], 0x7632)};
      mma_16816<scalar_t>(acc[p], high, v.z, v.w);
    }
#endif
  }

  // Right-hand side b's row sum (b a compile-time constant in the caller's
  // unrolled loop). D[g][g] and D[g+8][g] are elements g % 2 and 2 + g % 2
  // of lane 4g + g/2's accumulator.
  __device__ __forceinline__ float total(int b, int lane) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    return warp_sum(acc[b / 2][b % 2]);
#else
    const float(&d)[4] = acc[b / 2];
    const int g = lane / 4;
    const float mine = b % 2 ? (g % 2 ? d[3] : d[2]) : (g % 2 ? d[1] : d[0]);
    return warp_sum(lane % 4 == g / 2 ? mine : 0.0f);
#endif
  }
};

// Tensor cores (mma.sync, sm_80+) for 16-bit values and up to 8
// right-hand sides; FMAs for fp32.
template <typename scalar_t, int kBatch>
constexpr bool kUseTensorCores = sizeof(scalar_t) == 2;

}  // namespace multiply_impl
}  // namespace cuda
}  // namespace macko
