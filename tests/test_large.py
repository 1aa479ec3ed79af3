"""Matrices past the 32-bit index ranges (slow; run with `pytest -m slow`).

- more than 2**31 dense elements, so row offsets r * cols exceed int32;
- more than 2**31 - 1 stored entries, so row_indices are int64 and stream
  offsets exceed int32.

Each test compresses, checks sampled rows of the stream against the dense
rows (decoded here with tensor ops, independently of the
library), and checks y = A x on sampled rows against float64. Sampled rows
include the first and last rows and the rows where the dense offset and the
stream offset cross 2**31. Memory: the CPU tests stay below ~11 GB (see each
test); the CUDA tests need ~13 GB of GPU memory and ~16 GB of host memory.
"""

import gc

import pytest
import torch

import macko_spmv
from conftest import assert_product_close, random_pruned, requires_cuda
from macko_spmv.bench.matrices import seeded_generator

pytestmark = pytest.mark.slow

INT32_LIMIT = 2**31


def make_matrix(rows, cols, density, device, seed):
    """Random fp16 normal values (never zero) kept with probability
    `density`, drawn a block of rows at a time to bound the scratch."""
    return random_pruned(rows, cols, density, torch.float16, seeded_generator(seed, device))


def sampled_rows(A, cols, gen):
    """First, last, random rows, the rows where r * cols and the stream
    offset cross 2**31, and their neighbours."""
    rows = A.rows
    picks = {0, 1, rows - 2, rows - 1, INT32_LIMIT // cols, (INT32_LIMIT - 1) // cols + 1}
    starts = A.row_indices.cpu().long()
    crossing = int(torch.searchsorted(starts, torch.tensor([INT32_LIMIT])).item())
    picks |= {crossing - 2, crossing - 1, crossing}
    picks |= set(torch.randint(0, rows, (24,), generator=gen).tolist())
    return sorted(r for r in picks if 0 <= r < rows)


def decode_row(A, r):
    """Row r of A as a dense fp16 row, decoded from the arrays."""
    starts = A.row_indices
    k0, k1 = int(starts[r]), int(starts[r + 1])
    dense = torch.zeros(A.cols, dtype=A.dtype)
    if k1 == k0:
        return dense
    k = torch.arange(k0, k1, dtype=torch.long)
    first_byte = k0 // 2
    row_bytes = A.deltas[first_byte : (k1 + 1) // 2].cpu().long()
    nibbles = (row_bytes[k // 2 - first_byte] >> (4 * (k % 2))) & 0xF
    columns = torch.cumsum(nibbles + 1, 0) - 1
    assert int(columns[-1]) < A.cols, f"row {r} runs past the last column"
    dense[columns] = A.values[k0:k1].cpu()
    return dense


def check(A, M, gen):
    """Sampled rows: the stream against M bit for bit, and A x against
    float64."""
    rows, cols = M.shape
    picks = sampled_rows(A, cols, gen)
    for r in picks:
        row = M[r].cpu()
        decoded = decode_row(A, r)
        assert torch.equal(decoded, row), f"row {r} decodes wrongly"
    x = torch.randn(cols, generator=gen).to(torch.float16).to(M.device)
    y = macko_spmv.multiply(A, x)
    index = torch.tensor(picks, device=M.device)
    assert_product_close(y[index].cpu(), M[index].cpu(), x.cpu())
    return picks


def peak_rss_gib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def test_cpu_more_than_2_31_elements(gen):
    """131072 x 16400 fp16 (2.15e9 elements, 4.3 GB) at density 0.01.
    Peak memory ~9 GB: the matrix, its ~0.4 GB compressed form, and the
    decompressed copy that checks every row."""
    M = make_matrix(131072, 16400, 0.01, "cpu", seed=1)
    assert M.numel() > INT32_LIMIT
    A = macko_spmv.compress(M)
    assert A.row_indices.dtype == torch.int32 and A.stored_entries < INT32_LIMIT
    check(A, M, gen)
    D = macko_spmv.decompress(A)
    assert torch.equal(D, M)
    del D
    gc.collect()
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def test_cpu_more_than_2_31_stored_entries(gen):
    """131072 x 16400 fp16, 99.97% dense: ~2.1489e9 stored entries, so
    row_indices are int64. Peak memory ~10 GB: the 4.3 GB matrix and its
    5.4 GB compressed form."""
    M = make_matrix(131072, 16400, 0.9997, "cpu", seed=2)
    A = macko_spmv.compress(M)
    assert A.stored_entries > INT32_LIMIT - 1
    assert A.row_indices.dtype == torch.int64
    check(A, M, gen)
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize(
    "rows, cols, density",
    [
        (128256, 16384, 0.5),  # a vocabulary x hidden head: 2.1e9 elements (just under 2**31)
        (131072, 16400, 0.01),  # more than 2**31 elements
        (131072, 16400, 0.9997),  # more than 2**31 - 1 stored entries: int64 row_indices
    ],
)
def test_cuda_large(rows, cols, density, gen):
    """GPU compress gives the CPU's bytes; multiply on sampled rows."""
    M = make_matrix(rows, cols, density, "cuda", seed=3)
    A = macko_spmv.compress(M)
    assert A.row_indices.dtype == (torch.int64 if A.stored_entries > INT32_LIMIT - 1 else torch.int32)
    check(A, M, gen)
    M_cpu = M.cpu()
    del M
    torch.cuda.empty_cache()
    B = macko_spmv.compress(M_cpu)
    for gpu_array, cpu_array in zip(A[:3], B[:3]):
        assert gpu_array.dtype == cpu_array.dtype and gpu_array.shape == cpu_array.shape
        if gpu_array.dtype == torch.float16:
            gpu_array, cpu_array = gpu_array.view(torch.int16), cpu_array.view(torch.int16)
        assert torch.equal(gpu_array.cpu(), cpu_array), "GPU and CPU compress differ"
