// The bf16 multiply kernels (multiply.cuh), compiled on their own.
#include "multiply.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16);
}  // namespace cuda
}  // namespace macko
