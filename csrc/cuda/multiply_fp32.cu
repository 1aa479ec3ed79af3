// The fp32 multiply kernels (multiply.cuh), compiled on their own.
#include "multiply.cuh"

namespace macko {
namespace cuda {
template void multiply_impl::multiply_typed<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                 int64_t, const at::Tensor&, int, int, at::Tensor&);
}  // namespace cuda
}  // namespace macko
