"""The random inputs and the float64 check (macko_spmv/bench/matrices.py),
which the tests and the benchmarks share."""

import pytest
import torch

import macko_spmv
from conftest import requires_cuda
from macko_spmv.bench import matrices


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_random_pruned_is_seeded_unstructured_and_never_zero(dtype):
    draw = lambda seed, **kw: matrices.random_pruned(300, 400, 0.3, dtype, matrices.seeded_generator(seed), **kw)  # noqa: E731
    W = draw(7)
    assert W.shape == (300, 400) and W.dtype == dtype and W.device.type == "cpu"
    assert torch.equal(W, draw(7)) and not torch.equal(W, draw(8))
    assert abs(float((W != 0).float().mean()) - 0.3) < 0.01
    per_row = (W != 0).float().mean(dim=1)
    assert 0.15 < float(per_row.min()) and float(per_row.max()) < 0.45  # no structure: every row near 0.3
    kept = W[W != 0].float()
    assert abs(float(kept.mean())) < 0.05 and 0.9 < float(kept.std()) < 1.1  # standard normal values
    assert not torch.signbit(W[W == 0]).any()  # dropped entries are +0.0
    dense = matrices.random_pruned(50, 60, 1.0, dtype, matrices.seeded_generator(1))
    assert bool((dense != 0).all())
    assert not matrices.random_pruned(5, 6, 0.0, dtype, matrices.seeded_generator(1)).any()


def test_random_pruned_in_blocks_bounds_the_scratch():
    gen = matrices.seeded_generator(3)
    W = matrices.random_pruned(1000, 37, 0.5, torch.float16, gen, block_elements=100)  # 2 rows a block
    assert W.shape == (1000, 37) and abs(float((W != 0).float().mean()) - 0.5) < 0.02
    assert bool((W[-2:] != 0).any())  # the last block was drawn too
    with pytest.raises(ValueError, match="density"):
        matrices.random_pruned(2, 2, 1.5, torch.float16, gen)


def test_random_vectors_and_derived_seeds():
    gen = matrices.seeded_generator(0)
    assert matrices.random_vectors(None, 30, torch.float16, gen).shape == (30,)
    assert matrices.random_vectors(3, 30, torch.bfloat16, gen).shape == (3, 30)
    assert matrices.derived_seed(0, "W", 64) == matrices.derived_seed(0, "W", 64)
    assert len({matrices.derived_seed(0, "W", 64), matrices.derived_seed(1, "W", 64),
                matrices.derived_seed(0, "x", 64), matrices.derived_seed(0, "W", 65)}) == 4  # fmt: skip
    assert 0 <= matrices.derived_seed(2**62, "big") < 2**63


@pytest.mark.parametrize("batch", [None, 3])
def test_check_passes_the_real_product_and_catches_one_wrong_entry(batch):
    gen = matrices.seeded_generator(1)
    W = matrices.random_pruned(64, 96, 0.5, torch.float16, gen)
    x = matrices.random_vectors(batch, 96, torch.float16, gen)
    y_ref, magnitude = matrices.reference_product(W, x)
    assert y_ref.dtype == torch.float64 and y_ref.shape == (*x.shape[:-1], 64)
    y = macko_spmv.multiply(macko_spmv.compress(W), x)
    matrices.check_product(y, y_ref, magnitude, torch.float16, "multiply")  # passes
    column = int(W[5].nonzero()[0, 0])
    wrong = y.clone()
    wrong[..., 5] += W[5, column] * x[..., column]  # as if one entry were counted twice
    with pytest.raises(matrices.ResultMismatchError, match=f"wrong in {1 if batch is None else batch} of"):
        matrices.check_product(wrong, y_ref, magnitude, torch.float16, "one entry twice")
    nan = y.clone()
    nan[..., 0] = float("nan")
    with pytest.raises(matrices.ResultMismatchError):
        matrices.check_product(nan, y_ref, magnitude, torch.float16, "NaN")
    with pytest.raises(matrices.ResultMismatchError, match="shape"):
        matrices.check_product(y[..., :-1], y_ref, magnitude, torch.float16, "short")


def test_reference_in_row_blocks_equals_plain_float64():
    gen = matrices.seeded_generator(2)
    W = matrices.random_pruned(70, 300_000, 0.01, torch.float32, gen)  # 56 rows per block of 2**24 elements
    x = matrices.random_vectors(2, 300_000, torch.float32, gen)
    y_ref, magnitude = matrices.reference_product(W, x)
    torch.testing.assert_close(y_ref, x.double() @ W.double().T)
    torch.testing.assert_close(magnitude, x.double().abs() @ W.double().abs().T)


@requires_cuda
def test_random_pruned_on_the_gpu():
    W = matrices.random_pruned(2000, 3000, 0.2, torch.float16, matrices.seeded_generator(5, "cuda"))
    assert W.device.type == "cuda" and abs(float((W != 0).float().mean()) - 0.2) < 0.01
