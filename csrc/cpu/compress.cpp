// compress on the CPU: dense -> MACKO, parallel over rows.
//
// Two passes over the dense matrix (compress_kernels.inc has the row
// kernels and how they work): the first counts each row's stored entries
// (and finds its last nonzero), a prefix sum places the rows in the stream,
// and the second writes values and deltas. Besides the outputs, the only
// memory is two int64 per row and, per task, staging buffers of one row.
//
// The write pass splits the rows into a fixed list of tasks of consecutive
// rows. A delta byte holds two entries, so the byte that holds the last
// entry of one task and the first of the next would be written by two
// threads; each task sets its half aside instead, and the halves are merged
// after the parallel region. So no two threads write one byte, and the
// output does not depend on the number of threads.
//
// The kernels exist three times (baseline, AVX2, AVX-512; kernel_variants.h
// says what each needs and how one is chosen at run time, with
// MACKO_CPU_KERNELS capping the choice). All give the same bytes.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../macko.h"
#include "kernel_variants.h"

namespace macko {
namespace {

using cpu::Kernels;

// Columns per mask: one bit each of a uint64_t.
constexpr int64_t kBlock = 64;
static_assert(kBlock == 8 * sizeof(uint64_t), "a block's masks are one uint64_t, a bit per column");
// A run of this many zero columns after a stored column forces a padding
// entry (the format's gap of kMaxDelta zeros, then one more column).
constexpr int kPaddingRun = kMaxDelta + 1;
// Stage room past a row's last entry (the vector kernels store whole
// groups: up to a block's 64 column bytes, or 32 values).
constexpr int64_t kStageSlack = kBlock;
// The write pass stages deltas one per byte and packs them 16 at a time
// (pack_groups: 8 aligned output bytes).
constexpr int64_t kPackEntries = 16;
static_assert(kPackEntries % 2 == 0, "two deltas share a byte");
// The fewest dense elements worth a parallel task of their own.
constexpr int64_t kMinTaskElements = int64_t{1} << 16;

// The unsigned integer with a value type's bit pattern. An element is
// nonzero (IEEE x != 0) iff a bit other than the sign is set.
template <typename scalar_t>
using bits_of = std::conditional_t<sizeof(scalar_t) == 2, uint16_t, uint32_t>;

template <typename bits_t>
constexpr bits_t kMagnitudeBits = static_cast<bits_t>(static_cast<bits_t>(~bits_t{0}) >> 1);

// A delta byte that holds an entry of a neighbouring task: set aside by the
// task and merged after the parallel region. byte = -1: none.
struct SharedByte {
  int64_t byte = -1;
  uint8_t bits = 0;
};

// Lookup tables of the AVX2 kernels, indexed by an 8-bit mask m of stored
// columns among 8: the shuffle that packs their 16-bit values (bytes) or
// 32-bit values (lanes) to the front, and their positions (one per byte).
struct CompressTables {
  alignas(16) uint8_t shuffle16[256][16];
  alignas(32) int32_t permute32[256][8];
  uint64_t positions[256];
};

CompressTables make_compress_tables() {
  CompressTables t{};
  for (int m = 0; m < 256; ++m) {
    int n = 0;
    uint64_t positions = 0;
    for (int j = 0; j < 8; ++j) {
      if (!((m >> j) & 1)) continue;
      t.shuffle16[m][2 * n] = static_cast<uint8_t>(2 * j);
      t.shuffle16[m][2 * n + 1] = static_cast<uint8_t>(2 * j + 1);
      t.permute32[m][n] = j;
      positions |= static_cast<uint64_t>(j) << (8 * n);
      ++n;
    }
    for (int i = n; i < 8; ++i) {  // past the stored ones: anything will do
      t.shuffle16[m][2 * i] = t.shuffle16[m][2 * i + 1] = 0x80;
      t.permute32[m][i] = 0;
    }
    t.positions[m] = positions;
  }
  return t;
}

const CompressTables kCompressTables = make_compress_tables();
inline const CompressTables& compress_tables() { return kCompressTables; }

// Asks the kernel to back a fresh output buffer with transparent huge pages
// before its first write: page faults are a large part of compress's time
// (the outputs are new memory), and 2 MiB pages take far fewer of them. On
// the 2-core VM this was tuned on, an 8192x8192 fp16 matrix at density 0.5
// took 62 ms to compress on one thread without the advice and 24 ms with it.
// Only buffers of at least 32 MiB are advised: glibc always maps those
// fresh (its mmap threshold is at most 32 MiB), while smaller ones may come
// from its heap, already resident, where the advice would only split its
// mappings. Only the 2 MiB-aligned interior is advised; where THP is off or
// unsupported this changes nothing.
void advise_huge_pages(void* data, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  constexpr int64_t kMinBytes = int64_t{32} << 20;
  if (nbytes < kMinBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

namespace baseline {
#define MACKO_COMPRESS_ISA 0
#include "compress_kernels.inc"
#undef MACKO_COMPRESS_ISA
}  // namespace baseline

#if MACKO_CPU_X86_DISPATCH
MACKO_CPU_BEGIN_AVX2
namespace avx2 {
#define MACKO_COMPRESS_ISA 1
#include "compress_kernels.inc"
#undef MACKO_COMPRESS_ISA
}  // namespace avx2
MACKO_CPU_END_TARGET
MACKO_CPU_BEGIN_AVX512
namespace avx512 {
#define MACKO_COMPRESS_ISA 2
#include "compress_kernels.inc"
#undef MACKO_COMPRESS_ISA
}  // namespace avx512
MACKO_CPU_END_TARGET
#endif  // MACKO_CPU_X86_DISPATCH

template <typename bits_t>
void count_rows(Kernels kernels, const bits_t* src, int64_t cols, int64_t r0, int64_t r1,
                int64_t* entries, int64_t* last_nonzero) {
#if MACKO_CPU_X86_DISPATCH
  if (kernels == Kernels::kAvx512) return avx512::count_rows(src, cols, r0, r1, entries, last_nonzero);
  if (kernels == Kernels::kAvx2) return avx2::count_rows(src, cols, r0, r1, entries, last_nonzero);
#endif
  (void)kernels;
  baseline::count_rows(src, cols, r0, r1, entries, last_nonzero);
}

template <typename bits_t>
void write_rows(Kernels kernels, const bits_t* src, int64_t cols, int64_t r0, int64_t r1,
                const int64_t* starts, const int64_t* last_nonzero, bits_t* values,
                uint8_t* deltas, SharedByte& head, SharedByte& tail) {
#if MACKO_CPU_X86_DISPATCH
  if (kernels == Kernels::kAvx512) {
    return avx512::write_rows(src, cols, r0, r1, starts, last_nonzero, values, deltas, head, tail);
  }
  if (kernels == Kernels::kAvx2) {
    return avx2::write_rows(src, cols, r0, r1, starts, last_nonzero, values, deltas, head, tail);
  }
#endif
  (void)kernels;
  baseline::write_rows(src, cols, r0, r1, starts, last_nonzero, values, deltas, head, tail);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compress_cpu(const at::Tensor& dense_in) {
  check_dense_matrix(dense_in, "dense");
  const at::Tensor dense = dense_in.contiguous();
  const int64_t rows = dense.size(0);
  const int64_t cols = dense.size(1);
  const Kernels kernels = cpu::chosen_kernels();

  // starts[r + 1] first holds row r's entry count, then the prefix sum.
  std::vector<int64_t> starts(rows + 1, 0);
  std::vector<int64_t> last_nonzero(rows, -1);
  at::Tensor values, deltas, row_indices;

  MACKO_DISPATCH_VALUE_TYPES(dense.scalar_type(), "macko_compress_cpu", [&] {
    using bits_t = bits_of<scalar_t>;
    const bits_t* src = reinterpret_cast<const bits_t*>(dense.const_data_ptr<scalar_t>());

    at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
      count_rows(kernels, src, cols, r0, r1, starts.data() + 1, last_nonzero.data());
    });
    for (int64_t r = 0; r < rows; ++r) starts[r + 1] += starts[r];
    const int64_t n = starts[rows];
    const int64_t n_padded = padded_entries(n);

    values = at::empty({n_padded}, dense.options());
    deltas = at::empty({n_padded / 2}, dense.options().dtype(at::kByte));
    row_indices = at::empty({rows + 1}, dense.options().dtype(row_index_dtype(n)));
    MACKO_DISPATCH_INDEX_TYPES(row_indices.scalar_type(), "macko_row_indices", [&] {
      index_t* ri = row_indices.mutable_data_ptr<index_t>();
      for (int64_t r = 0; r <= rows; ++r) ri[r] = static_cast<index_t>(starts[r]);
    });

    bits_t* out_values = reinterpret_cast<bits_t*>(values.mutable_data_ptr<scalar_t>());
    uint8_t* out_deltas = deltas.mutable_data_ptr<uint8_t>();
    advise_huge_pages(out_values, values.nbytes());
    advise_huge_pages(out_deltas, deltas.nbytes());
    // The stream's padding, entries [n, n_padded): value and delta 0. (If n
    // is odd, the byte of entries n - 1 and n is the last task's tail.)
    std::fill(out_values + n, out_values + n_padded, bits_t{0});
    std::fill(out_deltas + (n + 1) / 2, out_deltas + n_padded / 2, uint8_t{0});
    if (n == 0) return;

    const int64_t n_tasks = std::min<int64_t>(
        rows, std::clamp<int64_t>(rows * cols / kMinTaskElements, 1, 4 * at::get_num_threads()));
    std::vector<SharedByte> heads(n_tasks), tails(n_tasks);
    at::parallel_for(0, n_tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        write_rows(kernels, src, cols, rows * t / n_tasks, rows * (t + 1) / n_tasks, starts.data(),
                   last_nonzero.data(), out_values, out_deltas, heads[t], tails[t]);
      }
    });
    // Each shared byte is the OR of its halves (with empty tasks between
    // two tasks, one task's tail byte can be a later task's head byte).
    for (const auto* halves : {&heads, &tails}) {
      for (const SharedByte& half : *halves) {
        if (half.byte >= 0) out_deltas[half.byte] = 0;
      }
    }
    for (const auto* halves : {&heads, &tails}) {
      for (const SharedByte& half : *halves) {
        if (half.byte >= 0) out_deltas[half.byte] |= half.bits;
      }
    }
  });
  return {values, deltas, row_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, CPU, m) { m.impl("compress", &compress_cpu); }

}  // namespace macko
