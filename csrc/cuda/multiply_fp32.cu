// The fp32 multiply kernels (multiply.cuh), compiled on their own.
#include "multiply.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(float, float);
}  // namespace cuda
}  // namespace macko
