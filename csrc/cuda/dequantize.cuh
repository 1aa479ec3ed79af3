// dequantize.cuh: 8-bit values (int8, float8_e4m3fn) on the GPU, for now.
//
// INTERIM PATH (issue 17): decompress and multiply dequantize the whole
// values array into a temporary in the activation dtype, (float)q *
// (float)scale[row of the entry] rounded once (as the CPU's decompress
// rounds), and run the 16/32-bit kernels on it. Correct, and CUDA-graph
// safe (no host synchronisation: each entry's row comes from a binary
// search of row_indices), but it reads and writes more bytes than the
// 16-bit matrix costs, and the product rounds each entry to the activation
// dtype before multiplying (the CPU's multiply applies the scale to each
// row's fp32 sum instead). To be replaced by dequantization inside the
// kernels (the value type as a template parameter, the scale applied to
// each row's sum).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../macko.h"

namespace macko {
namespace cuda {

// values itself for 16/32-bit values (scales empty); for 8-bit ones the
// dequantized values, [values.numel()] in scales' dtype on values' device.
// The stream padding (entries past the last row) stays 0, and corrupted
// row pointers give some row's scale, never an access outside scales.
inline at::Tensor dequantized_values(const at::Tensor& values, const at::Tensor& row_indices, int64_t rows,
                                     const std::optional<at::Tensor>& scales) {
  if (!scales.has_value()) return values;
  const auto out_options = values.options().dtype(scales->scalar_type());
  const int64_t n = values.numel();
  if (n == 0 || rows == 0) return at::zeros({n}, out_options);
  // Entry k belongs to the last row r with row_indices[r] <= k.
  const at::Tensor starts = row_indices.to(at::kLong);
  const at::Tensor entries = at::arange(n, starts.options());
  const at::Tensor row = (at::searchsorted(starts, entries, /*out_int32=*/false, /*right=*/true) - 1).clamp(0, rows - 1);
  const at::Tensor row_scales = scales->to(at::kFloat).index_select(0, row);
  float limit = 0.0f;
  MACKO_DISPATCH_VALUE_TYPES(scales->scalar_type(), "macko_dequantized_max", [&] { limit = dequantized_max<scalar_t>(); });
  return (values.to(at::kFloat) * row_scales).clamp(-limit, limit).to(scales->scalar_type());
}

}  // namespace cuda
}  // namespace macko
