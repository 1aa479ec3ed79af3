// The multiply kernels of int8 values (quantized matrices, multiply.cuh)
// for fp16 and bf16 x, compiled on their own.
#include "multiply.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(c10::Half, int8_t);
MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16, int8_t);
}  // namespace cuda
}  // namespace macko
