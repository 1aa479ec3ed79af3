"""Shared fixtures: devices, dtypes, random pruned matrices, poisoning."""

import pytest
import torch

# The project's one generator of random pruned matrices (and the float64
# check of a product), shared with the benchmarks.
from macko_spmv.bench.matrices import check_product, random_pruned, reference_product

DTYPES = [torch.float16, torch.bfloat16, torch.float32]

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).split(".")[-1])
def dtype(request):
    return request.param


@pytest.fixture
def gen(request):
    """A generator seeded from the test's name: fresh inputs per test, reproducible."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**31)
    return torch.Generator().manual_seed(seed)


def adversarial_matrices(dtype, gen):
    """Named matrices that stress the encoder's corner cases."""
    cases = {}
    cases["1x1 zero"] = torch.zeros(1, 1)
    cases["1x1 nonzero"] = torch.full((1, 1), 3.0)
    cases["all zero 5x40"] = torch.zeros(5, 40)
    cases["dense 7x13"] = torch.randn(7, 13, generator=gen).abs() + 0.5
    cases["1x257 sparse"] = random_pruned(1, 257, 0.1, torch.float32, gen)
    cases["257x1"] = random_pruned(257, 1, 0.5, torch.float32, gen)
    cases["primes 13x97"] = random_pruned(13, 97, 0.3, torch.float32, gen)
    cases["very sparse 31x1009"] = random_pruned(31, 1009, 0.02, torch.float32, gen)
    # Zero runs of lengths around the nibble limit, between and around nonzeros.
    runs = torch.zeros(12, 200)
    for r, run in enumerate([0, 1, 14, 15, 16, 17, 30, 31, 32, 33, 47, 48]):
        c = 0
        while c < 200:
            runs[r, c] = r + 1.5
            c += run + 1
    cases["zero runs 0..48"] = runs
    ends = torch.zeros(6, 64)
    ends[0, 0] = 1  # a row with one leading nonzero and 63 trailing zeros
    ends[1, 63] = 2  # 63 leading zeros
    ends[2, 15] = 3  # exactly 15 leading zeros
    ends[3, 16] = 4  # exactly 16
    ends[4, 17] = 5  # exactly 17
    ends[5, 31] = 6  # exactly 31 (one padding at 15)
    cases["zeros at row ends"] = ends
    special = random_pruned(9, 70, 0.4, torch.float32, gen)
    special[0, 3] = float("nan")
    special[1, 5] = float("inf")
    special[2, 69] = float("-inf")
    special[3, :] = -0.0  # a row of negative zeros stores nothing
    special[4, 0:40] = -0.0  # negative zeros inside a padded run
    special[4, 41] = 1.0
    cases["nan inf -0.0"] = special
    cases["empty 0x7"] = torch.zeros(0, 7)
    cases["empty 3x0"] = torch.zeros(3, 0)
    return {name: m.to(dtype) for name, m in cases.items()}


def poison_allocator(device, nbytes):
    """Fills about `nbytes` of fresh memory with NaN and frees it, so that an
    op's output allocated next likely reuses it: any element the op forgets to
    write then reads as NaN (the CUDA caching allocator reuses freed blocks)."""
    if nbytes <= 0:
        return
    block = torch.full((max(1, nbytes // 4) + 1024,), float("nan"), device=device)
    del block


def assert_product_close(y, M, x):
    """y vs float64 M x (x [cols] or [batch, cols]), elementwise: the output
    rounding plus the float32 sums' error (macko_spmv.bench.matrices)."""
    y_ref, magnitude = reference_product(M.cpu(), x.cpu())
    check_product(y.cpu(), y_ref, magnitude, y.dtype, "multiply")
