// validate: the full consistency check of a compressed matrix, for any
// device (written with tensor ops, so it runs where the arrays are).
#include <torch/library.h>

#include <algorithm>

#include "macko.h"

namespace macko {
namespace {

// Full consistency check of a compressed matrix: check_compressed's
// argument checks, then the contents, which the kernels do not read on
// every call. Written with tensor ops, so it runs where the arrays are
// (one synchronisation on a GPU). Raises ValueError naming the problem.
void validate(const at::Tensor& values, const at::Tensor& deltas,
              const at::Tensor& row_indices, int64_t rows, int64_t cols,
              const std::optional<at::Tensor>& scales) {
  check_compressed(values, deltas, row_indices, rows, cols, scales);
  TORCH_CHECK_VALUE(!values.is_meta(),
                    "validate reads the arrays' contents, which tensors on the meta device do not have");
  if (scales.has_value() && rows > 0) {
    // A value stands for q * scale: a scale must be a finite magnitude
    // (NaN fails both comparisons).
    const at::Tensor bad = (~(scales->isfinite() & scales->ge(0))).nonzero();
    TORCH_CHECK_VALUE(bad.numel() == 0, "scales must be finite and >= 0; row ",
                      bad.numel() ? bad[0][0].item<int64_t>() : 0, "'s scale is ",
                      bad.numel() ? (*scales)[bad[0][0]].item<double>() : 0.0);
  }
  const at::Tensor starts = row_indices.to(at::kLong);
  const int64_t n_padded = values.numel();
  TORCH_CHECK_VALUE(starts[0].item<int64_t>() == 0, "row_indices[0] must be 0, got ",
                    starts[0].item<int64_t>());
  if (rows > 0) {
    const at::Tensor lengths = starts.narrow(0, 1, rows) - starts.narrow(0, 0, rows);
    const at::Tensor bad = (lengths < 0).nonzero();
    TORCH_CHECK_VALUE(bad.numel() == 0, "row_indices must be non-decreasing; it decreases after row ",
                      bad.numel() ? bad[0][0].item<int64_t>() : 0);
  }
  const int64_t n = starts[rows].item<int64_t>();
  TORCH_CHECK_VALUE(padded_entries(n) == n_padded, "row_indices[rows] = ", n,
                    " stored entries need a stream of ", padded_entries(n),
                    " values (a multiple of ", kGroupEntries, "), got ", n_padded);
  if (n_padded == 0) return;
  // Entries [first, first + count) of deltas, one nibble per element.
  const auto nibbles = [&](int64_t first, int64_t count) {
    const at::Tensor bytes = deltas.narrow(0, first / 2, (first + count + 1) / 2 - first / 2);
    return at::stack({bytes.bitwise_and(0xF), bytes.bitwise_right_shift(4)}, 1)
        .reshape({-1})
        .narrow(0, first % 2, count);
  };
  // (as float: comparisons are not implemented for float8 tensors)
  TORCH_CHECK_VALUE(values.narrow(0, n, n_padded - n).to(at::kFloat).eq(0).all().item<bool>() &&
                        nibbles(n, n_padded - n).eq(0).all().item<bool>(),
                    "the ", n_padded - n, " padding entries after the last row must have value 0 ",
                    "and delta 0");
  if (rows == 0) return;
  // A row spans (sum over its entries of delta + 1) columns; it must fit.
  // The sums are taken a chunk of entries at a time, so the scratch stays
  // bounded (~40 bytes per entry of a chunk) however long the stream is:
  // ends[i] = the steps of the chunk's first i entries, and each row adds
  // the steps of its part of the chunk.
  constexpr int64_t kChunk = int64_t{1} << 22;
  const at::Tensor row_begin = starts.narrow(0, 0, rows);
  const at::Tensor row_end = starts.narrow(0, 1, rows);
  at::Tensor spans = at::zeros({rows}, starts.options());
  for (int64_t first = 0; first < n; first += kChunk) {
    const int64_t count = std::min(kChunk, n - first);
    const at::Tensor steps = nibbles(first, count).to(at::kLong) + 1;
    const at::Tensor ends = at::cat({at::zeros({1}, steps.options()), steps.cumsum(0)});
    const at::Tensor lo = row_begin.clamp(first, first + count) - first;
    const at::Tensor hi = row_end.clamp(first, first + count) - first;
    spans += ends.index_select(0, hi) - ends.index_select(0, lo);
  }
  const at::Tensor overflow = (spans > cols).nonzero();
  TORCH_CHECK_VALUE(overflow.numel() == 0, "row ",
                    overflow.numel() ? overflow[0][0].item<int64_t>() : 0,
                    "'s deltas run past the last column (cols = ", cols, ")");
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CompositeExplicitAutograd, m) {
  m.impl("validate", &validate);
}

}  // namespace macko
