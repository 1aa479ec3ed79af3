// segment_stream.cpp: a replica of the multiply phase of the CPU batch
// kernel (csrc/cpu/multiply_kernels.inc, Ops::batch_rows with
// accumulate_row<4>: AVX-512, a 64-wide tile of X^T), on synthetic data:
// 512 rows of `cols` columns, each column stored with probability 1/2,
// decoded entries laid out row after row as batch_rows lays them out.
// Prints TSC cycles per entry, the best of 15 rounds, the configurations
// given interleaved in each round (the machine's speed drifts).
//   g++ -O2 -mavx512f -mfma -o segment_stream segment_stream.cpp
//   ./segment_stream COLS  SHIFT BLOCK_ROWS MODE  [SHIFT BLOCK_ROWS MODE ...]
// SHIFT: log2 of the columns per column block; MODE: 0 as batch_rows (2
// phases), 1 the same with 4 phases, 2 one call per row over columns
// masked into the first 128 (no segments, tile in L1: the loop's floor),
// 3 segments as in 0 with columns masked into the first 128 (tile in L1),
// 4 segments copied block-major first (the copy timed too), 5 as 0 with
// row i+D's segment prefetched (D from the environment, default 2),
// 6 a broken variant (prefetches the unmasked copy; ignore).
#include <immintrin.h>
#include <x86intrin.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <random>
#include <cstring>
// replica of batch_rows' multiply phase (AVX-512, 64-wide tile)
template <int kVectors, int kPhases>
__attribute__((noinline)) void acc_row(const int32_t* cols, const float* vals, int64_t n, const float* tile, float* out) {
  constexpr int kWidth = 16 * kVectors;
  __m512 acc[kPhases][kVectors];
  for (int p = 0; p < kPhases; ++p) for (int v = 0; v < kVectors; ++v) acc[p][v] = p == 0 ? _mm512_loadu_ps(out + 16 * v) : _mm512_setzero_ps();
  int64_t e = 0;
  for (; e + kPhases <= n; e += kPhases) {
#pragma GCC unroll 8
    for (int p = 0; p < kPhases; ++p) {
      const float* row = tile + static_cast<int64_t>(cols[e + p]) * kWidth;
      const __m512 w = _mm512_set1_ps(vals[e + p]);
#pragma GCC unroll 4
      for (int v = 0; v < kVectors; ++v) acc[p][v] = _mm512_fmadd_ps(w, _mm512_load_ps(row + 16 * v), acc[p][v]);
    }
  }
  for (; e < n; ++e) {
    const float* row = tile + static_cast<int64_t>(cols[e]) * kWidth;
    const __m512 w = _mm512_set1_ps(vals[e]);
    for (int v = 0; v < kVectors; ++v) acc[0][v] = _mm512_fmadd_ps(w, _mm512_load_ps(row + 16 * v), acc[0][v]);
  }
  for (int v = 0; v < kVectors; ++v) {
    __m512 t = acc[0][v];
    for (int p = 1; p < kPhases; ++p) t = _mm512_add_ps(t, acc[p][v]);
    _mm512_storeu_ps(out + 16 * v, t);
  }
}

struct Data { std::vector<int32_t> cb; std::vector<float> vb; std::vector<int64_t> starts; };
double run(const Data& d, const float* tile, int cols, int shift, int brows, int mode, int rows) {
  const int nblocks = ((cols - 1) >> shift) + 1;
  std::vector<int32_t> bounds((size_t)rows * (nblocks + 1));
  for (int r = 0; r < rows; ++r) {
    const int32_t* c = d.cb.data() + d.starts[r]; int64_t n = d.starts[r + 1] - d.starts[r], e = 0;
    for (int q = 0; q <= nblocks; ++q) { while (e < n && c[e] < (q << shift)) ++e; bounds[(size_t)r * (nblocks + 1) + q] = e; }
  }
  static float* sums = (float*)aligned_alloc(64, 64 * 64 * 4);
  static std::vector<int32_t> masked; if (masked.empty()) { masked = d.cb; for (auto& c : masked) c &= 127; }
  uint64_t t0 = __rdtsc();
  if (mode == 2) { for (int r = 0; r < rows; ++r) acc_row<4, 2>(masked.data() + d.starts[r], d.vb.data() + d.starts[r], d.starts[r + 1] - d.starts[r], tile, sums + (r & 63) * 64); return double(__rdtsc() - t0) / (d.starts[rows]); }
  const int32_t* cbp = (mode == 3 || mode == 6) ? masked.data() : d.cb.data();
  if (mode == 4) {  // block-major copy of each row block, then stream
    static std::vector<int32_t> bc(d.cb.size()); static std::vector<float> bv(d.vb.size());
    uint64_t t1 = __rdtsc();
    for (int rb = 0; rb < rows; rb += brows) {
      int64_t base = d.starts[rb], o = base;
      std::vector<int64_t> segstart((size_t)nblocks * brows + 1);
      for (int q = 0; q < nblocks; ++q) for (int i = 0; i < brows; ++i) {
        const int r = rb + i; const int32_t* B = bounds.data() + (size_t)r * (nblocks + 1);
        segstart[(size_t)q * brows + i] = o;
        const int64_t n = B[q + 1] - B[q];
        std::memcpy(&bc[o], &d.cb[d.starts[r] + B[q]], n * 4); std::memcpy(&bv[o], &d.vb[d.starts[r] + B[q]], n * 4);
        o += n;
      }
      segstart[(size_t)nblocks * brows] = o;
      std::memset(sums, 0, sizeof(float) * 64 * 64);
      for (size_t k = 0; k < (size_t)nblocks * brows; ++k)
        acc_row<4, 2>(bc.data() + segstart[k], bv.data() + segstart[k], segstart[k + 1] - segstart[k], tile, sums + (k % brows) * 64);
    }
    return double(__rdtsc() - t1) / (d.starts[rows]);
  }
  for (int rb = 0; rb < rows; rb += brows) {
    std::memset(sums, 0, sizeof(float) * 64 * 64);
    for (int q = 0; q < nblocks; ++q)
      for (int i = 0; i < brows; ++i) {
        const int r = rb + i; const int32_t* B = bounds.data() + (size_t)r * (nblocks + 1);
        const int64_t e0 = d.starts[r] + B[q];
        if (mode >= 5) { static const int D = getenv("D") ? atoi(getenv("D")) : 2; if (i + D < brows) { const int32_t* B2 = bounds.data() + (size_t)(r + D) * (nblocks + 1); const int64_t p = d.starts[r + D] + B2[q];
          const char* a = (const char*)(d.cb.data() + p); const char* b = (const char*)(d.vb.data() + p); const int64_t bytes = (B2[q + 1] - B2[q]) * 4;
          for (int64_t l = 0; l < bytes + 63; l += 64) { _mm_prefetch(a + l, _MM_HINT_T0); _mm_prefetch(b + l, _MM_HINT_T0); } } }
        if (mode != 1) acc_row<4, 2>(cbp + e0, d.vb.data() + e0, B[q + 1] - B[q], tile, sums + i * 64);
        else acc_row<4, 4>(d.cb.data() + e0, d.vb.data() + e0, B[q + 1] - B[q], tile, sums + i * 64);
      }
  }
  return double(__rdtsc() - t0) / (d.starts[rows]);
}
int main(int argc, char** argv) {
  const int cols = atoi(argv[1]);
  const int rows = 512;
  std::mt19937 rng(1);
  Data d; d.starts.push_back(0);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) if (rng() & 1) { d.cb.push_back(c); d.vb.push_back(1.0f); }
    d.starts.push_back(d.cb.size());
  }
  d.cb.resize(d.cb.size() + 16); d.vb.resize(d.vb.size() + 16);
  float* tile = (float*)aligned_alloc(64, (size_t)cols * 64 * 4);
  for (size_t i = 0; i < (size_t)cols * 64; ++i) tile[i] = 0.5f;
  int nc = (argc - 2) / 3;
  std::vector<double> best(nc, 1e30);
  for (int round = 0; round < 15; ++round)
    for (int k = 0; k < nc; ++k)
      best[k] = std::min(best[k], run(d, tile, cols, atoi(argv[2 + 3 * k]), atoi(argv[3 + 3 * k]), atoi(argv[4 + 3 * k]), rows));
  for (int k = 0; k < nc; ++k) printf("cols %d shift %s brows %s mode %s: %.2f\n", cols, argv[2 + 3 * k], argv[3 + 3 * k], argv[4 + 3 * k], best[k]);
}
