// dequantize.cuh: 8-bit values (int8, float8_e4m3fn) dequantized into a
// temporary in the activation dtype, for the GPU routes that take 16-bit
// values only: decompress, the dense route and the tile kernel, and every
// route with fp32 x. (The streaming kernel dequantizes 8-bit values itself
// for fp16 and bf16 x, bit for bit the same: multiply.cuh,
// group_decode.cuh.) Each entry is (float)q * (float)scale[row of the
// entry], rounded once to the activation dtype (as the CPU's decompress
// rounds; finite for a valid matrix, dequantized_max in macko.h). CUDA-graph safe: no host
// synchronisation, each entry's row comes from a binary search of
// row_indices. It costs a pass over the values and a 16-bit copy of them
// (a kernel that dequantizes in place would not).
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
  return (values.to(at::kFloat) * row_scales).to(scales->scalar_type());
}

}  // namespace cuda
}  // namespace macko
