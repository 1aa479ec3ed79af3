// decompress.cuh: rows of a MACKO matrix into a dense matrix on the GPU,
// for the decompress op and for multiply's dense route (multiply.cu), which
// decompresses a slab of rows at a time into a scratch buffer.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace macko {
namespace cuda {

// Writes rows [first_row, first_row + out.size(0)) of the matrix into `out`:
// a [n, cols] tensor of the matrix's dtype on its device, unit column
// stride, any row stride (out.stride(0) >= cols). values and deltas must be
// 16-byte aligned (aligned16). Runs on the current stream.
void decompress_rows(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                     int64_t first_row, int64_t cols, at::Tensor& out);

}  // namespace cuda
}  // namespace macko
