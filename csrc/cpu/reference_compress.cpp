// BENCHMARK BASELINE ONLY: torch.ops.macko_spmv._compress_reference, in
// development builds only (setup.py compiles this file, and ops.cpp
// defines the op, when MACKO_DEV_OPS is on; wheels leave it out).
//
// The MACKO encoder written the obvious way, as a plain single-threaded
// loop over the elements that appends each stored entry to std::vectors
// (the way the original tool encodes). benchmarks/compress.py times the
// library's compress against it, and the tests check that both give the
// same bytes. Not part of the API; nothing in the library calls it.
#include <torch/library.h>

#include <vector>

#include "../macko.h"

namespace macko {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> compress_reference_cpu(const at::Tensor& dense_in) {
  check_dense_matrix(dense_in, "dense");
  const at::Tensor dense = dense_in.contiguous();
  const int64_t rows = dense.size(0);
  const int64_t cols = dense.size(1);
  at::Tensor values, deltas, row_indices;

  MACKO_DISPATCH_VALUE_TYPES(dense.scalar_type(), "macko_compress_reference", [&] {
    const scalar_t* src = dense.const_data_ptr<scalar_t>();
    std::vector<scalar_t> entry_values;
    std::vector<uint8_t> entry_deltas;
    std::vector<int64_t> starts = {0};
    for (int64_t r = 0; r < rows; ++r) {
      size_t kept = entry_values.size();
      int gap = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const scalar_t v = src[r * cols + c];
        if (static_cast<float>(v) != 0.0f) {
          entry_values.push_back(v);
          entry_deltas.push_back(static_cast<uint8_t>(gap));
          gap = 0;
          kept = entry_values.size();
        } else if (gap == kMaxDelta) {
          entry_values.push_back(v);
          entry_deltas.push_back(static_cast<uint8_t>(gap));
          gap = 0;
        } else {
          ++gap;
        }
      }
      // Drop the padding after the row's last nonzero.
      entry_values.resize(kept);
      entry_deltas.resize(kept);
      starts.push_back(static_cast<int64_t>(kept));
    }
    const int64_t n = static_cast<int64_t>(entry_values.size());
    const int64_t n_padded = padded_entries(n);
    entry_values.resize(n_padded, scalar_t(0));
    entry_deltas.resize(n_padded, 0);

    values = at::empty({n_padded}, dense.options());
    std::copy(entry_values.begin(), entry_values.end(), values.mutable_data_ptr<scalar_t>());
    deltas = at::empty({n_padded / 2}, dense.options().dtype(at::kByte));
    uint8_t* packed = deltas.mutable_data_ptr<uint8_t>();
    for (int64_t i = 0; i < n_padded / 2; ++i) {
      packed[i] = static_cast<uint8_t>(entry_deltas[2 * i] | (entry_deltas[2 * i + 1] << 4));
    }
    row_indices = at::empty({rows + 1}, dense.options().dtype(row_index_dtype(n)));
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      index_t* ri = row_indices.mutable_data_ptr<index_t>();
      for (int64_t r = 0; r <= rows; ++r) ri[r] = static_cast<index_t>(starts[r]);
    });
  });
  return {values, deltas, row_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) { m.impl("_compress_reference", &compress_reference_cpu); }

}  // namespace macko
