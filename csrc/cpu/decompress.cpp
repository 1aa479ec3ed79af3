// decompress on the CPU: MACKO -> dense, parallel over rows
// (at::parallel_for, parallel in code compiled with OpenMP: setup.py adds
// -fopenmp). Indices into the stream and the dense matrix are int64.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include "row_walk.h"

namespace macko {
namespace {

using cpu::for_each_entry;

at::Tensor decompress_cpu(const at::Tensor& values, const at::Tensor& deltas,
                          const at::Tensor& row_indices, int64_t rows,
                          int64_t cols) {
  check_compressed(values, deltas, row_indices, rows, cols);
  at::Tensor dense = at::zeros({rows, cols}, values.options());
  MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_decompress_cpu", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      const scalar_t* v = values.const_data_ptr<scalar_t>();
      scalar_t* out = dense.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
        for_each_entry(row_indices.const_data_ptr<index_t>(),
                       deltas.const_data_ptr<uint8_t>(), values.numel(), cols,
                       r0, r1, [&](int64_t r, int64_t k, int64_t col) {
                         out[r * cols + col] = v[k];
                       });
      });
    });
  });
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) { m.impl("decompress", &decompress_cpu); }

}  // namespace macko
