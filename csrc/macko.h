// macko.h: the MACKO format's constants, the argument checks every op shares,
// and the dtype/index dispatch. One source of truth for each: the CPU
// (csrc/cpu) and CUDA (csrc/cuda) implementations include this header and
// nothing else of each other. The format itself is specified in
// docs/FORMAT.md; the constants below are its numbers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

namespace macko {

// Entries per aligned load group; the stream length is a multiple of it.
constexpr int64_t kGroupEntries = 8;
// Bits of one delta: two deltas share a byte, the even entry's in the low half.
constexpr int kDeltaBits = 4;
// Largest gap a delta holds; a run of this many zeros forces a padding entry.
constexpr int kMaxDelta = (1 << kDeltaBits) - 1;
static_assert(2 * kDeltaBits == 8, "two deltas fill one byte of the deltas array");
// Row pointers switch to int64 when the stream has more entries than this.
constexpr int64_t kMaxInt32Entries = 2147483647;

// The format's test for "nonzero": the IEEE comparison x != 0, so +0 and -0
// are zero and NaN and +-Inf are stored like any other value.
template <typename scalar_t>
C10_HOST_DEVICE inline bool is_nonzero(scalar_t v) {
  return static_cast<float>(v) != 0.0f;
}

// Stream length for n stored entries: rounded up to whole load groups.
inline int64_t padded_entries(int64_t n) {
  return (n + kGroupEntries - 1) / kGroupEntries * kGroupEntries;
}

// Entry k's gap: low nibble of byte k / 2 for even k, high nibble for odd k.
C10_HOST_DEVICE inline int delta_at(const uint8_t* deltas, int64_t k) {
  return (deltas[k >> 1] >> ((k & 1) * kDeltaBits)) & kMaxDelta;
}

// Row r's entries [begin, end), clamped to the stream [0, n_entries) so that
// corrupted row pointers can never send a kernel outside the arrays.
template <typename index_t>
C10_HOST_DEVICE inline void row_range(const index_t* row_indices, int64_t r,
                                      int64_t n_entries, int64_t& begin,
                                      int64_t& end) {
  const int64_t b = static_cast<int64_t>(row_indices[r]);
  const int64_t e = static_cast<int64_t>(row_indices[r + 1]);
  begin = b < 0 ? 0 : (b > n_entries ? n_entries : b);
  end = e < begin ? begin : (e > n_entries ? n_entries : e);
}

// ---------------------------------------------------------------------------
// Checks. Every op calls these before touching data, on any device, so a bad
// argument becomes a Python ValueError/TypeError with a message naming it.
// They check what can be checked without reading device memory: dtypes,
// shapes, devices and lengths. The contents of row_indices are not read here
// (that would synchronise with the GPU on every call); the kernels clamp
// every row range to the stream instead, so corrupted contents can give a
// wrong product but never an out-of-bounds access. macko_spmv.MackoMatrix
// validates the contents once, when it is built from raw arrays.
// ---------------------------------------------------------------------------

// The dtypes of dense matrices, x, y and biases (the activation dtypes), and
// of a matrix's values where they are not quantized.
inline bool is_value_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat;
}

// 8-bit values (this library's extension of the format, docs/FORMAT.md): a
// value q of row r stands for q * scales[r], with scales in the activation
// dtype. kInt8Max and kFloat8E4m3Max are the largest magnitudes the two
// types hold, the divisors of a row's largest magnitude in its scale
// (macko_spmv/matrix.py quantizes with the same numbers).
constexpr int kInt8Max = 127;
constexpr int kFloat8E4m3Max = 448;

inline bool is_quantized_dtype(at::ScalarType t) {
  return t == at::kChar || t == at::kFloat8_e4m3fn;
}

// The largest magnitude a row's scale may give a stored value: qmax *
// scale must not pass scalar_t's largest finite number, so that every
// dequantized value q * scale of a valid matrix is finite and no kernel
// needs to saturate it (validate refuses larger scales; compress caps a
// row's scale at largest / qmax rounded down).
template <typename scalar_t>
inline double dequantized_max() {
  return static_cast<double>(std::numeric_limits<scalar_t>::max());
}

inline void check_dense_matrix(const at::Tensor& dense, const char* name) {
  TORCH_CHECK_TYPE(is_value_dtype(dense.scalar_type()), name,
                   " must be float16, bfloat16 or float32, got ",
                   dense.scalar_type());
  TORCH_CHECK_VALUE(dense.dim() == 2, name,
                    " must be a 2-D matrix [rows, cols], got shape ",
                    dense.sizes());
}

// 8-bit values need scales, [rows] in an activation dtype on values'
// device; other values take none. (Their contents, finite and >= 0, are
// validate's to check.)
inline void check_scales(const at::Tensor& values, int64_t rows,
                         const std::optional<at::Tensor>& scales) {
  const bool quantized = is_quantized_dtype(values.scalar_type());
  TORCH_CHECK_VALUE(!quantized || scales.has_value(), "values of dtype ",
                    values.scalar_type(), " need scales (one per row, in the ",
                    "activation dtype)");
  TORCH_CHECK_VALUE(quantized || !scales.has_value(), "scales apply to int8 ",
                    "and float8_e4m3fn values only, got values of dtype ",
                    values.scalar_type());
  if (!scales.has_value()) return;
  TORCH_CHECK_TYPE(is_value_dtype(scales->scalar_type()), "scales must be ",
                   "float16, bfloat16 or float32, got ", scales->scalar_type());
  TORCH_CHECK_VALUE(scales->dim() == 1 && scales->size(0) == rows, "scales ",
                    "must be [rows] = [", rows, "], got shape ", scales->sizes());
  TORCH_CHECK_VALUE(scales->device() == values.device(), "scales must be on ",
                    "the values' device ", values.device(), ", got ",
                    scales->device());
  TORCH_CHECK_VALUE(scales->is_contiguous(), "scales must be contiguous");
}

// The compressed arrays (values, deltas, row_indices, and the scales of
// 8-bit values) and the dense shape.
inline void check_compressed(const at::Tensor& values, const at::Tensor& deltas,
                             const at::Tensor& row_indices, int64_t rows,
                             int64_t cols,
                             const std::optional<at::Tensor>& scales) {
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0,
                    "rows and cols must be non-negative, got rows=", rows,
                    ", cols=", cols);
  TORCH_CHECK_TYPE(is_value_dtype(values.scalar_type()) ||
                       is_quantized_dtype(values.scalar_type()),
                   "values must be float16, bfloat16, float32, int8 or ",
                   "float8_e4m3fn, got ", values.scalar_type());
  TORCH_CHECK_TYPE(deltas.scalar_type() == at::kByte,
                   "deltas must be uint8, got ", deltas.scalar_type());
  TORCH_CHECK_TYPE(row_indices.scalar_type() == at::kInt ||
                       row_indices.scalar_type() == at::kLong,
                   "row_indices must be int32 or int64, got ",
                   row_indices.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 1 && deltas.dim() == 1 &&
                        row_indices.dim() == 1,
                    "values, deltas and row_indices must be 1-D, got shapes ",
                    values.sizes(), ", ", deltas.sizes(), ", ",
                    row_indices.sizes());
  TORCH_CHECK_VALUE(values.numel() % kGroupEntries == 0,
                    "values must hold a multiple of ", kGroupEntries,
                    " entries (the stream is padded to whole groups), got ",
                    values.numel());
  TORCH_CHECK_VALUE(deltas.numel() * 2 == values.numel(),
                    "deltas must hold one byte per two entries: expected ",
                    values.numel() / 2, " bytes for ", values.numel(),
                    " values, got ", deltas.numel());
  TORCH_CHECK_VALUE(row_indices.numel() == rows + 1,
                    "row_indices must have rows + 1 = ", rows + 1,
                    " elements, got ", row_indices.numel());
  TORCH_CHECK_VALUE(
      values.device() == deltas.device() &&
          values.device() == row_indices.device(),
      "values, deltas and row_indices must be on one device, got ",
      values.device(), ", ", deltas.device(), ", ", row_indices.device());
  TORCH_CHECK_VALUE(values.is_contiguous() && deltas.is_contiguous() &&
                        row_indices.is_contiguous(),
                    "values, deltas and row_indices must be contiguous");
  check_scales(values, rows, scales);
}

// The dtype of x, y and the bias (the activation dtype): the scales' for
// 8-bit values, else the values'.
inline at::ScalarType activation_dtype(const at::Tensor& values,
                                       const std::optional<at::Tensor>& scales) {
  return scales.has_value() ? scales->scalar_type() : values.scalar_type();
}

// x: [cols] or [batch, cols], the matrix's (activation) dtype and device.
inline void check_multiply_input(const at::Tensor& values,
                                 const std::optional<at::Tensor>& scales,
                                 int64_t cols, const at::Tensor& x) {
  const at::ScalarType dtype = activation_dtype(values, scales);
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, "x must have the ",
                   "matrix's dtype ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == values.device(), "x must be on the matrix's ",
                    "device ", values.device(), ", got ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 1 || x.dim() == 2,
                    "x must be [cols] or [batch, cols], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(-1) == cols, "x's last dimension must equal the ",
                    "matrix's cols = ", cols, ", got shape ", x.sizes());
}

// multiply's optional bias: [rows], the matrix's (activation) dtype and
// device, any strides (the kernels read it through a contiguous copy).
inline void check_bias(const at::Tensor& values,
                       const std::optional<at::Tensor>& scales, int64_t rows,
                       const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return;
  const at::ScalarType dtype = activation_dtype(values, scales);
  TORCH_CHECK_TYPE(bias->scalar_type() == dtype, "bias must ",
                   "have the matrix's dtype ", dtype, ", got ",
                   bias->scalar_type());
  TORCH_CHECK_VALUE(bias->device() == values.device(), "bias must be on the ",
                    "matrix's device ", values.device(), ", got ", bias->device());
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == rows, "bias must be ",
                    "[rows] = [", rows, "], got shape ", bias->sizes());
}

// ---------------------------------------------------------------------------
// Dispatch: the value dtypes and the two row-pointer widths, in one place.
// ---------------------------------------------------------------------------

#define MACKO_DISPATCH_VALUE_TYPES(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                         \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::ScalarType::BFloat16,      \
                                          __VA_ARGS__)                   \
                             AT_DISPATCH_CASE(at::ScalarType::Float,     \
                                              __VA_ARGS__))

// The 16-bit value dtypes only (kernels on the tensor cores).
#define MACKO_DISPATCH_16BIT_TYPES(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                         \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

// The stored values' C++ type for a matrix whose activation type is
// scalar_t: int8_t or c10::Float8_e4m3fn for 8-bit values, else scalar_t
// itself. Calls f(TypeTag<value_t>{}).
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename scalar_t, typename F>
void dispatch_stored_type(at::ScalarType stored, F&& f) {
  if (stored == at::kChar) return f(TypeTag<int8_t>{});
  if (stored == at::kFloat8_e4m3fn) return f(TypeTag<c10::Float8_e4m3fn>{});
  TORCH_CHECK(stored == c10::CppTypeToScalarType<scalar_t>::value,
              "macko_spmv: values of dtype ", stored, " in a matrix of dtype ",
              c10::CppTypeToScalarType<scalar_t>::value);
  f(TypeTag<scalar_t>{});
}

// Runs the lambda with `scalar_t` bound to the activation type (x, y, the
// dense matrix; ACTIVATION_TYPE from activation_dtype) and `value_t` to the
// stored values' type (VALUES_TYPE): the same for 16/32-bit values, int8_t
// or c10::Float8_e4m3fn for 8-bit ones.
#define MACKO_DISPATCH_MATRIX_TYPES(VALUES_TYPE, ACTIVATION_TYPE, NAME, ...)   \
  MACKO_DISPATCH_VALUE_TYPES(ACTIVATION_TYPE, NAME, [&] {                     \
    ::macko::dispatch_stored_type<scalar_t>(VALUES_TYPE, [&](auto value_tag) { \
      using value_t = typename decltype(value_tag)::type;                      \
      __VA_ARGS__();                                                           \
    });                                                                        \
  })

// Runs the lambda with `index_t` bound to the row pointers' element type.
#define MACKO_DISPATCH_INDEX_TYPES(TYPE, NAME, ...)                         \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                            \
                     AT_PRIVATE_CASE_TYPE_USING_HINT(at::ScalarType::Int,   \
                                                     index_t, __VA_ARGS__)  \
                         AT_PRIVATE_CASE_TYPE_USING_HINT(                   \
                             at::ScalarType::Long, index_t, __VA_ARGS__))

// Rows per task of the CPU ops' at::parallel_for: enough elements per task
// (about 32K) to amortise scheduling.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

// Row pointers' dtype for a stream of n stored entries.
inline at::ScalarType row_index_dtype(int64_t n) {
  return n > kMaxInt32Entries ? at::kLong : at::kInt;
}

}  // namespace macko
