// multiply on the CPU: Y = X M^T (+ bias) for one or more right-hand sides
// (x [cols] or X [batch, cols]), fp32 sums, parallel over rows
// (at::parallel_for, parallel in code compiled with OpenMP: setup.py adds
// -fopenmp). The bias joins each fp32 sum where it is rounded to the
// output (Ops::store_rows), not in a pass of its own.
//
// 8-bit values (int8, float8_e4m3fn; docs/FORMAT.md): the same kernels,
// instantiated for the stored value type beside the activation type of x
// and y. Each row's values come from a table of the 256 values its bytes
// stand for (Ops::row_table): q * the row's scale, rounded
// once to the activation type (cpu::dequantize in stored_values.h, what
// decompress writes), so that multiply(A, x) is decompress(A)'s product on
// every route, as on the GPU; the row's fp32 sum is not scaled after.
//
// Three routes (multiply_kernels.inc has the kernels and how they decode
// the stream):
//   vector  Ops::kVectorBatch right-hand sides a pass (4 with AVX-512,
//           else 1; a few passes for a small batch at high density): x
//           converted to fp32 once, each row's chunks of entries
//           multiplied by x's values at their columns, summed in vector
//           lanes.
//   sparse  a batch: X transposed to fp32 tiles of up to 64 right-hand
//           sides, each block of rows decoded once, every entry adding
//           value * (its column's row of the tile) to register tiles.
//   dense   a large batch at high density: tiles of rows decompressed into a
//           dense fp32 scratch and multiplied by torch's CPU BLAS (at::mm),
//           more work per element but at a higher rate.
// choose_route() picks one per call from the batch, the stored fraction and
// the two batch routes' costs on this CPU, measured once per process
// (route_costs); MACKO_CPU_MULTIPLY_ROUTE=vector|sparse|
// dense forces one, for tests and comparisons, as MACKO_CPU_SPARSE_LOOKUP=
// gather|window does the vector kernel's lookup of x for its sparsest rows
// (gather_sparse_rows).
//
// Every route sums over the stored entries only: a stored zero (padding)
// times Inf or NaN in x is NaN, a column a row does not store adds nothing.
// (The dense scratch holds every zero, so with Inf or NaN in x the dense
// route is replaced by the sparse one.) The vector and sparse routes sum
// each row on one thread in a fixed order, so their results do not depend
// on the thread count; BLAS's may.
//
// The kernels exist once per instruction-set variant (kernel_variants.h:
// baseline, AVX2, AVX-512, the best the CPU runs, MACKO_CPU_KERNELS caps it).
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "kernel_variants.h"
#include "row_walk.h"
#include "stored_values.h"

namespace macko {
namespace {

using cpu::Kernels;

// The vector kernels keep columns in 32-bit lanes (plus a chunk's 256 of
// headroom); wider matrices use the baseline kernels.
constexpr int64_t kMaxVectorCols = (int64_t{1} << 31) - 1024;

// A compressed matrix as the kernels read it (scalar_t: the stored values'
// type, 8-bit ones included).
template <typename scalar_t, typename index_t>
struct Stream {
  const scalar_t* values;
  const uint8_t* deltas;
  const index_t* row_indices;
  int64_t n_entries;  // values.numel(): a multiple of kGroupEntries
  int64_t cols;
};

template <typename T>
inline T bit_cast_to(const void* p) {
  T t;
  std::memcpy(&t, p, sizeof(T));
  return t;
}

// A value as float without branches (the baseline kernels' conversion).
// fp16: normal numbers, Inf and NaN by rebiasing the exponent in integer
// arithmetic; subnormals (and zero) as their integer mantissa times 2^-24,
// an exact product of normal floats; a mask selects one of the two.
// (8-bit values have no value of their own: see stored_to_float.)
template <typename scalar_t>
inline float value_to_float(scalar_t v) {
  static_assert(!cpu::kIsByteValue<scalar_t>, "8-bit values are read through their row's table");
  if constexpr (std::is_same_v<scalar_t, float>) {
    return v;
  } else {
    const uint32_t h = bit_cast_to<uint16_t>(&v);
    uint32_t bits;
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      bits = h << 16;
    } else {
      const uint32_t magnitude = h & 0x7FFFu;
      uint32_t normal = (magnitude << 13) + 0x38000000u;                    // exponent + (127 - 15)
      normal += static_cast<uint32_t>(magnitude >= 0x7C00u) * 0x38000000u;  // Inf/NaN: exponent 255
      const float tiny = static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-24f;
      const uint32_t is_tiny = 0u - static_cast<uint32_t>(magnitude < 0x400u);
      bits = ((h & 0x8000u) << 16) | (is_tiny & bit_cast_to<uint32_t>(&tiny)) | (~is_tiny & normal);
    }
    return bit_cast_to<float>(&bits);
  }
}

// A stored value of a row as float: for 8-bit values its byte's entry of
// the row's table (Ops::row_table), else value_to_float.
template <typename scalar_t>
inline float stored_to_float(scalar_t v, const float* table) {
  if constexpr (cpu::kIsByteValue<scalar_t>) {
    uint8_t byte;
    std::memcpy(&byte, &v, 1);
    return table[byte];
  } else {
    (void)table;
    return value_to_float(v);
  }
}

// Scratch memory of the calling thread, reused across calls (the OpenMP
// pool's threads live as long as the process): slot's buffer grown to at
// least count elements, uninitialised, 64-byte aligned. Saves an
// allocation and a page-fault-and-zero pass per call, which dominate the
// small products of a model's layers.
template <typename T>
T* thread_scratch(int slot, int64_t count) {
  struct Buffer {
    std::unique_ptr<unsigned char[]> data;
    size_t bytes = 0;
  };
  thread_local Buffer buffers[4];
  Buffer& buffer = buffers[slot];
  const size_t bytes = static_cast<size_t>(count) * sizeof(T) + 64;
  if (buffer.bytes < bytes) {
    buffer.data.reset(new unsigned char[bytes]);
    buffer.bytes = bytes;
  }
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(buffer.data.get()) + 63) & ~uintptr_t{63});
}

namespace baseline {
#define MACKO_MULTIPLY_ISA 0
#include "multiply_kernels.inc"
#undef MACKO_MULTIPLY_ISA
}  // namespace baseline

#if MACKO_CPU_X86_DISPATCH
MACKO_CPU_BEGIN_AVX2
namespace avx2 {
#define MACKO_MULTIPLY_ISA 1
#include "multiply_kernels.inc"
#undef MACKO_MULTIPLY_ISA
}  // namespace avx2
MACKO_CPU_END_TARGET
MACKO_CPU_BEGIN_AVX512
// GCC 12 warns that the AVX-512 headers' own _mm512_undefined_* values are
// (or may be) used uninitialized where their intrinsics inline: a false
// positive (the values are placeholders the instructions overwrite).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {
#define MACKO_MULTIPLY_ISA 2
#include "multiply_kernels.inc"
#undef MACKO_MULTIPLY_ISA
}  // namespace avx512
#pragma GCC diagnostic pop
MACKO_CPU_END_TARGET
#endif  // MACKO_CPU_X86_DISPATCH

// Calls f(Ops{}) with the Ops of the chosen variant.
template <typename F>
void with_kernels(Kernels kernels, F&& f) {
#if MACKO_CPU_X86_DISPATCH
  if (kernels == Kernels::kAvx512) return f(avx512::Ops{});
  if (kernels == Kernels::kAvx2) return f(avx2::Ops{});
#endif
  (void)kernels;
  f(baseline::Ops{});
}

// fp32 subnormals among the right-hand sides (from fp32 or bf16 x; fp16
// values are all normal as fp32) make every FMA that reads one take a
// microcode assist: ~30x slower on the Intel cores this was measured on.
// Flushing them (DAZ) would change the results; instead, when x holds
// subnormals and no finite value of 2^64 or more, the kernels multiply x
// scaled by 2^24 (exact: every subnormal becomes normal, no value nears
// overflow) and scale the results back by 2^-24.
constexpr float kSubnormalScale = 0x1p24f;

// The factor the results need if x[0, n) is to be scaled (1 if not).
inline float subnormal_rescale(const float* x, int64_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(x);
  uint32_t subnormal = 0, large = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t exponent = bits[i] & 0x7F800000u;
    subnormal |= static_cast<uint32_t>(exponent == 0) & static_cast<uint32_t>((bits[i] & 0x007FFFFFu) != 0);
    large |= static_cast<uint32_t>(exponent >= (127u + 64u) << 23) & static_cast<uint32_t>(exponent != 0x7F800000u);
  }
  return subnormal && !large ? 1.0f / kSubnormalScale : 1.0f;
}

// x[0, n) *= kSubnormalScale, without arithmetic on subnormals (which is
// what is being avoided): normal numbers gain 24 in the exponent field, a
// subnormal's mantissa becomes the float mantissa * 2^-125.
inline void scale_up(float* x, int64_t n) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(x);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = bits[i], exponent = b & 0x7F800000u;
    const float tiny = static_cast<float>(static_cast<int32_t>(b & 0x007FFFFFu)) * 0x1p-125f;
    const uint32_t scaled_tiny = bit_cast_to<uint32_t>(&tiny) | (b & 0x80000000u);
    const uint32_t scaled = exponent == 0x7F800000u ? b : b + (24u << 23);
    bits[i] = exponent == 0 ? scaled_tiny : scaled;
  }
}

enum class Route { kVector, kSparse, kDense };

// Bytes of the dense route's fp32 scratch (a tile of rows): big enough for
// BLAS to run at full rate, small enough to stay out of the way.
constexpr int64_t kDenseScratchBytes = int64_t{16} << 20;

// The sparse and dense routes' costs on this CPU, in seconds: a per stored
// entry and tile of Ops::kTileWidth right-hand sides (the sparse kernel's
// register tile), g per dense element and right-hand side (BLAS), z per
// dense element once a call (decompressing into the scratch, converting).
struct RouteCosts {
  double a, g, z;
};

template <typename Ops>
const RouteCosts& route_costs();  // measured once per process, below the routes

// The stored entries (padding included) per element of the matrix: what
// the routes' choices and the sparse route's column blocks go by.
inline double stored_fraction_of(int64_t stored, int64_t rows, int64_t cols) {
  return static_cast<double>(stored) / (static_cast<double>(rows) * static_cast<double>(cols));
}

// The route for a batch of right-hand sides (see the top of the file).
template <typename Ops>
Route choose_route(int64_t batch, int64_t rows, int64_t cols, int64_t stored) {
  const char* forced = std::getenv("MACKO_CPU_MULTIPLY_ROUTE");
  if (forced != nullptr && forced[0] != '\0') {
    if (std::strcmp(forced, "vector") == 0) return Route::kVector;
    if (std::strcmp(forced, "sparse") == 0) return Route::kSparse;
    if (std::strcmp(forced, "dense") == 0) return Route::kDense;
    TORCH_CHECK_VALUE(false, "MACKO_CPU_MULTIPLY_ROUTE must be vector, sparse or dense (or unset), got '", forced,
                      "'");
  }
  const double stored_fraction = stored_fraction_of(stored, rows, cols);
  // The vector kernel's cost grows with each right-hand side, the sparse
  // kernel's hardly up to 16; at low density (the vector kernel's widest
  // windows) two vectors already cost as much as the batch kernel.
  if (batch <= Ops::kVectorBatch && (batch <= 2 || stored_fraction >= 0.25)) return Route::kVector;
  // With passes of 4 (AVX-512), 5 or 6 at 45% stored or more: two vector
  // passes over each block of rows (the second reads its stream from L2)
  // cost 16-26% less than the sparse kernel (an EPYC, 8192^2 fp16 at 50%,
  // three runs: 13.0-16.7 ms at 5, 14.4-14.7 at 6, against 16.9-22.7 and
  // 17.1-18.1); at 40% they are level, at 25% the sparse kernel wins, and
  // at 7 right-hand sides the margin is 7-11% at 50% but the sparse
  // kernel's at 40% (benchmarks/NOTES.md, c14). Measured where passes are
  // of 4 only.
  if (Ops::kVectorBatch == 4 && batch <= 6 && stored_fraction >= 0.45) return Route::kVector;
  // Per dense element, the sparse route costs stored_fraction * a per tile
  // of right-hand sides, the dense route g per right-hand side plus z. The
  // ratios differ between CPUs by more than the densities that matter: on
  // the 2-core Xeon (AVX-512, fast BLAS) the sparse route won below ~0.30 +
  // 64 / batch stored, on a 2-core EPYC (slower BLAS) at 0.5 stored up to
  // 1024 right-hand sides and beyond (benchmarks/NOTES.md, c11), so the
  // costs are measured on this CPU (route_costs).
  const RouteCosts& c = route_costs<Ops>();
  const double tiles = static_cast<double>(batch) / Ops::kTileWidth;
  return stored_fraction * c.a * tiles < c.g * static_cast<double>(batch) + c.z ? Route::kSparse : Route::kDense;
}

// X [batch, cols] (scalar_t) -> X^T in fp32, in the batch kernel's tiles
// (Ops::tile_width). Blocks of columns, so that reads and writes stay in
// cache lines.
template <typename Ops, typename scalar_t>
void transpose_to_tiles(const scalar_t* x, int64_t batch, int64_t cols, float* xt) {
  constexpr int64_t kBlockCols = 64;
  const int64_t blocks = (cols + kBlockCols - 1) / kBlockCols;
  const int64_t last = (batch - 1) / Ops::kTileWidth * Ops::kTileWidth;  // the last tile
  const int64_t last_width = Ops::tile_width(batch, last);
  at::parallel_for(0, blocks, std::max<int64_t>(1, 32768 / (batch * kBlockCols)), [&](int64_t q0, int64_t q1) {
    float converted[kBlockCols];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t c0 = q * kBlockCols;
      const int64_t width = std::min(kBlockCols, cols - c0);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t j0 = b / Ops::kTileWidth * Ops::kTileWidth;
        const int64_t tile_width = Ops::tile_width(batch, j0);
        float* tile = xt + j0 * cols + (b - j0);
        Ops::to_float(x + b * cols + c0, width, converted);
        for (int64_t c = 0; c < width; ++c) tile[(c0 + c) * tile_width] = converted[c];
      }
      for (int64_t c = c0; c < c0 + width; ++c) {  // the last tile's padding
        float* row = xt + last * cols + c * last_width;
        std::fill(row + (batch - last), row + last_width, 0.0f);
      }
    }
  });
}

// Each route writes y = x M^T + bias (scales: the rows' scales of 8-bit
// values, which the kernels' row tables take; bias: fp32; each null for
// none). scalar_t: x's and y's type,
// value_t: the stored values'.
// gather_sparse: how the AVX-512 kernel looks up x for its sparsest rows
// (gather_sparse_rows); the other kernels ignore it.
template <typename Ops, typename scalar_t, typename value_t, typename index_t>
void multiply_vector(const Stream<value_t, index_t>& s, const at::Tensor& x, int64_t batch, int64_t rows,
                     const float* scales, const float* bias, scalar_t* y, bool gather_sparse) {
  // x as fp32, each right-hand side followed by the zeros that the kernels
  // may read past its end, and starting where their loads are aligned (the
  // allocator's 64-byte alignment, a stride of whole kXAlign floats).
  const int64_t x_stride = (s.cols + Ops::kXPadding + Ops::kXAlign - 1) / Ops::kXAlign * Ops::kXAlign;
  at::Tensor converted = at::empty({batch * x_stride}, x.options().dtype(at::kFloat));
  float* x32 = converted.mutable_data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    Ops::to_float(x.const_data_ptr<scalar_t>() + b * s.cols, s.cols, x32 + b * x_stride);
    std::fill(x32 + b * x_stride + s.cols, x32 + (b + 1) * x_stride, 0.0f);
  }
  float out_scale = 1.0f;
  if constexpr (!std::is_same_v<scalar_t, c10::Half>) {
    out_scale = subnormal_rescale(x32, batch * x_stride);
    if (out_scale != 1.0f) scale_up(x32, batch * x_stride);
  }
  at::parallel_for(0, rows, row_grain(s.cols), [&](int64_t r0, int64_t r1) {
    Ops::vector_rows(s, x32, x_stride, batch, gather_sparse, out_scale, scales, bias, r0, r1, y, rows);
  });
}

// Bytes of X^T's column block in the sparse route (Ops::batch_rows), for a
// batch of `tiles` tiles of right-hand sides: 32 KB (the L1 of the CPUs
// measured: there smaller blocks were slower, and larger ones too), but
// for a batch of one tile, where more than 30% of the matrix is stored,
// doubled as the stored fraction halves, up to 256 KB: 32 KB times the
// largest power of two k <= 8 with k * stored_fraction <= 0.6. At low
// density a row's part of a 32 KB block holds few entries, and the cost
// of each (row, block) pair (its loop exits, its sums' loads and stores;
// ~90 cycles) outweighs the L2 hits of a larger block; with several tiles
// the larger blocks lost instead (an EPYC at 10% stored: +5% at 256
// right-hand sides, +24-50% at 512-1024; benchmarks/NOTES.md, c13).
inline int64_t default_column_block_bytes(double stored_fraction, int64_t tiles) {
  int64_t k = 1;
  while (tiles == 1 && k < 8 && 2 * k * stored_fraction <= 0.6) k *= 2;
  return 32768 * k;
}

// The above, or MACKO_CPU_COLUMN_BLOCK_BYTES=<bytes> (read on every call,
// for comparisons).
inline int64_t column_block_bytes(double stored_fraction, int64_t tiles) {
  const char* setting = std::getenv("MACKO_CPU_COLUMN_BLOCK_BYTES");
  if (setting != nullptr && setting[0] != '\0') {
    char* end = nullptr;
    const long long bytes = std::strtoll(setting, &end, 10);
    TORCH_CHECK_VALUE(*end == '\0' && bytes > 0 && bytes <= (int64_t{1} << 30),
                      "MACKO_CPU_COLUMN_BLOCK_BYTES must be a number of bytes from 1 to 2^30 (or unset), got '",
                      setting, "'");
    return bytes;
  }
  return default_column_block_bytes(stored_fraction, tiles);
}

template <typename Ops, typename scalar_t, typename value_t, typename index_t>
void multiply_sparse(const Stream<value_t, index_t>& s, const at::Tensor& x, int64_t batch, int64_t rows,
                     const float* scales, const float* bias, int64_t column_block_bytes, scalar_t* y) {
  at::Tensor xt = at::empty({Ops::round_up_lanes(batch) * s.cols}, x.options().dtype(at::kFloat));
  float* xtp = xt.mutable_data_ptr<float>();
  transpose_to_tiles<Ops>(x.const_data_ptr<scalar_t>(), batch, s.cols, xtp);
  float out_scale = 1.0f;
  if constexpr (!std::is_same_v<scalar_t, c10::Half>) {
    out_scale = subnormal_rescale(xtp, xt.numel());
    if (out_scale != 1.0f) scale_up(xtp, xt.numel());
  }
  at::parallel_for(0, rows, row_grain(s.cols),
                   [&](int64_t r0, int64_t r1) {
                     Ops::batch_rows(s, xtp, batch, out_scale, scales, bias, column_block_bytes, r0, r1, y, rows);
                   });
}

template <typename Ops, typename scalar_t, typename value_t, typename index_t>
void multiply_dense(const Stream<value_t, index_t>& s, const at::Tensor& x, int64_t batch, int64_t rows,
                    const float* scales, const float* bias, at::Tensor& y) {
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor x32 = x;
  at::Tensor y32 = y;
  if constexpr (!std::is_same_v<scalar_t, float>) {
    x32 = at::empty({batch, s.cols}, f32);
    y32 = at::empty({batch, rows}, f32);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    float* x32p = x32.mutable_data_ptr<float>();
    at::parallel_for(0, batch, row_grain(s.cols), [&](int64_t b0, int64_t b1) {
      Ops::to_float(xp + b0 * s.cols, (b1 - b0) * s.cols, x32p + b0 * s.cols);
    });
  }
  float out_scale = 1.0f;
  if constexpr (!std::is_same_v<scalar_t, c10::Half>) {
    out_scale = subnormal_rescale(x32.const_data_ptr<float>(), x32.numel());
    if (out_scale != 1.0f) {
      if (x32.is_same(x)) x32 = x.clone();
      scale_up(x32.mutable_data_ptr<float>(), x32.numel());
    }
  }
  const int64_t tile_rows = std::clamp<int64_t>(kDenseScratchBytes / (4 * s.cols), 1, rows);
  at::Tensor tile = at::empty({tile_rows, s.cols}, f32);
  float* tp = tile.mutable_data_ptr<float>();
  for (int64_t t0 = 0; t0 < rows; t0 += tile_rows) {
    const int64_t t1 = std::min(rows, t0 + tile_rows);
    at::parallel_for(t0, t1, row_grain(s.cols),
                     [&](int64_t r0, int64_t r1) { Ops::template decompress_rows<scalar_t>(s, scales, r0, r1, tp + (r0 - t0) * s.cols);
                     });
    at::Tensor out = y32.narrow(1, t0, t1 - t0);
    at::mm_out(out, x32, tile.narrow(0, 0, t1 - t0).t());
  }
  // The bias and the rounding to scalar_t in one pass over y32 (in place
  // for fp32, where y32 is y); none is needed for fp32 without a bias or
  // out_scale.
  if (!std::is_same_v<scalar_t, float> || out_scale != 1.0f || bias != nullptr) {
    float* y32p = y32.mutable_data_ptr<float>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, row_grain(rows), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) Ops::store_rows(y32p + b * rows, rows, out_scale, bias, yp + b * rows);
    });
  }
}

// The two calibrations below share these. A synthetic fp32 stream in the
// format's layout, each row's column steps (1..16) drawn from next_step:
// values 0.5, the stream padded to whole groups.
struct SyntheticStream {
  std::vector<float> values;
  std::vector<uint8_t> deltas;
  std::vector<int32_t> row_indices{0};
  int64_t cols;

  template <typename NextStep>
  SyntheticStream(int64_t rows, int64_t cols_, NextStep&& next_step) : cols(cols_) {
    std::vector<uint8_t> nibbles;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t col = -1;;) {
        const int64_t step = next_step();
        if (col + step >= cols) break;
        col += step;
        values.push_back(0.5f);
        nibbles.push_back(static_cast<uint8_t>(step - 1));
      }
      row_indices.push_back(static_cast<int32_t>(values.size()));
    }
    while (values.size() % 8 != 0) {  // the stream's padding: value 0, delta 0
      values.push_back(0.0f);
      nibbles.push_back(0);
    }
    deltas.resize(nibbles.size() / 2);
    for (size_t k = 0; k < deltas.size(); ++k) deltas[k] = static_cast<uint8_t>(nibbles[2 * k] | nibbles[2 * k + 1] << 4);
  }
  Stream<float, int32_t> stream() const {
    return {values.data(), deltas.data(), row_indices.data(), static_cast<int64_t>(values.size()), cols};
  }
};

// Seconds of the fastest of `rounds` runs of each of `runs`, run in turn
// round after round (so that a disturbance of a shared machine falls on
// all of them alike), after one warm-up run of each.
template <typename... Runs>
std::array<double, sizeof...(Runs)> fastest_in_turn(int rounds, Runs&&... runs) {
  auto seconds = [](auto& run) {
    const auto start = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  (runs(), ...);  // warm-up: caches, clocks
  std::array<double, sizeof...(Runs)> best;
  best.fill(std::numeric_limits<double>::infinity());
  for (int round = 0; round < rounds; ++round) {
    int i = 0;
    ((best[i] = std::min(best[i], seconds(runs)), ++i), ...);
  }
  return best;
}

// Whether the AVX-512 vector kernel looks up x for its sparsest rows (those
// that take the widest window, below ~25% stored) faster by one masked
// gather a chunk than by the window's loads and permutes: the vector route
// timed both ways once per process on a synthetic matrix (256 x 8192, steps
// of 1 to 16 columns from a fixed sequence: ~12% stored, as a 10% row with
// padding), the fastest of five rounds after a warm-up (a few
// milliseconds).
// Which is faster differs by CPU: gathers by ~27% on one Xeon (NOTES c9),
// the window by ~35% on an EPYC (c12), where a replica of the inner loop,
// timed instead before c12, had picked gathers. Either gives the same sums.
template <typename Ops>
bool measure_gather_beats_window() {
  if constexpr (Ops::kLanes < 16) {
    return false;  // only the AVX-512 kernel has the choice
  } else {
    constexpr int64_t kRows = 256, kCols = 8192;
    uint32_t state = 12345u;
    const SyntheticStream synthetic(kRows, kCols, [&] {
      state = state * 1664525u + 1013904223u;
      return int64_t{1} + (state >> 28);  // 1..16
    });
    const Stream<float, int32_t> s = synthetic.stream();
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor x = at::full({kCols}, 0.25f, f32);
    at::Tensor y = at::empty({kRows}, f32);
    auto run = [&](bool gather) {
      multiply_vector<Ops, float>(s, x, 1, kRows, nullptr, nullptr, y.mutable_data_ptr<float>(), gather);
    };
    const auto [window, gather] = fastest_in_turn(5, [&] { run(false); }, [&] { run(true); });
    return gather < window;
  }
}

// Whether the vector kernel looks up x for its sparsest rows by gathers:
// MACKO_CPU_SPARSE_LOOKUP=gather|window (read on every call, for tests and
// comparisons), else what measure_gather_beats_window found.
template <typename Ops>
bool gather_sparse_rows() {
  const char* setting = std::getenv("MACKO_CPU_SPARSE_LOOKUP");
  if (setting == nullptr || setting[0] == '\0') {
    static const bool faster = measure_gather_beats_window<Ops>();
    return faster;
  }
  if (std::strcmp(setting, "gather") == 0) return true;
  TORCH_CHECK_VALUE(std::strcmp(setting, "window") == 0,
                    "MACKO_CPU_SPARSE_LOOKUP must be gather or window (or unset), got '", setting, "'");
  return false;
}

// Times both routes once on a synthetic matrix (512 x 2048, every other
// column stored; fp32) and solves choose_route's model for a, g and z: the
// sparse route at one tile of right-hand sides, the dense route at one and
// at four tiles. Each the fastest of three rounds after a warm-up (the
// machines this runs on may be shared); ~40 ms on a 2-core guest, at the
// first call that must choose between the two. Where a run was disturbed so
// badly that a cost comes out negative, the costs measured on the Xeon
// stand in.
template <typename Ops>
RouteCosts measure_route_costs() {
  constexpr int64_t kRows = 512, kCols = 2048;
  const SyntheticStream synthetic(kRows, kCols, [] { return int64_t{2}; });
  const Stream<float, int32_t> s = synthetic.stream();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const int64_t small = Ops::kTileWidth, large = 4 * Ops::kTileWidth;
  const at::Tensor x_small = at::full({small, kCols}, 0.25f, f32), x_large = at::full({large, kCols}, 0.25f, f32);
  at::Tensor y_small = at::empty({small, kRows}, f32), y_large = at::empty({large, kRows}, f32);
  const auto [sparse, dense_small, dense_large] = fastest_in_turn(
      3,
      [&] {
        multiply_sparse<Ops, float>(s, x_small, small, kRows, nullptr, nullptr, default_column_block_bytes(0.5, 1),
                                    y_small.mutable_data_ptr<float>());
      },
      [&] { multiply_dense<Ops, float>(s, x_small, small, kRows, nullptr, nullptr, y_small); },
      [&] { multiply_dense<Ops, float>(s, x_large, large, kRows, nullptr, nullptr, y_large); });
  const double elements = static_cast<double>(kRows) * kCols;
  RouteCosts c;
  c.a = sparse / static_cast<double>(s.n_entries);
  c.g = (dense_large - dense_small) / (elements * static_cast<double>(large - small));
  c.z = std::max(0.0, dense_small / elements - c.g * static_cast<double>(small));
  if (!(c.a > 0 && c.g > 0)) c = RouteCosts{1.4e-9, 0.0066e-9, 1.4e-9};
  return c;
}

template <typename Ops>
const RouteCosts& route_costs() {
  static const RouteCosts costs = measure_route_costs<Ops>();
  return costs;
}

at::Tensor multiply_cpu(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                        int64_t rows, int64_t cols, const at::Tensor& x_in, const std::optional<at::Tensor>& bias_in,
                        const std::optional<at::Tensor>& scales_in) {
  check_compressed(values, deltas, row_indices, rows, cols, scales_in);
  check_multiply_input(values, scales_in, cols, x_in);
  check_bias(values, scales_in, rows, bias_in);
  const at::Tensor x = x_in.contiguous();
  const at::ScalarType dtype = activation_dtype(values, scales_in);
  const auto out_options = values.options().dtype(dtype);
  const int64_t batch = x.dim() == 2 ? x.size(0) : 1;
  at::Tensor y = x.dim() == 2 ? at::empty({batch, rows}, out_options) : at::empty({rows}, out_options);
  if (y.numel() == 0) return y;
  if (cols == 0) {  // no column to store an entry in: an empty sum
    y.zero_();
    return bias_in.has_value() ? y.add_(*bias_in) : y;
  }
  // The kernels build their rows' tables from the scales (8-bit values) and
  // add the bias to their fp32 sums.
  at::Tensor scales32, bias32;
  if (scales_in.has_value()) scales32 = scales_in->to(at::kFloat).contiguous();
  if (bias_in.has_value()) bias32 = bias_in->to(at::kFloat).contiguous();
  const float* scales = scales32.defined() ? scales32.const_data_ptr<float>() : nullptr;
  const float* bias = bias32.defined() ? bias32.const_data_ptr<float>() : nullptr;
  const Kernels kernels = cols <= kMaxVectorCols ? cpu::chosen_kernels() : Kernels::kBaseline;
  MACKO_DISPATCH_MATRIX_TYPES(values.scalar_type(), dtype, "macko_multiply_cpu", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      const Stream<value_t, index_t> s{values.const_data_ptr<value_t>(), deltas.const_data_ptr<uint8_t>(),
                                       row_indices.const_data_ptr<index_t>(), values.numel(), cols};
      // Every route takes x as [batch, cols] and y as [batch, rows].
      const at::Tensor x2 = x.view({batch, cols});
      at::Tensor y2 = y.view({batch, rows});
      with_kernels(kernels, [&](auto ops) {
        using Ops = decltype(ops);
        scalar_t* yp = y2.mutable_data_ptr<scalar_t>();
        Route route = choose_route<Ops>(batch, rows, cols, values.numel());
        // The dense scratch holds every zero, and 0 * Inf = NaN would reach
        // columns a row does not store: with Inf or NaN in x, sum over the
        // stored entries only, as the other routes do.
        if (route == Route::kDense && !Ops::all_finite(x2.const_data_ptr<scalar_t>(), batch * cols)) {
          route = Route::kSparse;
        }
        if (route == Route::kVector) {
          multiply_vector<Ops, scalar_t>(s, x2, batch, rows, scales, bias, yp, gather_sparse_rows<Ops>());
        } else if (route == Route::kSparse) {
          const int64_t tiles = (batch + Ops::kTileWidth - 1) / Ops::kTileWidth;
          const int64_t block_bytes = column_block_bytes(stored_fraction_of(values.numel(), rows, cols), tiles);
          multiply_sparse<Ops, scalar_t>(s, x2, batch, rows, scales, bias, block_bytes, yp);
        } else {
          multiply_dense<Ops, scalar_t>(s, x2, batch, rows, scales, bias, y2);
        }
      });
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) { m.impl("multiply", &multiply_cpu); }

}  // namespace macko
