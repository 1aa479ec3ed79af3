// multiply.cu: the CUDA implementation of macko_spmv::multiply: argument
// checks, batches in chunks of kMaxBatch, and the dtype dispatch to the
// kernels of multiply.cuh.
#include <torch/library.h>

#include "multiply.cuh"

namespace macko {
namespace cuda {
namespace {

// Smallest kernel batch width (a power of two) that holds `batch` vectors.
int kernel_batch(int64_t batch) {
  int width = 1;
  while (width < batch) width *= 2;
  return width;
}

at::Tensor multiply_cuda(const at::Tensor& values_in, const at::Tensor& deltas_in,
                         const at::Tensor& row_indices, int64_t rows, int64_t cols,
                         const at::Tensor& x_in) {
  check_compressed(values_in, deltas_in, row_indices, rows, cols);
  check_multiply_input(values_in, cols, x_in);
  check_cols_fit(cols);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = aligned16(values_in);
  const at::Tensor deltas = aligned16(deltas_in);

  const bool batched = x_in.dim() == 2;
  const int64_t batch = batched ? x_in.size(0) : 1;
  at::Tensor y = batched ? at::empty({batch, rows}, values.options())
                         : at::empty({rows}, values.options());
  if (batch == 0 || rows == 0) return y;

  // Right-hand sides in chunks of at most kMaxBatch, each chunk one pass
  // over the matrix.
  for (int64_t b0 = 0; b0 < batch; b0 += multiply_impl::kMaxBatch) {
    const int64_t nb = std::min<int64_t>(multiply_impl::kMaxBatch, batch - b0);
    const int width = kernel_batch(nb);
    at::Tensor x_t;
    if (width == 1) {
      x_t = aligned16((batched ? x_in[b0] : x_in).contiguous());
    } else {
      x_t = at::zeros({cols, width}, x_in.options());
      x_t.narrow(1, 0, nb).copy_(x_in.narrow(0, b0, nb).t());
    }
    at::Tensor y_chunk = batched ? y.narrow(0, b0, nb) : y;
    MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_multiply_cuda", [&] {
      multiply_impl::multiply_typed<scalar_t>(values, deltas, row_indices, rows, cols, x_t, width,
                                              static_cast<int>(nb), y_chunk);
    });
  }
  return y;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(macko_spmv, CUDA, m) { m.impl("multiply", &cuda::multiply_cuda); }

}  // namespace macko
