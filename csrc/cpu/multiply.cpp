// multiply on the CPU: y = M x for one or more right-hand sides, parallel
// over rows (at::parallel_for, parallel in code compiled with OpenMP:
// setup.py adds -fopenmp), fp32 sums. Indices are int64.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <vector>

#include "row_walk.h"

namespace macko {
namespace {

using cpu::for_each_entry;

at::Tensor multiply_cpu(const at::Tensor& values, const at::Tensor& deltas,
                        const at::Tensor& row_indices, int64_t rows,
                        int64_t cols, const at::Tensor& x_in) {
  check_compressed(values, deltas, row_indices, rows, cols);
  check_multiply_input(values, cols, x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.dim() == 2 ? x.size(0) : 1;
  at::Tensor y = x.dim() == 2 ? at::empty({batch, rows}, values.options())
                              : at::empty({rows}, values.options());
  MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_multiply_cpu", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      const scalar_t* v = values.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
        // One row at a time, all right-hand sides together: fp32 sums.
        std::vector<float> acc(batch);
        for (int64_t r = r0; r < r1; ++r) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for_each_entry(row_indices.const_data_ptr<index_t>(),
                         deltas.const_data_ptr<uint8_t>(), values.numel(), cols,
                         r, r + 1, [&](int64_t, int64_t k, int64_t col) {
                           const float value = static_cast<float>(v[k]);
                           for (int64_t b = 0; b < batch; ++b) {
                             acc[b] += value * static_cast<float>(xp[b * cols + col]);
                           }
                         });
          for (int64_t b = 0; b < batch; ++b) {
            yp[b * rows + r] = static_cast<scalar_t>(acc[b]);
          }
        }
      });
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) { m.impl("multiply", &multiply_cpu); }

}  // namespace macko
