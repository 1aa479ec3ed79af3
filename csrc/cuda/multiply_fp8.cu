// The multiply kernels of float8_e4m3fn values (quantized matrices,
// multiply.cuh) for fp16 and bf16 x, compiled on their own.
#include "multiply.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(c10::Half, c10::Float8_e4m3fn);
MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16, c10::Float8_e4m3fn);
}  // namespace cuda
}  // namespace macko
