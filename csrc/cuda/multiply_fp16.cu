// The fp16 multiply kernels (multiply.cuh), compiled on their own.
#include "multiply.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(c10::Half);
}  // namespace cuda
}  // namespace macko
