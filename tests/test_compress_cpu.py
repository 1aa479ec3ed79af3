"""The CPU compress: the same bytes for every thread count and kernel variant.

compress splits the rows into parallel tasks whose number depends on the
thread count, and two tasks can share a byte of deltas; the output must not
depend on either. It also has kernel variants (baseline, AVX2, AVX-512: the
best the CPU runs; torch.ops.macko_spmv._cpu_kernels() says which runs);
every variant this CPU runs must agree with the baseline, and all with the
naive single-threaded encoder that the benchmark compares against (built in
development builds only: its tests skip without it).
"""

import sys

import pytest
import torch

import macko_spmv
from conftest import DTYPES, adversarial_matrices, random_pruned
from reference import bits, encode

compress = torch.ops.macko_spmv.compress
HAS_NAIVE = hasattr(torch.ops.macko_spmv, "_compress_reference")
requires_naive = pytest.mark.skipif(
    not HAS_NAIVE, reason="_compress_reference is built only in development builds (MACKO_DEV_OPS=1)")
KERNEL_VARIANTS = ["baseline", "avx2", "avx512"]


def naive_compress(M):
    return torch.ops.macko_spmv._compress_reference(M)


def kernels_under(monkeypatch, cap):
    """Caps the CPU kernels at `cap` and returns the name of those that run."""
    monkeypatch.setenv("MACKO_CPU_KERNELS", cap)
    return torch.ops.macko_spmv._cpu_kernels()


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_same_arrays(a, b, name):
    for array, other, what in zip(a, b, ("values", "deltas", "row_indices")):
        assert array.dtype == other.dtype and array.shape == other.shape, f"{name}: {what}"
        assert torch.equal(bits(array), bits(other)), f"{name}: {what} differ"


def large_adversarial(dtype, gen):
    """Matrices big enough to be split into several tasks (>= 2**16 elements
    each), with task boundaries at odd and even entries: empty rows, rows of
    one entry, long zero runs, -0.0 padding, NaN/Inf and subnormals."""
    cases = {}
    M = random_pruned(700, 1031, 0.05, torch.float32, gen)
    M[torch.rand(700, generator=gen) < 0.3] = 0  # empty rows
    single = torch.rand(700, generator=gen) < 0.2
    M[single] = 0
    M[single, torch.randint(0, 1031, (int(single.sum()),), generator=gen)] = 1.0
    M[torch.rand(700, 1031, generator=gen) < 0.01] = -0.0
    M[5, 17], M[9, 1030], M[400, 0] = float("nan"), float("inf"), float("-inf")
    cases["mixed rows 700x1031"] = M
    cases["dense 300x777"] = random_pruned(300, 777, 1.0, torch.float32, gen)
    cases["very sparse 2000x300"] = random_pruned(2000, 300, 0.003, torch.float32, gen)
    cases["1 column 200000x1"] = random_pruned(200000, 1, 0.5, torch.float32, gen)
    cases["1 row 1x300000"] = random_pruned(1, 300000, 0.01, torch.float32, gen)
    # Every row stores an odd number of entries: all task boundaries are odd.
    odd = torch.zeros(999, 513)
    for r in range(999):
        odd[r, torch.randperm(513, generator=gen)[: 2 * (r % 7) + 1]] = r + 1.0
    cases["odd rows 999x513"] = odd
    runs = torch.zeros(97, 4099)
    runs[:, ::47] = 2.0  # zero runs of 46: two paddings each
    runs[::2, 4098] = -3.0
    cases["zero runs 97x4099"] = runs
    out = {name: m.to(dtype) for name, m in cases.items()}
    if dtype != torch.float32:
        sub = random_pruned(400, 300, 0.3, torch.float32, gen).to(dtype)
        tiny = sub.view(torch.int16).bitwise_and(0x8003).view(dtype)  # subnormals and -0.0
        out["subnormals 400x300"] = torch.where(sub != 0, tiny, sub)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_thread_count_gives_identical_bytes(dtype, gen, restore_threads):
    matrices = dict(large_adversarial(dtype, gen))
    matrices.update(adversarial_matrices(dtype, gen))
    for density in (0.9, 0.5, 0.1, 0.02):
        matrices[f"random {density}"] = random_pruned(513, 1027, density, dtype, gen)
    for name, M in matrices.items():
        torch.set_num_threads(1)
        one = compress(M)
        if HAS_NAIVE:
            assert_same_arrays(one, naive_compress(M), f"{name}, 1 thread vs naive")
        for threads in (2, 3):
            torch.set_num_threads(threads)
            assert_same_arrays(compress(M), one, f"{name}, {threads} threads vs 1")


def test_kernel_caps_choose_what_runs(monkeypatch):
    """Unset, the best variant this CPU runs; a cap never raises the choice
    above it; the baseline always runs; an unknown name is refused."""
    monkeypatch.delenv("MACKO_CPU_KERNELS", raising=False)
    best = torch.ops.macko_spmv._cpu_kernels()
    assert best in KERNEL_VARIANTS
    print(f"CPU compress kernels this machine runs: {best}")
    for cap in KERNEL_VARIANTS:
        expected = KERNEL_VARIANTS[min(KERNEL_VARIANTS.index(cap), KERNEL_VARIANTS.index(best))]
        assert kernels_under(monkeypatch, cap) == expected, cap
    monkeypatch.setenv("MACKO_CPU_KERNELS", "avx9000")
    with pytest.raises(ValueError, match="MACKO_CPU_KERNELS must be baseline, avx2 or avx512"):
        compress(torch.ones(2, 2))


@pytest.mark.parametrize("variant", ["avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_kernel_variants_agree(variant, dtype, gen, monkeypatch):
    """Each vector variant against the baseline kernels, on this CPU if it
    runs that variant (skipped otherwise, saying which kernels it runs)."""
    running = kernels_under(monkeypatch, variant)
    if running != variant:
        pytest.skip(f"this CPU does not run the {variant} kernels (its best: {running})")
    matrices = dict(large_adversarial(dtype, gen))
    matrices.update(adversarial_matrices(dtype, gen))
    for density in (1.0, 0.5, 0.1, 0.01):
        matrices[f"random {density}"] = random_pruned(257, 2053, density, dtype, gen)
    for name, M in matrices.items():
        assert kernels_under(monkeypatch, "baseline") == "baseline"
        baseline = compress(M)
        assert kernels_under(monkeypatch, variant) == variant
        assert_same_arrays(compress(M), baseline, f"{name}: {variant} vs baseline kernels")


@requires_naive
def test_naive_encoder_matches_the_spec(gen):
    """The benchmark's baseline encodes what the spec says (so timing it
    against compress compares equal work)."""
    for name, M in adversarial_matrices(torch.float16, gen).items():
        values, deltas, row_indices = naive_compress(M)
        ref_values, ref_deltas, ref_row_indices = encode(M)
        assert torch.equal(bits(values), bits(ref_values)), name
        assert torch.equal(deltas, ref_deltas) and torch.equal(row_indices, ref_row_indices), name


def test_compress_round_trips_at_every_thread_count(gen, restore_threads):
    M = random_pruned(1500, 2000, 0.2, torch.bfloat16, gen)
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        assert torch.equal(macko_spmv.decompress(macko_spmv.compress(M)), M)


@pytest.mark.skipif(not (sys.platform == "linux" and torch._C.has_openmp),
                    reason="torch without OpenMP, or not Linux: the CPU ops run on one thread")
def test_cpu_ops_are_built_with_openmp():
    """at::parallel_for is inline; compiled without -fopenmp it runs every
    CPU op on one thread, silently."""
    assert macko_spmv.ops.build_info()["openmp"] is True
