// dequantize.cuh: 8-bit values (int8, float8_e4m3fn) dequantized into a
// temporary in the activation dtype, for the GPU routes that take 16-bit
// values only: decompress, the dense route and the tile kernel, and every
// route with fp32 x. (The streaming kernel dequantizes 8-bit values itself
// for fp16 and bf16 x, bit for bit the same: multiply.cuh,
// group_decode.cuh.) Each entry is (float)q * (float)scale[row of the
// entry], rounded once to the activation dtype (as the CPU's decompress
// rounds; finite for a valid matrix, dequantized_max in macko.h). One
// kernel, one warp per row (dequantize.cu): a pass that reads a byte and
// writes 2 (or 4) per entry, CUDA-graph safe (no host synchronisation).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../macko.h"

namespace macko {
namespace cuda {

// values itself for 16/32-bit values (scales empty); for 8-bit ones the
// dequantized values, [values.numel()] in scales' dtype on values' device.
// Every element is written: the stream padding (entries past the last row,
// 0 in a valid matrix) with the last row's scale, and for corrupted row
// pointers each entry with some row's scale, never an access outside
// values or scales.
at::Tensor dequantized_values(const at::Tensor& values, const at::Tensor& row_indices, int64_t rows,
                              const std::optional<at::Tensor>& scales);

}  // namespace cuda
}  // namespace macko
