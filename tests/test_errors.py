"""Bad input gets a clear Python exception, and corrupted arrays that bypass
validation can never make a kernel read or write out of bounds."""

import re

import numpy
import pytest
import torch

import macko_spmv
from conftest import random_pruned


@pytest.fixture
def A(device, gen):
    return macko_spmv.compress(random_pruned(12, 50, 0.3, torch.float16, gen).to(device))


def test_compress_rejects(device):
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        macko_spmv.compress([[1.0, 2.0]])
    with pytest.raises(TypeError, match="float16, bfloat16 or float32.*Double"):
        macko_spmv.compress(torch.ones(2, 2, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32.*Int"):
        macko_spmv.compress(torch.ones(2, 2, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"2-D matrix.*\[3\]"):
        macko_spmv.compress(torch.ones(3, device=device))
    with pytest.raises(ValueError, match="2-D matrix"):
        macko_spmv.compress(torch.ones(2, 3, 4, device=device))


def test_multiply_rejects_bad_x(A, device):
    with pytest.raises(ValueError, match="last dimension must equal the matrix's cols = 50"):
        macko_spmv.multiply(A, torch.ones(49, dtype=torch.float16, device=device))
    with pytest.raises(TypeError, match="x must have the matrix's dtype Half"):
        macko_spmv.multiply(A, torch.ones(50, dtype=torch.float32, device=device))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        macko_spmv.multiply(A, [1.0] * 50)
    with pytest.raises(ValueError, match="scalar"):
        macko_spmv.multiply(A, torch.tensor(1.0, dtype=torch.float16, device=device))
    other = "cpu" if device != "cpu" else ("cuda" if torch.cuda.is_available() else "meta")
    with pytest.raises((ValueError, RuntimeError), match="device"):
        macko_spmv.multiply(A, torch.ones(50, dtype=torch.float16, device=other))


def test_multiply_rejects_bad_bias(A, device):
    """The raw op's bias, on the kernels' path and the shape functions'
    (a meta tensor) alike."""
    x = torch.ones(3, A.cols, dtype=A.dtype, device=device)
    meta = [array.to("meta") for array in A[:3]]
    for arrays, where in ((A[:3], device), (meta, "meta")):
        x_here = x.to(where)
        bad = [
            (torch.ones(A.rows, dtype=torch.float32, device=where), TypeError, "bias must have the matrix's dtype (Half|torch.float16)"),
            (torch.ones(A.rows + 1, dtype=A.dtype, device=where), ValueError, r"bias must be \[rows\] = \[12\]"),
            (torch.ones(1, A.rows, dtype=A.dtype, device=where), ValueError, r"bias must be \[rows\] = \[12\]"),
        ]
        for bias, error, message in bad:
            with pytest.raises(error, match=message):
                torch.ops.macko_spmv.multiply(*arrays, A.rows, A.cols, x_here, bias)
    other = "cpu" if device != "cpu" else "meta"
    with pytest.raises(ValueError, match="bias must be on the matrix's device"):
        torch.ops.macko_spmv.multiply(*A[:3], A.rows, A.cols, x, torch.ones(A.rows, dtype=A.dtype, device=other))


def test_multiply_rejects_non_matrix():
    with pytest.raises(TypeError, match="MackoMatrix or a .*tuple"):
        macko_spmv.multiply(torch.ones(3, 3), torch.ones(3))
    with pytest.raises(TypeError, match="MackoMatrix or a .*tuple"):
        macko_spmv.decompress((1, 2, 3))


def corrupt(A, **changes):
    fields = dict(zip(["values", "deltas", "row_indices", "rows", "cols"], A))
    fields.update(changes)
    return fields


CORRUPTIONS = {
    "values not 1-D": (lambda A: corrupt(A, values=A.values.reshape(-1, 8)), ValueError, "1-D"),
    "values float64": (lambda A: corrupt(A, values=A.values.double()), TypeError, "values must be float16"),
    "deltas int8": (lambda A: corrupt(A, deltas=A.deltas.to(torch.int8)), TypeError, "deltas must be uint8"),
    "row_indices float": (lambda A: corrupt(A, row_indices=A.row_indices.float()), TypeError, "int32 or int64"),
    "deltas too short": (lambda A: corrupt(A, deltas=A.deltas[:-4]), ValueError, "one byte per two entries"),
    "values not a multiple of 8": (lambda A: corrupt(A, values=A.values[:-1], deltas=A.deltas[:-1]), ValueError, "multiple of 8"),
    "rows too many": (lambda A: corrupt(A, rows=A.rows + 1), ValueError, "rows \\+ 1 = 14"),
    "rows negative": (lambda A: corrupt(A, rows=-1), ValueError, "non-negative"),
    "cols too small": (lambda A: corrupt(A, cols=3), ValueError, "run past the last column"),
    "row_indices[0] != 0": (lambda A: corrupt(A, row_indices=A.row_indices + 1), ValueError, "row_indices\\[0\\] must be 0"),
    "decreasing": (lambda A: corrupt(A, row_indices=A.row_indices.flip(0).contiguous() - A.row_indices[-1]), ValueError, "non-decreasing"),
    "end past stream": (lambda A: corrupt(A, row_indices=torch.cat([A.row_indices[:-1], A.row_indices[-1:] + 64])), ValueError, "need a stream of"),
    "nonzero stream padding": (lambda A: corrupt(A, values=torch.cat([A.values, torch.ones(8, dtype=A.dtype, device=A.device)]), deltas=torch.cat([A.deltas, torch.zeros(4, dtype=torch.uint8, device=A.device)])), ValueError, "need a stream of"),
    "mixed devices": (lambda A: corrupt(A, row_indices=A.row_indices.to("meta")), ValueError, "one device"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_corrupted_matrix_is_rejected(A, case):
    make, error, message = CORRUPTIONS[case]
    fields = make(A)
    with pytest.raises(error, match=message):
        macko_spmv.MackoMatrix(**fields)
    with pytest.raises(error, match=message):
        macko_spmv.multiply(tuple(fields.values()), torch.ones(fields["cols"], dtype=A.dtype, device=A.device))


def other_devices(device):
    return ["meta"] if device == "cpu" else ["cpu", "meta"]


@pytest.mark.parametrize("moved", ["values", "deltas", "row_indices", "x"])
def test_raw_ops_check_every_device(A, device, moved):
    """The raw ops take the arrays as they come (no MackoMatrix validation):
    one tensor on another device is an error, on the kernels' path (two real
    devices) and on the shape functions' path (a meta tensor) alike."""
    x = torch.ones(A.cols, dtype=A.dtype, device=device)
    for other in other_devices(device):
        arrays = [array.to(other) if name == moved else array
                  for name, array in zip(("values", "deltas", "row_indices"), A[:3])]
        x_moved = x.to(other) if moved == "x" else x
        message = "x must be on the matrix's device" if moved == "x" else "must be on one device"
        with pytest.raises(ValueError, match=message):
            torch.ops.macko_spmv.multiply(*arrays, A.rows, A.cols, x_moved)
        if moved != "x":
            with pytest.raises(ValueError, match=message):
                torch.ops.macko_spmv.decompress(*arrays, A.rows, A.cols)


def test_raw_ops_on_the_meta_device_give_shapes(A):
    meta = [array.to("meta") for array in A[:3]]
    y = torch.ops.macko_spmv.multiply(*meta, A.rows, A.cols, torch.ones(3, A.cols, dtype=A.dtype, device="meta"))
    assert y.device.type == "meta" and y.shape == (3, A.rows) and y.dtype == A.dtype
    assert torch.ops.macko_spmv.decompress(*meta, A.rows, A.cols).shape == (A.rows, A.cols)
    # The meta kernels check what the real ones check.
    with pytest.raises(ValueError, match="rows \\+ 1 = 12"):
        torch.ops.macko_spmv.decompress(*meta, A.rows - 1, A.cols)
    with pytest.raises(TypeError, match="deltas must be uint8"):
        torch.ops.macko_spmv.decompress(meta[0], meta[1].to(torch.int8), meta[2], A.rows, A.cols)
    with pytest.raises(ValueError, match="validate reads the arrays' contents"):
        macko_spmv.MackoMatrix(*meta, A.rows, A.cols)


@pytest.mark.parametrize("rows, cols", [(12.0, 50), (12, 50.7), ("12", 50), (True, 50), (12, None)])
def test_matrix_shape_must_be_integers(A, rows, cols):
    with pytest.raises(TypeError, match="(rows|cols) must be an integer"):
        macko_spmv.MackoMatrix(A.values, A.deltas, A.row_indices, rows, cols)


def test_matrix_shape_takes_integer_types(A):
    B = macko_spmv.MackoMatrix(A.values, A.deltas, A.row_indices, numpy.int64(A.rows), torch.tensor(A.cols))
    assert B.shape == A.shape and type(B.rows) is int and type(B.cols) is int


NO_CUDA_KERNELS = "this build has no CUDA kernels: rebuild with the CUDA toolkit (see README)"


def test_every_op_has_a_cuda_implementation():
    for op in ("compress", "decompress", "multiply"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"macko_spmv::{op}", "CUDA"), op


@pytest.mark.skipif(macko_spmv.ops.build_info()["cuda"] is not None, reason="this build has the CUDA kernels")
def test_cpu_only_build_says_it_has_no_cuda_kernels(gen):
    """A CPU-only build registers CUDA implementations that say what to do.
    Called here through the dispatcher's CUDA entry with CPU tensors, as it
    would be called with CUDA tensors (which need a GPU)."""
    M = random_pruned(12, 50, 0.3, torch.float16, gen)
    A = macko_spmv.compress(M)
    x = torch.ones(50, dtype=torch.float16)
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    ops = torch.ops.macko_spmv
    with pytest.raises(NotImplementedError, match=re.escape(NO_CUDA_KERNELS)):
        ops.compress.default.redispatch(cuda, M)
    with pytest.raises(NotImplementedError, match=re.escape(NO_CUDA_KERNELS)):
        ops.decompress.default.redispatch(cuda, *A)
    with pytest.raises(NotImplementedError, match=re.escape(NO_CUDA_KERNELS)):
        ops.multiply.default.redispatch(cuda, *A, x)
    # The argument checks come first: a wrong argument is named as such.
    with pytest.raises(ValueError, match="x's last dimension"):
        ops.multiply.default.redispatch(cuda, *A, x[:-1])
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        ops.compress.default.redispatch(cuda, M.double())


def test_padding_tail_must_be_zero(A):
    n = int(A.row_indices[-1])
    if n == A.values.numel():
        pytest.skip("no stream padding in this draw")
    values = A.values.clone()
    values[-1] = 1
    with pytest.raises(ValueError, match="padding entries after the last row"):
        macko_spmv.MackoMatrix(values, A.deltas, A.row_indices, A.rows, A.cols)


def test_raw_ops_with_corrupted_contents_stay_in_bounds(device, gen):
    """The raw ops do not read row_indices on the host; the kernels clamp every
    row to the stream and every column to the matrix. (Run under
    compute-sanitizer by scripts/gpu_check.sh.)"""
    A = macko_spmv.compress(random_pruned(40, 300, 0.2, torch.float16, gen).to(device))
    n_padded = A.values.numel()
    bad_pointers = [
        torch.full((41,), -5, dtype=torch.int32),
        torch.full((41,), n_padded + 1000, dtype=torch.int32),
        torch.arange(41, dtype=torch.int32).flip(0) * 50,
        torch.randint(-100, n_padded + 100, (41,), generator=gen, dtype=torch.int32),
        torch.tensor([0] + [n_padded] * 40, dtype=torch.int32),  # every row owns the whole stream
    ]
    bad_deltas = [A.deltas, torch.full_like(A.deltas, 0xFF), torch.zeros_like(A.deltas)]
    x = torch.randn(4, 300, generator=gen).half().to(device)
    for pointers in bad_pointers:
        for deltas in bad_deltas:
            args = (A.values, deltas, pointers.to(device), 40, 300)
            y = torch.ops.macko_spmv.multiply(*args, x)
            d = torch.ops.macko_spmv.decompress(*args)
            assert y.shape == (4, 40) and d.shape == (40, 300)
    if device == "cuda":
        torch.cuda.synchronize()


def test_validate_long_stream(device, gen):
    """validate sums each row's column steps a chunk of 2**22 entries at a
    time: a row that straddles a chunk boundary, and one in a later chunk."""
    M = random_pruned(2500, 2000, 0.9, torch.float16, gen).to(device)
    A = macko_spmv.compress(M)
    assert A.stored_entries > 2**22
    macko_spmv.MackoMatrix(*A)  # validates
    starts = A.row_indices.cpu().long()
    straddling = int(torch.searchsorted(starts, torch.tensor([2**22]), right=True).item()) - 1
    assert starts[straddling] < 2**22 < starts[straddling + 1]
    for row in (straddling, 2400):
        k0, k1 = int(starts[row]), int(starts[row + 1])
        deltas = A.deltas.clone()
        deltas[(k0 + 1) // 2 : k1 // 2] = 0xFF  # every gap of the row 15: ~1800 x 16 columns
        with pytest.raises(ValueError, match=f"row {row}'s deltas run past the last column"):
            macko_spmv.MackoMatrix(A.values, deltas, A.row_indices, A.rows, A.cols)
