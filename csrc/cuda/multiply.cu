// multiply.cu: the CUDA implementation of macko_spmv::multiply: argument
// checks and the choice between two routes.
//
// - "stream": the streaming kernel (multiply.cuh) reads the matrix once per
//   up to kMaxBatch right-hand sides and does the arithmetic as it decodes.
//   Its time is the matrix's bytes plus a small cost per right-hand side:
//   the route for one vector and small batches.
// - "tiles": the tile kernel (multiply_tiles.cuh) reads the matrix once per
//   up to 64 right-hand sides, decodes tiles of 16 rows into shared memory
//   as dense and multiplies them on the tensor cores: the route for batches
//   just past the streaming kernel's. 16-bit values, cols a multiple of 8,
//   sm_80 and newer; otherwise the stream route runs instead.
// - "dense": decompress a slab of rows into a dense scratch (decompress.cu)
//   and multiply the slab with cuBLAS (at::mm_out), slab after slab. Its
//   time is the dense GEMM's plus the decompress: the route for prompts
//   (prefill), where the GEMM's arithmetic outweighs the matrix's bytes.
//   The scratch is one slab (kSlabBytes, or kMinSlabRows rows if that is
//   more), from torch's caching allocator, so layers reuse one block and
//   torch.cuda.empty_cache() frees it; it is the only extra memory.
//
// "auto" takes the stream route up to kStreamMaxBatch right-hand sides (more
// for large sparse matrices), the tile kernel up to kTilesMaxBatch where it
// applies, and the dense route above: the crossovers measured on an H200
// (benchmarks/NOTES.md, v13k and v15h; choose_route).
// MACKO_MULTIPLY_ROUTE=stream|tiles|dense
// in the environment overrides the choice on every call, for benchmarks and
// tests.
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>

#include "decompress.cuh"
#include "dequantize.cuh"
#include "multiply.cuh"
#include "multiply_tiles.cuh"

namespace macko {
namespace cuda {
namespace {

enum class Route { kAuto, kStream, kTiles, kDense };

Route requested_route() {
  const char* name = std::getenv("MACKO_MULTIPLY_ROUTE");
  if (name == nullptr || *name == '\0' || std::strcmp(name, "auto") == 0) return Route::kAuto;
  if (std::strcmp(name, "stream") == 0) return Route::kStream;
  if (std::strcmp(name, "tiles") == 0) return Route::kTiles;
  if (std::strcmp(name, "dense") == 0) return Route::kDense;
  TORCH_CHECK_VALUE(false, "MACKO_MULTIPLY_ROUTE must be auto, stream, tiles or dense, got '", name, "'");
}

// Where "auto" sends a batch (H200, fp16, flushed: each route timed at
// batches 2-32 on the five Llama shapes at d = 0.5 and 0.1, NOTES v15h).
// The streaming kernel costs about one pass over the matrix per 1-2
// right-hand sides past the first; the tile kernel about the same time for
// any batch up to 8, a little more up to 32. So the tile kernel takes
// batches of 3 to kTilesMaxBatch (2 too would lose 5-20% on most shapes),
// except on sparse matrices (fewer than kSparseStoredFraction of the
// elements stored), whose short rows leave the streaming kernel's passes
// cheap: it keeps them up to sparse_stream_max_batch, larger the larger
// the matrix (d = 0.1: 8192x8192 ties at batch 8, 28672x8192 stays ahead
// up to 12, 4096x4096 falls behind from batch 3). Past kTilesMaxBatch the
// dense route; where the tile kernel does not apply, the streaming kernel up
// to its pass width (two passes for a sparse matrix), then the dense route.
constexpr int64_t kStreamMaxBatch = 2;
constexpr int64_t kTilesMaxBatch = 32;
constexpr double kSparseStoredFraction = 0.25;

int64_t sparse_stream_max_batch(double elements) {
  if (elements >= static_cast<double>(int64_t{1} << 27)) return 12;
  if (elements >= static_cast<double>(int64_t{1} << 26)) return 8;
  if (elements >= static_cast<double>(int64_t{1} << 25)) return 4;
  return kStreamMaxBatch;
}

// A dense slab of the dense route: at most kSlabBytes, but at least
// kMinSlabRows rows; the rows split into slabs of equal size. decompress
// walks one row per warp, a serial walk, so its time is bound by the
// number of rows it can walk at once, not by DRAM (profiled on an H200:
// slabs of 2048 rows of 8192x8192 decompressed at the whole matrix's rate,
// ~17 us each, while their compressed bytes take ~5 us). Every slab costs a
// decompress launch and a cuBLAS call, ~30-40 us of host time together,
// and prompts of a few hundred tokens are bound by that host time (v13w):
// 128 MiB takes the 4096- and 11008-row layers of 7B-13B models in one
// slab (a 32 MiB slab, which stays in L2 for its GEMM, took three for the
// 11008-row ones; v13y).
constexpr int64_t kSlabBytes = int64_t{128} << 20;
constexpr int64_t kMinSlabRows = 4096;

// Whether the tile kernel takes this matrix (multiply_tiles.cuh).
// dtype: the activation dtype (that of the values, or of the dequantized
// values of an 8-bit matrix).
bool tiles_apply(at::ScalarType dtype, int64_t cols) {
  const bool sixteen_bits = dtype == at::kHalf || dtype == at::kBFloat16;
  return sixteen_bits && cols % 8 == 0 && device_facts(current_device()).major >= 8;
}

// stream_dequantizes: 8-bit values that the streaming kernel dequantizes
// itself; every other route takes them dequantized into a temporary first
// (an extra pass over the values), so up to its pass width they stay with
// the streaming kernel, as before the tile kernel took batches of 3-8 (the
// sweep that moved those was fp16 only).
Route choose_route(int64_t batch, const at::Tensor& values, at::ScalarType dtype, int64_t rows, int64_t cols,
                   bool stream_dequantizes) {
  const Route requested = requested_route();
  if (requested != Route::kAuto) return requested;
  if (batch <= kStreamMaxBatch) return Route::kStream;
  const double elements = static_cast<double>(rows) * static_cast<double>(cols);
  const bool sparse = elements > 0 && static_cast<double>(values.numel()) < kSparseStoredFraction * elements;
  if (!tiles_apply(dtype, cols) || (stream_dequantizes && batch <= multiply_impl::kMaxBatch)) {
    // fp32, cols not a multiple of 8, before sm_80, or 8-bit values up to
    // 8 vectors: the streaming kernel in one pass, or two for a sparse
    // matrix, else the dense route.
    const bool stream = batch <= multiply_impl::kMaxBatch || (sparse && batch <= 2 * multiply_impl::kMaxBatch);
    return stream ? Route::kStream : Route::kDense;
  }
  if (sparse && batch <= sparse_stream_max_batch(elements)) return Route::kStream;
  return batch <= kTilesMaxBatch ? Route::kTiles : Route::kDense;
}

// Smallest kernel batch width (a power of two) that holds `batch` vectors.
int kernel_batch(int64_t batch) {
  int width = 1;
  while (width < batch) width *= 2;
  return width;
}

// cuBLAS may compute less precisely than the kernels when torch allows it:
// split-K partial sums of 16-bit products in fp16/bf16 (allowed by
// default), fp16 accumulation (torch 2.7 and newer, off by default), TF32
// products for fp32 (off by default). The dense route promises what the
// kernels do (exact products, sums in fp32), so it turns these off for its
// own GEMMs and puts torch's settings back afterwards. The settings are
// process-wide: dense-route calls hold a lock while they are changed, and a
// GEMM that another thread runs meanwhile sees them off too (more precise,
// never less). Their getters and setters differ between torch releases (a
// bool or an enum; fp16 accumulation absent in older ones), so every call
// goes through a template parameter and only the matching form is compiled.
template <typename Option>
bool allows_reduced(Option option) {
  if constexpr (std::is_same_v<Option, bool>) {
    return option;
  } else {
    return static_cast<int>(option) == 0;  // AllowReducedPrecisionWithSplitK
  }
}

template <typename Option>
bool allows_split_k(Option option) {
  if constexpr (std::is_same_v<Option, bool>) {
    return true;
  } else {
    return static_cast<int>(option) != 2;  // 2: DisallowReducedPrecisionDisallowSplitK
  }
}

template <typename Option, typename Context>
void set_fp16_reduction(Context& context, bool reduced, bool split_k) {
  if constexpr (std::is_same_v<Option, bool>) {
    context.setAllowFP16ReductionCuBLAS(reduced);
  } else {
    context.setAllowFP16ReductionCuBLAS(reduced, split_k);
  }
}

template <typename Option, typename Context>
void set_bf16_reduction(Context& context, bool reduced, bool split_k) {
  if constexpr (std::is_same_v<Option, bool>) {
    context.setAllowBF16ReductionCuBLAS(reduced);
  } else {
    context.setAllowBF16ReductionCuBLAS(reduced, split_k);
  }
}

template <typename Context, typename = void>
struct HasFP16Accumulation : std::false_type {};
template <typename Context>
struct HasFP16Accumulation<Context, std::void_t<decltype(std::declval<Context&>().allowFP16AccumulationCuBLAS())>>
    : std::true_type {};

template <typename Context>
class FullPrecisionMatmul {
 public:
  explicit FullPrecisionMatmul(Context& context)
      : lock_(mutex()),
        context_(context),
        fp16_(context.allowFP16ReductionCuBLAS()),
        bf16_(context.allowBF16ReductionCuBLAS()),
        tf32_(context.allowTF32CuBLAS()) {
    set_fp16_reduction<Option>(context_, false, allows_split_k(fp16_));
    set_bf16_reduction<Option>(context_, false, allows_split_k(bf16_));
    context_.setAllowTF32CuBLAS(false);
    if constexpr (HasFP16Accumulation<Context>::value) {
      fp16_accumulation_ = context_.allowFP16AccumulationCuBLAS();
      context_.setAllowFP16AccumulationCuBLAS(false);
    }
  }
  ~FullPrecisionMatmul() {
    set_fp16_reduction<Option>(context_, allows_reduced(fp16_), allows_split_k(fp16_));
    set_bf16_reduction<Option>(context_, allows_reduced(bf16_), allows_split_k(bf16_));
    context_.setAllowTF32CuBLAS(tf32_);
    if constexpr (HasFP16Accumulation<Context>::value) context_.setAllowFP16AccumulationCuBLAS(fp16_accumulation_);
  }
  FullPrecisionMatmul(const FullPrecisionMatmul&) = delete;
  FullPrecisionMatmul& operator=(const FullPrecisionMatmul&) = delete;

 private:
  using Option = decltype(std::declval<Context&>().allowFP16ReductionCuBLAS());
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  std::lock_guard<std::mutex> lock_;
  Context& context_;
  Option fp16_, bf16_;
  bool tf32_;
  bool fp16_accumulation_ = false;
};

// y [batch, rows] = x [batch, cols] M^T, a slab of rows at a time.
void multiply_dense(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices, int64_t rows,
                    int64_t cols, const at::Tensor& x, at::Tensor& y) {
  const int64_t row_bytes = std::max<int64_t>(1, cols * static_cast<int64_t>(values.element_size()));
  const int64_t max_slab_rows = std::min(rows, std::max(kMinSlabRows, kSlabBytes / row_bytes));
  const int64_t slabs = (rows + max_slab_rows - 1) / max_slab_rows;
  const int64_t slab_rows = (rows + slabs - 1) / slabs;
  at::Tensor scratch = at::empty({slab_rows, cols}, values.options());
  const FullPrecisionMatmul<at::Context> full_precision(at::globalContext());
  if (slabs == 1) {  // no views to make: the host time of a call is what prompts wait for
    decompress_rows(values, deltas, row_indices, 0, cols, scratch);
    at::mm_out(y, x, scratch.t());
    return;
  }
  for (int64_t first = 0; first < rows; first += slab_rows) {
    const int64_t count = std::min(slab_rows, rows - first);
    at::Tensor slab = scratch.narrow(0, 0, count);
    decompress_rows(values, deltas, row_indices, first, cols, slab);
    at::Tensor out = y.narrow(1, first, count);  // strides (rows, 1): cuBLAS writes it in place
    at::mm_out(out, x, slab.t());
  }
}

// y [batch, rows] through the streaming kernel, kMaxBatch right-hand sides
// per pass. With scales the values are 8-bit and x is fp16 or bf16: the
// kernel dequantizes them as it goes.
void multiply_stream(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices, int64_t rows,
                     int64_t cols, const at::Tensor& x, at::Tensor& y, const std::optional<at::Tensor>& scales) {
  const int64_t batch = x.size(0);
  for (int64_t b0 = 0; b0 < batch; b0 += multiply_impl::kMaxBatch) {
    const int64_t nb = std::min<int64_t>(multiply_impl::kMaxBatch, batch - b0);
    multiply_impl::MultiplyProblem problem{values, deltas, row_indices, rows, cols,
                                           x.narrow(0, b0, nb), y.narrow(0, b0, nb), kernel_batch(nb)};
    if (scales.has_value()) {
      problem.scales = *scales;
      MACKO_DISPATCH_16BIT_TYPES(scales->scalar_type(), "macko_multiply_cuda", [&] {
        dispatch_stored_type<scalar_t>(values.scalar_type(), [&](auto value_tag) {
          multiply_impl::multiply_typed<scalar_t, typename decltype(value_tag)::type>(problem);
        });
      });
    } else {
      MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_multiply_cuda",
                                 [&] { multiply_impl::multiply_typed<scalar_t, scalar_t>(problem); });
    }
  }
}

// y [batch, rows] through the tile kernel, tiles_impl::kMaxBatch
// right-hand sides per pass; x's rows 16-byte aligned (copied if not).
void multiply_tiles(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices, int64_t rows,
                    int64_t cols, const at::Tensor& x_in, at::Tensor& y) {
  const bool aligned = x_in.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(x_in.const_data_ptr()) % 16 == 0;
  const at::Tensor x = aligned ? x_in : x_in.clone(at::MemoryFormat::Contiguous);
  const int64_t batch = x.size(0);
  for (int64_t b0 = 0; b0 < batch; b0 += tiles_impl::kMaxBatch) {
    const int64_t nb = std::min<int64_t>(tiles_impl::kMaxBatch, batch - b0);
    at::Tensor y_chunk = y.narrow(0, b0, nb);
    MACKO_DISPATCH_16BIT_TYPES(values.scalar_type(), "macko_multiply_tiles", [&] {
      tiles_impl::multiply_tiles_typed<scalar_t>(values, deltas, row_indices, rows, cols, x.narrow(0, b0, nb), y_chunk);
    });
  }
}

at::Tensor multiply_cuda(const at::Tensor& values_in, const at::Tensor& deltas_in, const at::Tensor& row_indices,
                         int64_t rows, int64_t cols, const at::Tensor& x_in,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scales) {
  check_compressed(values_in, deltas_in, row_indices, rows, cols, scales);
  check_multiply_input(values_in, scales, cols, x_in);
  check_bias(values_in, scales, rows, bias);
  check_cols_fit(cols);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = aligned16(values_in);
  const at::Tensor deltas = aligned16(deltas_in);
  const at::ScalarType dtype = activation_dtype(values, scales);

  const bool batched = x_in.dim() == 2;
  const int64_t batch = batched ? x_in.size(0) : 1;
  at::Tensor y = at::empty({batch, rows}, values.options().dtype(dtype));
  if (batch > 0 && rows > 0 && cols == 0) {
    y.zero_();  // an empty sum; and no kernel runs with no column to clamp x to
  } else if (batch > 0 && rows > 0) {
    // Every route takes x as [batch, cols] with unit column stride.
    at::Tensor x = (batched ? x_in : x_in.unsqueeze(0));
    if (x.stride(1) != 1) x = x.contiguous();
    // 8-bit values: the streaming kernel dequantizes them itself for fp16
    // and bf16 x; the other routes, and fp32 x, take them dequantized into
    // a temporary in the activation dtype first (dequantize.cuh).
    const bool kernel_dequantizes = scales.has_value() && dtype != at::kFloat;
    auto dequantized = [&] { return aligned16(dequantized_values(values, row_indices, rows, scales)); };
    const Route route = choose_route(batch, values, dtype, rows, cols, kernel_dequantizes);
    if (route == Route::kDense) {
      multiply_dense(dequantized(), deltas, row_indices, rows, cols, x, y);
    } else if (route == Route::kTiles && tiles_apply(dtype, cols)) {
      multiply_tiles(dequantized(), deltas, row_indices, rows, cols, x, y);
    } else if (kernel_dequantizes) {
      multiply_stream(values, deltas, row_indices, rows, cols, x, y, scales);
    } else {
      multiply_stream(dequantized(), deltas, row_indices, rows, cols, x, y, std::nullopt);
    }
  }
  // The GPU kernels have no bias in their epilogues: a second pass (the
  // CPU kernels add it to the fp32 sums).
  if (bias.has_value() && y.numel() > 0) y.add_(*bias);
  return batched ? y : y.view({rows});
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(macko_spmv, CUDA, m) { m.impl("multiply", &cuda::multiply_cuda); }

}  // namespace macko
