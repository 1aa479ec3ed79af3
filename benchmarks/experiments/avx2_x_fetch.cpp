// avx2_x_fetch.cpp: how the AVX2 one-vector kernel should fetch x's values
// for a chunk of 8 entries, measured on one core (NOTES c5). A synthetic
// row stream (512 rows of 4096 entries, gaps drawn geometric for the
// density, fp16 values, L2/L3-resident) is multiplied by x with each way:
// a masked gather (the kernel before c5), an unmasked gather, eight scalar
// loads (the kernel since c5), a window of 32 floats picked by four
// permutes and blends (the AVX-512 kernel's idea), a window of 16 with that
// one past it, the window of 32 with scalar loads past it, two chunks an
// iteration with scalar loads and two sums, and no x at all (the decode's
// own cost).
//
//   g++ -O3 -mavx2 -mfma -mf16c -o /tmp/avx2_x_fetch benchmarks/experiments/avx2_x_fetch.cpp
//   for d in 0.7 0.5 0.3 0.2 0.1; do /tmp/avx2_x_fetch $d; done
//
// Prints the best of 7 passes in ns per entry.
#include <immintrin.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>

static inline __m128i nibble_prefix(uint32_t d) {
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i word = _mm_cvtsi32_si128(d);
  __m128i s = _mm_unpacklo_epi8(_mm_and_si128(word, low), _mm_and_si128(_mm_srli_epi16(word, 4), low));
  s = _mm_add_epi8(s, _mm_slli_si128(s, 1));
  s = _mm_add_epi8(s, _mm_slli_si128(s, 2));
  s = _mm_add_epi8(s, _mm_slli_si128(s, 4));
  return s;
}
static inline int64_t nibble_sum(uint64_t d) {
  const uint64_t pairs = (d & 0x0F0F0F0F0F0F0F0Full) + ((d >> 4) & 0x0F0F0F0F0F0F0F0Full);
  return static_cast<int64_t>((pairs * 0x0101010101010101ull) >> 56);
}
static inline float hsum(__m256 sum) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// The columns of a chunk of 8 with gap nibbles d after column base.
static inline __m256i chunk_columns(uint32_t d, int64_t base) {
  const __m256i steps = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8);
  return _mm256_add_epi32(_mm256_cvtepu8_epi32(nibble_prefix(d)), _mm256_add_epi32(steps, _mm256_set1_epi32((int32_t)base)));
}

// x[columns] by eight scalar loads.
static inline __m256 scalar_loads(const float* x, __m256i columns) {
  alignas(32) int32_t c[8];
  _mm256_store_si256((__m256i*)c, columns);
  return _mm256_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]], x[c[4]], x[c[5]], x[c[6]], x[c[7]]);
}

// w[rel] for rel < 32: four permutes of the window's registers, blended by
// the index bits 3 and 4.
static inline __m256 window32(const float* w, __m256i rel) {
  const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(w), rel);
  const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(w + 8), rel);
  const __m256 c = _mm256_permutevar8x32_ps(_mm256_loadu_ps(w + 16), rel);
  const __m256 e = _mm256_permutevar8x32_ps(_mm256_loadu_ps(w + 24), rel);
  const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(rel, 28));
  const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(rel, 27));
  return _mm256_blendv_ps(_mm256_blendv_ps(a, b, bit3), _mm256_blendv_ps(c, e, bit3), bit4);
}

template <int kMode>
float row(const uint16_t* vals, const uint8_t* deltas, int64_t n, const float* x) {
  __m256 sum = _mm256_setzero_ps(), sum2 = _mm256_setzero_ps();
  int64_t base = -1;
  for (int64_t k0 = 0; k0 < n; k0 += 8) {
    uint32_t d;
    std::memcpy(&d, deltas + k0 / 2, 4);
    const __m256i columns = chunk_columns(d, base);
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vals + k0)));
    // The window modes' columns relative to the one after base (the modes
    // that do not read them compile them away).
    const float* w = x + base + 1;
    const __m256i rel = _mm256_sub_epi32(columns, _mm256_set1_epi32((int32_t)(base + 1)));
    const int rel_max = _mm256_extract_epi32(rel, 7);
    __m256 xs;
    if constexpr (kMode == 0) {  // masked gather, as the library before c5
      const __m256 mask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(1 << 30), columns));
      xs = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, columns, mask, 4);
    } else if constexpr (kMode == 1) {  // unmasked gather
      xs = _mm256_i32gather_ps(x, columns, 4);
    } else if constexpr (kMode == 2) {  // scalar loads
      xs = scalar_loads(x, columns);
    } else if constexpr (kMode == 3) {  // window of 32 floats after base: 4 vpermps + blends
      if (rel_max < 32) {
        xs = window32(w, rel);
      } else {
        xs = _mm256_i32gather_ps(x, columns, 4);
      }
    } else if constexpr (kMode == 4) {  // window of 16 floats: 2 vpermps + 1 blend
      if (rel_max < 16) {
        const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(w), rel);
        const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(w + 8), rel);
        xs = _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(rel, 28)));
      } else if (rel_max < 32) {
        xs = window32(w, rel);
      } else {
        xs = _mm256_i32gather_ps(x, columns, 4);
      }
    } else if constexpr (kMode == 6) {  // window of 32, scalar loads past it
      if (__builtin_expect(rel_max < 32, 1)) {
        xs = window32(w, rel);
      } else {
        xs = scalar_loads(x, columns);
      }
    } else {  // no x: values only
      xs = _mm256_castsi256_ps(columns);
    }
    if (k0 & 8) sum2 = _mm256_fmadd_ps(v, xs, sum2); else sum = _mm256_fmadd_ps(v, xs, sum);
    base += nibble_sum(d) + 8;
  }
  return hsum(_mm256_add_ps(sum, sum2));
}

// Two chunks an iteration (16 entries; n a multiple of 16), scalar loads,
// two sums: the chunks' decodes are independent but for the base column.
float row_pairs(const uint16_t* vals, const uint8_t* deltas, int64_t n, const float* x) {
  __m256 sum = _mm256_setzero_ps(), sum2 = _mm256_setzero_ps();
  int64_t base = -1;
  for (int64_t k0 = 0; k0 < n; k0 += 16) {
    uint64_t d;
    std::memcpy(&d, deltas + k0 / 2, 8);
    const uint32_t lo = static_cast<uint32_t>(d), hi = static_cast<uint32_t>(d >> 32);
    const int64_t base_hi = base + nibble_sum(lo) + 8;
    const __m256i c0 = chunk_columns(lo, base);
    const __m256i c1 = chunk_columns(hi, base_hi);
    const __m256 v0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vals + k0)));
    const __m256 v1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(vals + k0 + 8)));
    sum = _mm256_fmadd_ps(v0, scalar_loads(x, c0), sum);
    sum2 = _mm256_fmadd_ps(v1, scalar_loads(x, c1), sum2);
    base = base_hi + nibble_sum(hi) + 8;
  }
  return hsum(_mm256_add_ps(sum, sum2));
}

int main(int argc, char** argv) {
  const double density = argc > 1 ? atof(argv[1]) : 0.5;
  const int rows = 512, per_row = 4096;
  std::mt19937 gen(1);
  std::geometric_distribution<int> gap(density);
  std::vector<uint8_t> deltas(rows * per_row / 2);
  std::vector<uint16_t> vals(rows * per_row, 0x3C00);
  int64_t max_col = 0;
  for (int r = 0; r < rows; ++r) {
    int64_t col = -1;
    for (int i = 0; i < per_row; ++i) {
      int g = std::min(gap(gen), 15);
      col += g + 1;
      int64_t k = (int64_t)r * per_row + i;
      deltas[k / 2] |= g << (4 * (k & 1));
    }
    max_col = std::max(max_col, col);
  }
  std::vector<float> x(max_col + 64, 1.0f);
  printf("density %.2f: cols %lld, entries %d\n", density, (long long)max_col + 1, rows * per_row);
  auto run = [&](auto fn, const char* name) {
    float s = 0;
    double best = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < rows; ++r) s += fn(vals.data() + (int64_t)r * per_row, deltas.data() + (int64_t)r * per_row / 2, per_row, x.data());
      double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, ns / (rows * per_row));
    }
    printf("  %-16s %.3f ns/entry (%g)\n", name, best, s);
  };
  run(row<0>, "masked gather");
  run(row<1>, "gather");
  run(row<2>, "scalar loads");
  run(row<3>, "window 32");
  run(row<4>, "window 16/32");
  run(row<6>, "window32+scalar");
  run(row_pairs, "pairs, scalar");
  run(row<5>, "no x");
}
