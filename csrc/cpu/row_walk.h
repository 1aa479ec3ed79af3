// row_walk.h: the CPU ops' walk over a MACKO stream, one row at a time
// (the format: docs/FORMAT.md).
#pragma once

#include "../macko.h"

namespace macko {
namespace cpu {

// Calls visit(r, k, col) for every stored entry k of rows [r0, r1) whose
// column is inside the matrix, in order. Columns past the last one can only
// come from a corrupted stream; they end the row.
template <typename index_t, typename Visit>
void for_each_entry(const index_t* row_indices, const uint8_t* deltas,
                    int64_t n_entries, int64_t cols, int64_t r0, int64_t r1,
                    Visit&& visit) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t begin, end;
    row_range(row_indices, r, n_entries, begin, end);
    int64_t col = -1;
    for (int64_t k = begin; k < end; ++k) {
      col += 1 + delta_at(deltas, k);
      if (col >= cols) break;
      visit(r, k, col);
    }
  }
}

}  // namespace cpu
}  // namespace macko
