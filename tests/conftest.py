"""Shared fixtures: devices, dtypes, random pruned matrices, poisoning."""

import pytest
import torch

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


def random_pruned(rows, cols, density, dtype, gen):
    """Random normal values (never zero) kept with probability `density`."""
    values = torch.randn(rows, cols, generator=gen)
    values = torch.where(values == 0, torch.ones_like(values), values)
    keep = torch.rand(rows, cols, generator=gen) < density
    return (values * keep).to(dtype)


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


def reference_product(M, x):
    """float64 M @ x for x [cols] or [batch, cols]."""
    M64 = M.double().cpu()
    x64 = x.double().cpu()
    return (x64 @ M64.T) if x.dim() == 2 else (M64 @ x64)


def assert_product_close(y, M, x):
    """y vs float64 M x: output rounding plus fp32-sum error, elementwise."""
    ref = reference_product(M, x)
    scale = (x.double().cpu().abs() @ M.double().cpu().abs().T) if x.dim() == 2 else (
        M.double().cpu().abs() @ x.double().cpu().abs())
    out_eps = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 2**-23}[y.dtype]
    # Rounding to the output dtype: relative for normal numbers, one
    # subnormal step (finfo.tiny * eps) for results below the normal range.
    subnormal_step = torch.finfo(y.dtype).tiny * torch.finfo(y.dtype).eps
    bound = out_eps * ref.abs() + 1e-5 * scale + subnormal_step
    y64 = y.double().cpu()
    assert y64.shape == ref.shape
    assert torch.isfinite(y64).all(), "output has NaN/Inf (unwritten or wrong)"
    err = (y64 - ref).abs()
    worst = int(torch.argmax(err - bound)) if err.numel() else 0
    assert (err <= bound).all(), f"max excess at flat index {worst}: got {y64.flatten()[worst]}, want {ref.flatten()[worst]}"
