// CPU implementations of compress, decompress and multiply.
//
// Every op is parallel over rows (at::parallel_for). compress makes two
// passes over the dense matrix: one counts each row's stored entries, a
// prefix sum over the counts places the rows in the stream, and a second
// pass writes values and deltas. No scratch memory proportional to the dense
// matrix is allocated: only the outputs and one counter per row.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <vector>

#include "../macko.h"

namespace macko {
namespace {

// Stored entries of one row, trailing padding excluded: the encoder of the
// format walked without writing anything.
template <typename scalar_t>
int64_t count_row_entries(const scalar_t* row, int64_t cols) {
  int64_t stored = 0;
  int64_t kept = 0;  // stored entries up to the last true nonzero
  int gap = 0;
  for (int64_t c = 0; c < cols; ++c) {
    if (is_nonzero(row[c])) {
      kept = ++stored;
      gap = 0;
    } else if (gap == kMaxDelta) {
      ++stored;
      gap = 0;
    } else {
      ++gap;
    }
  }
  return kept;
}

// Writes a run of consecutive nibbles into a zeroed deltas array. Threads
// own contiguous runs of entries, so only the byte at each end of a run can
// be shared with another thread; those two are merged atomically.
class NibbleWriter {
 public:
  NibbleWriter(uint8_t* deltas, int64_t first_entry, int64_t end_entry)
      : deltas_(deltas),
        k_(first_entry),
        first_shared_((first_entry & 1) ? first_entry >> 1 : -1),
        last_shared_((end_entry & 1) ? end_entry >> 1 : -1) {}

  void put(int delta) {
    if (k_ & 1) {
      store(k_ >> 1, pending_ | static_cast<uint8_t>(delta << 4));
      pending_ = 0;
    } else {
      pending_ = static_cast<uint8_t>(delta);
    }
    ++k_;
  }

  // Stores a half-filled last byte.
  void finish() {
    if (k_ & 1) store(k_ >> 1, pending_);
  }

 private:
  void store(int64_t byte, uint8_t bits) {
    if (byte == first_shared_ || byte == last_shared_) {
      __atomic_fetch_or(deltas_ + byte, bits, __ATOMIC_RELAXED);
    } else {
      deltas_[byte] = bits;
    }
  }

  uint8_t* deltas_;
  int64_t k_;
  int64_t first_shared_;
  int64_t last_shared_;
  uint8_t pending_ = 0;
};

// Rows per parallel task: enough work per task to amortise scheduling.
int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compress_cpu(
    const at::Tensor& dense_in) {
  check_dense_matrix(dense_in, "dense");
  const at::Tensor dense = dense_in.contiguous();
  const int64_t rows = dense.size(0);
  const int64_t cols = dense.size(1);

  std::vector<int64_t> starts(rows + 1, 0);
  at::Tensor values, deltas, row_indices;

  MACKO_DISPATCH_VALUE_TYPES(dense.scalar_type(), "macko_compress_cpu", [&] {
    const scalar_t* src = dense.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        starts[r + 1] = count_row_entries(src + r * cols, cols);
      }
    });
    for (int64_t r = 0; r < rows; ++r) starts[r + 1] += starts[r];
    const int64_t n = starts[rows];
    const int64_t n_padded = padded_entries(n);

    values = at::empty({n_padded}, dense.options());
    deltas = at::zeros({n_padded / 2}, dense.options().dtype(at::kByte));
    row_indices = at::empty({rows + 1}, dense.options().dtype(row_index_dtype(n)));
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      index_t* ri = row_indices.mutable_data_ptr<index_t>();
      for (int64_t r = 0; r <= rows; ++r) ri[r] = static_cast<index_t>(starts[r]);
    });

    scalar_t* out_values = values.mutable_data_ptr<scalar_t>();
    uint8_t* out_deltas = deltas.mutable_data_ptr<uint8_t>();
    for (int64_t k = n; k < n_padded; ++k) out_values[k] = scalar_t(0);
    at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
      NibbleWriter nibbles(out_deltas, starts[r0], starts[r1]);
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = src + r * cols;
        scalar_t* row_values = out_values + starts[r];
        const int64_t count = starts[r + 1] - starts[r];
        int gap = 0;
        for (int64_t c = 0, k = 0; k < count; ++c) {
          if (is_nonzero(row[c]) || gap == kMaxDelta) {
            row_values[k++] = row[c];
            nibbles.put(gap);
            gap = 0;
          } else {
            ++gap;
          }
        }
      }
      nibbles.finish();
    });
  });
  return {values, deltas, row_indices};
}

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

at::Tensor decompress_cpu(const at::Tensor& values, const at::Tensor& deltas,
                          const at::Tensor& row_indices, int64_t rows,
                          int64_t cols) {
  check_compressed(values, deltas, row_indices, rows, cols);
  at::Tensor dense = at::zeros({rows, cols}, values.options());
  MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_decompress_cpu", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      const scalar_t* v = values.const_data_ptr<scalar_t>();
      scalar_t* out = dense.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
        for_each_entry(row_indices.const_data_ptr<index_t>(),
                       deltas.const_data_ptr<uint8_t>(), values.numel(), cols,
                       r0, r1, [&](int64_t r, int64_t k, int64_t col) {
                         out[r * cols + col] = v[k];
                       });
      });
    });
  });
  return dense;
}

at::Tensor multiply_cpu(const at::Tensor& values, const at::Tensor& deltas,
                        const at::Tensor& row_indices, int64_t rows,
                        int64_t cols, const at::Tensor& x_in) {
  check_compressed(values, deltas, row_indices, rows, cols);
  check_multiply_input(values, cols, x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.dim() == 2 ? x.size(0) : 1;
  at::Tensor y = x.dim() == 2 ? at::empty({batch, rows}, values.options())
                              : at::empty({rows}, values.options());
  MACKO_DISPATCH_VALUE_TYPES(values.scalar_type(), "macko_multiply_cpu", [&] {
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      const scalar_t* v = values.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
        // One row at a time, all right-hand sides together: fp32 sums.
        std::vector<float> acc(batch);
        for (int64_t r = r0; r < r1; ++r) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for_each_entry(row_indices.const_data_ptr<index_t>(),
                         deltas.const_data_ptr<uint8_t>(), values.numel(), cols,
                         r, r + 1, [&](int64_t, int64_t k, int64_t col) {
                           const float value = static_cast<float>(v[k]);
                           for (int64_t b = 0; b < batch; ++b) {
                             acc[b] += value * static_cast<float>(xp[b * cols + col]);
                           }
                         });
          for (int64_t b = 0; b < batch; ++b) {
            yp[b * rows + r] = static_cast<scalar_t>(acc[b]);
          }
        }
      });
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) {
  m.impl("compress", &compress_cpu);
  m.impl("decompress", &decompress_cpu);
  m.impl("multiply", &multiply_cpu);
}

}  // namespace macko
