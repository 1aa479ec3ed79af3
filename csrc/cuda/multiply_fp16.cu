// The fp16 multiply kernels (multiply.cuh, multiply_tiles.cuh), compiled on their own.
#include "multiply.cuh"
#include "multiply_tiles.cuh"

namespace macko {
namespace cuda {
MACKO_INSTANTIATE_MULTIPLY(c10::Half, c10::Half);
MACKO_INSTANTIATE_TILES(c10::Half);
}  // namespace cuda
}  // namespace macko
