// The CUDA implementations of a build without the CUDA kernels (setup.py
// compiles csrc/cuda only when it finds the toolkit and a CUDA torch). With
// no implementation at all, a CUDA tensor would get the dispatcher's generic
// "could not run ... with arguments from the 'CUDA' backend"; these say what
// is wrong and what to do. They run the real kernels' argument checks first,
// so that a mix of devices is still reported as such.
#ifndef MACKO_WITH_CUDA

#include <torch/library.h>

#include <tuple>

#include "macko.h"

namespace macko {
namespace {

constexpr const char* kNoCudaKernels =
    "this build has no CUDA kernels: rebuild with the CUDA toolkit (see README)";

std::tuple<at::Tensor, at::Tensor, at::Tensor> compress_no_cuda(const at::Tensor& dense) {
  check_dense_matrix(dense, "dense");
  C10_THROW_ERROR(NotImplementedError, kNoCudaKernels);
}

at::Tensor decompress_no_cuda(const at::Tensor& values, const at::Tensor& deltas,
                              const at::Tensor& row_indices, int64_t rows, int64_t cols,
                              const std::optional<at::Tensor>& scales) {
  check_compressed(values, deltas, row_indices, rows, cols, scales);
  C10_THROW_ERROR(NotImplementedError, kNoCudaKernels);
}

at::Tensor multiply_no_cuda(const at::Tensor& values, const at::Tensor& deltas,
                            const at::Tensor& row_indices, int64_t rows, int64_t cols,
                            const at::Tensor& x, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& scales) {
  check_compressed(values, deltas, row_indices, rows, cols, scales);
  check_multiply_input(values, scales, cols, x);
  check_bias(values, scales, rows, bias);
  C10_THROW_ERROR(NotImplementedError, kNoCudaKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CUDA, m) {
  m.impl("compress", &compress_no_cuda);
  m.impl("decompress", &decompress_no_cuda);
  m.impl("multiply", &multiply_no_cuda);
}

}  // namespace macko

#endif  // MACKO_WITH_CUDA
