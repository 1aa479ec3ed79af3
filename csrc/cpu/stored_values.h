// stored_values.h: the CPU ops' conversion of 8-bit stored values (int8,
// float8_e4m3fn; docs/FORMAT.md, "8-bit values") to float, through one
// 256-entry table per type, so that every kernel (vector lanes gather from
// the same table) converts a byte the same way, without a branch on its
// value. The tables are built from c10's own conversions.
#pragma once

#include <c10/util/Float8_e4m3fn.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

}  // namespace cpu
}  // namespace macko
