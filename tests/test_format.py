"""compress/decompress against the format specification, on every device."""

import pytest
import torch

import macko_spmv
from conftest import DTYPES, adversarial_matrices, poison_allocator, random_pruned
from reference import bits, encode


def assert_matches_reference(A, M):
    values, deltas, row_indices = encode(M.cpu())
    assert A.values.dtype == M.dtype and A.deltas.dtype == torch.uint8 and A.row_indices.dtype == torch.int32
    assert A.values.device == M.device and A.deltas.device == M.device and A.row_indices.device == M.device
    assert (A.rows, A.cols) == tuple(M.shape)
    assert torch.equal(A.row_indices.cpu(), row_indices)
    assert torch.equal(A.deltas.cpu(), deltas)
    assert torch.equal(bits(A.values.cpu()), bits(values))


def test_spec_example_one_row(device):
    M = torch.zeros(1, 48, dtype=torch.float16)
    M[0, 2], M[0, 36], M[0, 46] = 1, 2, 3
    A = macko_spmv.compress(M.to(device))
    n = int(A.row_indices[-1])
    assert A.values.cpu()[:n].tolist() == [1, 0, 0, 2, 3]
    nibbles = [(b >> s) & 0xF for b in A.deltas.cpu().tolist() for s in (0, 4)][:n]
    assert nibbles == [2, 15, 15, 1, 9]


def test_spec_example_three_rows(device):
    M = torch.zeros(3, 32, dtype=torch.float16)
    M[1, 31] = 1
    M[2, 1] = 2
    A = macko_spmv.compress(M.to(device))
    assert A.values.cpu().tolist() == [0, 1, 2, 0, 0, 0, 0, 0]
    assert A.deltas.cpu().tolist() == [0xFF, 0x01, 0x00, 0x00]
    assert A.row_indices.cpu().tolist() == [0, 0, 2, 3]


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.03])
def test_random_matches_reference(device, dtype, density, gen):
    M = random_pruned(37, 211, density, dtype, gen).to(device)
    assert_matches_reference(macko_spmv.compress(M), M)


def test_adversarial_match_reference_and_round_trip(device, dtype, gen):
    for name, M in adversarial_matrices(dtype, gen).items():
        M = M.to(device)
        A = macko_spmv.compress(M)
        assert_matches_reference(A, M)
        poison_allocator(device, M.numel() * M.element_size())
        D = macko_spmv.decompress(A)
        assert D.dtype == M.dtype and D.shape == M.shape, name
        # Equal as numbers (-0.0 == 0.0), NaN where M has NaN.
        assert torch.equal(torch.isnan(D), torch.isnan(M)), name
        same = (D == M) | torch.isnan(M)
        assert bool(same.all()), f"{name}: round trip differs"


def test_round_trip_random(device, dtype, gen):
    for shape in [(1, 1), (2, 3), (64, 64), (101, 389), (5, 1000)]:
        for density in (0.7, 0.2, 0.05):
            M = random_pruned(*shape, density, dtype, gen).to(device)
            D = macko_spmv.decompress(macko_spmv.compress(M))
            assert torch.equal(D, M), (shape, density)


def test_non_contiguous_input(device, gen):
    base = random_pruned(50, 80, 0.3, torch.float32, gen).to(device)
    for M in (base.T, base[::2, 1::3], base[:, :33]):
        assert not M.is_contiguous()
        assert_matches_reference(macko_spmv.compress(M), M)


def test_matrix_properties(device, gen):
    M = random_pruned(64, 128, 0.25, torch.float16, gen).to(device)
    A = macko_spmv.compress(M)
    values, deltas, row_indices, rows, cols = A  # the original tool's 5-tuple
    assert len(A) == 5 and A[3] == 64 and A[4] == 128 and A[0] is values
    assert A.shape == torch.Size([64, 128]) and A.dtype == torch.float16 and A.device == M.device
    assert A.nbytes == values.numel() * 2 + deltas.numel() + row_indices.numel() * 4
    assert A.density == pytest.approx(int((M != 0).sum()) / M.numel())
    assert A.stored_fraction == pytest.approx(int(row_indices[-1]) / M.numel())
    assert A.stored_fraction >= A.density
    B = A.to("cpu")
    assert B.device == torch.device("cpu") and torch.equal(B.values, values.cpu())
    C = A.to(dtype=torch.float32)
    assert C.dtype == torch.float32 and torch.equal(macko_spmv.decompress(C), M.float())
    assert "MackoMatrix(shape=(64, 128)" in repr(A) and "stored_fraction=" in repr(A)


def test_to_takes_the_arguments_of_tensor_to(device, gen):
    M = random_pruned(20, 70, 0.3, torch.float32, gen).to(device)
    A = macko_spmv.compress(M)
    cpu = torch.device("cpu")
    for B, dtype, where in [
        (A.to(torch.float16), torch.float16, A.device),                  # positional dtype: stays
        (A.to("cpu", torch.bfloat16), torch.bfloat16, cpu),              # device and dtype
        (A.to(torch.empty(0, dtype=torch.float16)), torch.float16, cpu),  # another tensor's
        (A.to(device=cpu, non_blocking=True), torch.float32, cpu),
        (A.to("cpu", copy=True), torch.float32, cpu),
    ]:  # fmt: skip
        assert isinstance(B, macko_spmv.MackoMatrix) and B.dtype == dtype and B.device == where
        assert torch.equal(macko_spmv.decompress(B).cpu(), M.cpu().to(dtype))
    # As Tensor.to: unchanged arrays are shared, unless copy=True.
    same = A.to(device)
    assert all(a is b for a, b in zip(A[:3], same[:3]))
    copied = A.to(device, copy=True)
    assert all(a.data_ptr() != b.data_ptr() and torch.equal(a, b) for a, b in zip(A[:3], copied[:3]))
    with pytest.raises(TypeError, match="dtype must be one of"):
        A.to(torch.float64)
    with pytest.raises(TypeError):
        A.to("cpu", "float16")


def test_repr_on_the_meta_device(gen):
    A = macko_spmv.compress(random_pruned(20, 70, 0.3, torch.float16, gen)).to("meta")
    assert repr(A) == f"MackoMatrix(shape=(20, 70), dtype=torch.float16, device=meta, nbytes={A.nbytes})"
    layer = macko_spmv.MackoLinear(random_pruned(20, 70, 0.3, torch.float16, gen)).to("meta")
    assert repr(layer) == f"MackoLinear(in_features=70, out_features=20, bias=False, nbytes={layer.nbytes})"


def test_tuple_from_original_tool_is_accepted(gen):
    """A plain 5-tuple (as the original tool returns) works after validation."""
    M = random_pruned(10, 40, 0.3, torch.float16, gen)
    values, deltas, row_indices = encode(M)
    A = (values, deltas, row_indices, 10, 40)
    assert torch.equal(macko_spmv.decompress(A), M)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pickle_round_trip(tmp_path, dtype, gen):
    A = macko_spmv.compress(random_pruned(9, 33, 0.4, dtype, gen))
    torch.save(A, tmp_path / "a.pt")
    B = torch.load(tmp_path / "a.pt", weights_only=False)
    assert isinstance(B, macko_spmv.MackoMatrix) and B.shape == A.shape
    assert all(torch.equal(a, b) for a, b in zip(A[:3], B[:3]))
    # torch.load's default, weights_only=True: MackoMatrix is a safe global.
    C = torch.load(tmp_path / "a.pt")
    assert isinstance(C, macko_spmv.MackoMatrix) and C.shape == A.shape
    assert all(torch.equal(a, b) for a, b in zip(A[:3], C[:3]))


def test_unpickling_validates(tmp_path, gen):
    A = macko_spmv.compress(random_pruned(9, 33, 0.4, torch.float16, gen))
    broken = macko_spmv.MackoMatrix(A.values, A.deltas, A.row_indices.flip(0).contiguous(), 9, 33, validate=False)
    torch.save({"matrix": broken}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="row_indices"):
        torch.load(tmp_path / "broken.pt")
