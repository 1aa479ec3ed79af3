// decompress on the CPU: MACKO -> dense, parallel over rows
// (at::parallel_for, parallel in code compiled with OpenMP: setup.py adds
// -fopenmp). Indices into the stream and the dense matrix are int64.
// 8-bit values come out dequantized: (float)q * (float)scale[row], rounded
// once to the activation dtype (the product is exact in fp32 for 16-bit
// scales, so for fp16 and bf16 that one rounding is the only one):
// cpu::dequantize (stored_values.h), the values that multiply multiplies.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <type_traits>

#include "row_walk.h"
#include "stored_values.h"

namespace macko {
namespace {

using cpu::for_each_entry;

at::Tensor decompress_cpu(const at::Tensor& values, const at::Tensor& deltas,
                          const at::Tensor& row_indices, int64_t rows,
                          int64_t cols, const std::optional<at::Tensor>& scales) {
  check_compressed(values, deltas, row_indices, rows, cols, scales);
  const at::ScalarType dtype = activation_dtype(values, scales);
  at::Tensor dense = at::zeros({rows, cols}, values.options().dtype(dtype));
  at::Tensor scales32;
  if (scales.has_value()) scales32 = scales->to(at::kFloat).contiguous();
  const float* row_scales = scales32.defined() ? scales32.const_data_ptr<float>() : nullptr;
  MACKO_DISPATCH_MATRIX_TYPES(values.scalar_type(), dtype, "macko_decompress_cpu", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      const value_t* v = values.const_data_ptr<value_t>();
      scalar_t* out = dense.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
        for_each_entry(row_indices.const_data_ptr<index_t>(),
                       deltas.const_data_ptr<uint8_t>(), values.numel(), cols,
                       r0, r1, [&](int64_t r, int64_t k, int64_t col) {
                         if constexpr (std::is_same_v<value_t, scalar_t>) {
                           out[r * cols + col] = v[k];
                         } else {
                           out[r * cols + col] = cpu::dequantize<scalar_t>(cpu::byte_to_float(v[k]), row_scales[r]);
                         }
                       });
      });
    });
  });
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) { m.impl("decompress", &decompress_cpu); }

}  // namespace macko
