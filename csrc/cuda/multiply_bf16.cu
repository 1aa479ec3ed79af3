// The bf16 multiply kernels (multiply.cuh, multiply_tiles.cuh), compiled on their own.
#include "multiply.cuh"
#include "multiply_tiles.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(c10::BFloat16, c10::BFloat16);
MACKO_INSTANTIATE_TILES(c10::BFloat16);
}  // namespace cuda
}  // namespace macko
