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
    // Every dequantized value must be finite, so that no kernel saturates
    // (macko.h, dequantized_max): qmax * scale within the dtype's range.
    const int qmax = values.scalar_type() == at::kChar ? kInt8Max : kFloat8E4m3Max;
    double largest = 0.0;
    MACKO_DISPATCH_VALUE_TYPES(scales->scalar_type(), "macko_validate_scales",
                               [&] { largest = dequantized_max<scalar_t>(); });
    const at::Tensor too_large = (scales->to(at::kDouble) * qmax > largest).nonzero();
    TORCH_CHECK_VALUE(too_large.numel() == 0, "row ", too_large.numel() ? too_large[0][0].item<int64_t>() : 0,
                      "'s scale ", too_large.numel() ? (*scales)[too_large[0][0]].item<double>() : 0.0,
                      " times ", qmax, " passes the largest ", scales->scalar_type(), " (", largest,
                      "): its values could overflow (compress caps a scale at largest / ", qmax, ")");
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
  if (is_quantized_dtype(values.scalar_type()) && n > 0) {
    // The bytes compress never stores: int8's -128 (outside the symmetric
    // [-127, 127]) and e4m3's NaN encodings (0x7F, 0xFF).
    const at::Tensor bytes = values.narrow(0, 0, n).view(at::kByte);
    const bool int8 = values.scalar_type() == at::kChar;
    const at::Tensor bad = (int8 ? bytes.eq(0x80) : bytes.bitwise_and(0x7F).eq(0x7F)).nonzero();
    if (bad.numel() > 0) {
      const int64_t entry = bad[0][0].item<int64_t>();
      const int64_t row = at::searchsorted(starts, at::scalar_tensor(entry, starts.options()), false, true)
                              .item<int64_t>() - 1;
      TORCH_CHECK_VALUE(false, "values[", entry, "] (row ", row, ") is ",
                        int8 ? "-128, outside the symmetric int8 range [-127, 127] that compress stores"
                             : "a NaN of float8_e4m3fn, which compress never stores");
    }
  }
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
