// stored_values.h: the CPU ops' conversion of 8-bit stored values (int8,
// float8_e4m3fn; docs/FORMAT.md, "8-bit values") to float, through one
// 256-entry table per type, so that every kernel (vector lanes gather from
// the same table) converts a byte the same way, without a branch on its
// value. The tables are built from c10's own conversions. And the one
// definition of a dequantized value (dequantize), which decompress writes
// and the multiply kernels multiply.
#pragma once

#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../macko.h"

namespace macko {
namespace cpu {

template <typename value_t>
constexpr bool kIsByteValue = std::is_same_v<value_t, int8_t> || std::is_same_v<value_t, c10::Float8_e4m3fn>;

template <typename value_t>
std::array<float, 256> make_byte_floats() {
  static_assert(kIsByteValue<value_t>, "a table for the 8-bit value types only");
  std::array<float, 256> table{};
  for (int i = 0; i < 256; ++i) {
    const uint8_t byte = static_cast<uint8_t>(i);
    value_t v;
    std::memcpy(&v, &byte, 1);
    table[i] = static_cast<float>(v);
  }
  return table;
}

// kByteFloats<value_t>[b]: the value whose bit pattern is the byte b, as a
// float. Built when the library loads (no guard on each access).
template <typename value_t>
inline const std::array<float, 256> kByteFloats = make_byte_floats<value_t>();

template <typename value_t>
inline float byte_to_float(value_t v) {
  uint8_t byte;
  std::memcpy(&byte, &v, 1);
  return kByteFloats<value_t>[byte];
}

// The value that a stored q (as float) of a row of scale `scale` (as
// float) stands for in the activation type scalar_t: the fp32 product q *
// scale (exact for 16-bit scales; for fp32 scales rounded once, by this
// multiplication), rounded once to scalar_t (nearest even). For a valid
// matrix it is finite (dequantized_max in macko.h); nothing saturates it,
// so a NaN or oversized scale of unvalidated arrays gives NaN or Inf here
// as on the GPU. decompress writes it; the multiply kernels multiply it
// (each row's table of its 256 bytes' values, Ops::row_table in
// multiply_kernels.inc: the baseline's built with this function, the
// vector copies' with the same operations on vector lanes, the rounding
// that of their output stores). CUDA's streaming kernel and dequantize.cuh
// compute the same.
template <typename scalar_t>
inline scalar_t dequantize(float q, float scale) {
  return static_cast<scalar_t>(q * scale);
}

}  // namespace cpu
}  // namespace macko
