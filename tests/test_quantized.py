"""8-bit values (issue 17): compress(M, value_dtype=torch.int8 or
torch.float8_e4m3fn), and decompress, multiply, validate, MackoMatrix,
MackoLinear, sparsify and save/load with them.

A stored q of row r stands for q * scales[r] (docs/FORMAT.md, "8-bit
values"). The references here are built from that definition and the
positions of tests/reference.py, not from the library's decoder:
- the exact dequantized matrix, float64 q * scale at each stored position;
- decompress(A) is it rounded once to the activation dtype, bit for bit
  (finite: a scale is capped so that qmax * scale stays in the dtype's
  range, and validate refuses larger ones);
- it lies within the quantization bound of M, per row;
- multiply(A, x) is decompress(A)'s float64 product, on every device and
  route, within the tolerance of float32 sums and one output rounding
  (check_product); and with x the rows of the identity, decompress(A)
  itself, bit for bit, for every byte value and scales that reach every
  rounding case (test_multiply_rounds_like_decompress).
"""

import io

import pytest
import torch
from torch import nn

import macko_spmv
from conftest import DTYPES, HAS_CUDA, adversarial_matrices, check_product, poison_allocator, random_pruned
from reference import stored_entries
from test_multiply import poisoned_multiply, random_x
from test_multiply_cpu import kernels, route  # noqa: F401  (fixtures: every CPU kernel variant and route)

QMAX = {torch.int8: 127, torch.float8_e4m3fn: 448}
VALUE_DTYPES = list(QMAX)


def short(dtype):
    return str(dtype).split(".")[-1]


@pytest.fixture(params=VALUE_DTYPES, ids=short)
def value_dtype(request):
    return request.param


def value_bits(values):
    """Stored bytes, comparable (float8 tensors have no comparisons)."""
    return values.view(torch.uint8)


def exact_dequantized(M, A):
    """float64 [rows, cols]: q * scale at each position the format stores
    for M (reference.stored_entries), zero elsewhere."""
    positions, _, _ = stored_entries(M.cpu())
    dense = torch.zeros(M.shape, dtype=torch.float64)
    q = A.values.cpu().float().double()
    scales = A.scales.cpu().double()
    for k, (r, c) in enumerate(positions):
        dense[r, c] = q[k] * scales[r]
    return dense


def rounded(exact, dtype):
    """The exact dequantized matrix as decompress returns it: rounded once
    to dtype (nothing saturates: valid scales keep it finite)."""
    out = exact.to(dtype)
    assert bool(torch.isfinite(out).all())
    return out


def scale_cap(qmax, dtype):
    """The largest scale compress gives and validate accepts: the dtype's
    largest number over qmax, rounded down."""
    largest = torch.finfo(dtype).max
    cap = torch.tensor(largest / qmax, dtype=torch.float64).to(dtype)
    while float(cap.double()) * qmax > largest:
        cap = torch.nextafter(cap, torch.zeros_like(cap))
    return float(cap)


def largest_q(qmax, dtype):
    """The least |q| that a row's largest magnitude can take: the scale is
    rounded up by less than the activation dtype's eps (relative), so amax /
    scale > qmax * (1 - eps), which then rounds to nearest (to qmax itself
    for e4m3, whose neighbour of 448 is 416; to 126 or 127 for int8 with
    bf16 scales)."""
    return qmax * (1 - torch.finfo(dtype).eps) - 0.5


def check_scales(M, A, qmax):
    """The scale of each row is amax / qmax rounded up to the activation
    dtype (at least amax / qmax, and the number below it is less), or the
    cap (scale_cap) where that is smaller."""
    amax = M.cpu().abs().amax(dim=1).double() if M.shape[1] else torch.zeros(M.shape[0], dtype=torch.float64)
    scales = A.scales.cpu()
    assert scales.dtype == M.dtype and scales.shape == (M.shape[0],)
    cap = scale_cap(qmax, M.dtype)
    assert bool((scales.double() <= cap).all())
    capped = scales.double() == cap
    assert bool((scales.double() * qmax >= amax)[~capped].all())
    below = torch.nextafter(scales, torch.zeros_like(scales))
    positive = scales > 0
    assert bool((below.double()[positive] * qmax < amax[positive]).all())
    assert torch.equal(positive, amax > 0)  # 0 exactly for a row of zeros


def check_quantization_bound(M, A, value_dtype):
    """decompress(A) against M, per element: the rounding of q (int8: half a
    step, scale / 2; e4m3: its relative precision 2^-4 |v|, and half its
    subnormal spacing, 2^-10 scale, near zero), plus the one rounding of
    q * scale to the activation dtype. A row whose scale is capped
    (scale_cap) also clamps its entries beyond qmax * scale to that."""
    M64 = M.cpu().double()
    exact = exact_dequantized(M, A)
    D = macko_spmv.decompress(A)
    assert D.dtype == M.dtype and D.shape == M.shape and D.device == M.device
    # decompress is the exact product rounded once (q * scale is exact in
    # float32 for 16-bit scales, so .to(dtype) rounds once from float64).
    assert torch.equal(D.cpu(), rounded(exact, M.dtype))
    scale = A.scales.cpu().double().unsqueeze(1)
    if value_dtype == torch.int8:
        q_error = scale / 2
    else:
        q_error = 2.0**-4 * M64.abs() + 2.0**-10 * scale
    q_error = q_error + (M64.abs() - QMAX[value_dtype] * scale).clamp(min=0)
    unit = torch.finfo(M.dtype).eps / 2
    bound = q_error * (1 + 1e-6) + unit * exact.abs() + torch.finfo(M.dtype).tiny * unit
    error = (D.cpu().double() - M64).abs()
    assert bool((error <= bound).all()), f"worst excess {float((error - bound).max())}"
    q = A.values.cpu().float()
    assert bool((q.abs() <= QMAX[value_dtype]).all())


def product_reference(A, M, x):
    """(y_ref, magnitude) in float64 for multiply(A, x): the product of
    decompress(A), each entry rounded to the activation dtype, on every
    device and route (the CPU kernels read each row's values from a table
    of its dequantized values, Ops::row_table in
    csrc/cpu/multiply_kernels.inc; CUDA's streaming kernel dequantizes each
    entry so, csrc/cuda/group_decode.cuh, its other routes into a
    temporary, csrc/cuda/dequantize.cuh). M is unused (kept for the
    callers' symmetry with the bound checks)."""
    W = macko_spmv.decompress(A).cpu().double()
    x64 = x.cpu().double()
    return x64 @ W.T, x64.abs() @ W.abs().T


def check_quantized_product(A, M, x, bias=None):
    y = poisoned_multiply(A, x) if bias is None else macko_spmv.ops.multiply(*A[:5], x, bias, A.scales)
    assert y.dtype == M.dtype and y.device == M.device
    assert y.shape == (*x.shape[:-1], M.shape[0])
    y_ref, magnitude = product_reference(A, M, x)
    if bias is not None:
        y_ref = y_ref + bias.cpu().double()
    check_product(y.cpu(), y_ref, magnitude, M.dtype, f"multiply with {A.value_dtype} values")


SHAPES = [(1, 1), (1, 300), (300, 1), (37, 101), (13, 97), (64, 64), (5, 1031)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
def test_quantization(device, dtype, value_dtype, shape, density, gen):
    M = random_pruned(*shape, density, dtype, gen)
    M[torch.rand(shape[0], generator=gen) < 0.2] = 0  # empty rows
    M = M.to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    plain = macko_spmv.compress(M)
    assert isinstance(A, macko_spmv.MackoMatrix) and len(A) == 6
    assert A.dtype == dtype and A.value_dtype == value_dtype and A.device == M.device
    # The pattern is M's: the same stream, 8-bit values.
    assert torch.equal(A.deltas, plain.deltas) and torch.equal(A.row_indices, plain.row_indices)
    assert A.values.shape == plain.values.shape
    check_scales(M, A, QMAX[value_dtype])
    check_quantization_bound(M, A, value_dtype)
    A.validate()
    for batch in (None, 3, 20):
        x = random_x(((batch,) if batch else ()) + (shape[1],), dtype, gen, device)
        check_quantized_product(A, M, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=short)
def test_cpu_kernels_and_routes(kernels, route, dtype, value_dtype, gen):  # noqa: F811
    """Every CPU kernel variant and route, with and without the bias,
    batches that fill 1, part of 1 and several register tiles."""
    for shape in [(1, 300), (300, 1), (37, 101), (67, 1031)]:
        M = random_pruned(*shape, 0.4, dtype, gen)
        M[torch.rand(shape[0], generator=gen) < 0.2] = 0
        A = macko_spmv.compress(M, value_dtype=value_dtype)
        for batch in (None, 1, 3, 5, 17, 65):
            x = random_x(((batch,) if batch else ()) + (shape[1],), dtype, gen, "cpu")
            check_quantized_product(A, M, x)
        bias = random_x((shape[0],), dtype, gen, "cpu")
        check_quantized_product(A, M, random_x((4, shape[1]), dtype, gen, "cpu"), bias)


def every_byte_matrix(value_dtype, dtype, gen):
    """A MackoMatrix of 256 columns whose every row stores each byte value
    once, byte b in column b (the bytes validate refuses, int8's -128 and
    e4m3's two NaN encodings, stored as 0 instead), with scales that reach
    each case of rounding q * scale to dtype: 0, 1, products that need more
    bits than dtype has (ties included), the largest valid scale (products
    up to dtype's largest values), its smallest normal and subnormal numbers
    (results that round to subnormals or to 0), and random scales over a
    range of exponents."""
    info = torch.finfo(dtype)
    tiny = info.smallest_normal
    cap = scale_cap(QMAX[value_dtype], dtype)
    scales = [0.0, 1.0, 1 + info.eps, 3 - 2 * info.eps, cap, cap / 1.5, cap / 100, cap * (1 - 4 * info.eps),
              tiny, tiny * info.eps, 3 * tiny * info.eps, tiny * 0.75, 1 / 3, 1e-3]
    random = torch.rand(18, generator=gen, dtype=torch.float64) * torch.exp2(
        torch.randint(-30, 30, (18,), generator=gen).double()).clamp(max=cap)
    scales = torch.cat([torch.tensor(scales, dtype=torch.float64), random]).to(dtype)
    assert bool(torch.isfinite(scales).all()) and bool((scales >= 0).all())
    rows = scales.numel()
    row_bytes = torch.arange(256, dtype=torch.int32)
    if value_dtype == torch.float8_e4m3fn:
        row_bytes[(row_bytes & 0x7F) == 0x7F] = 0
    else:
        row_bytes[row_bytes == 0x80] = 0
    values = row_bytes.to(torch.uint8).repeat(rows).view(value_dtype)
    deltas = torch.zeros(rows * 128, dtype=torch.uint8)  # every gap 0: columns 0, 1, ..., 255
    row_indices = torch.arange(rows + 1, dtype=torch.int32) * 256
    return macko_spmv.MackoMatrix(values, deltas, row_indices, rows, 256, scales)


def check_rounds_like_decompress(A, dtype, gen, one_vector_calls):
    """multiply(A, x) multiplies decompress(A)'s matrix exactly, bit for
    bit: with x the rows of the identity, y is decompress(A) transposed (one
    dequantized entry times 1 plus zeros); with x = e_c + e_(c + shift),
    each output is the float32 sum of two of decompress(A)'s entries rounded
    to dtype (which scaling a row's sum of q instead would not give).
    decompress(A) itself is q * scale rounded once to dtype (float64
    reference). one_vector_calls: each column of x in a call of its own
    (the one-vector kernels), else x as one batch. A on any device."""
    device = A.device
    D = macko_spmv.decompress(A).cpu()
    exact = A.values.cpu().float().double().view(A.rows, 256) * A.scales.cpu().double()[:, None]
    assert torch.equal(D, rounded(exact, dtype))
    identity = torch.eye(256, dtype=dtype)
    for shift in (0, 1, 101):
        x = identity if shift == 0 else identity + identity.roll(shift, dims=1)
        expected = D if shift == 0 else (D.float() + D.float().roll(-shift, dims=1)).to(dtype)
        x = x.to(device)
        if one_vector_calls:
            y = torch.stack([macko_spmv.multiply(A, x[c]) for c in range(256)])
        else:
            y = macko_spmv.multiply(A, x)
        assert y.dtype == dtype
        y = y.cpu()
        mismatch = (y.T != expected).nonzero()  # no NaN: every entry is finite
        assert mismatch.numel() == 0, (
            f"shift {shift}: {len(mismatch)} outputs differ, first at (row, byte) {tuple(mismatch[0].tolist())}: "
            f"multiply {float(y.T[tuple(mismatch[0])])} vs decompress's {float(expected[tuple(mismatch[0])])}")
    # With a bias and a general x, still decompress's product (on the rows
    # whose sums stay well inside dtype's range: not those of the largest
    # scales).
    x = random_x((3, 256), dtype, gen, "cpu")
    bias = random_x((A.rows,), dtype, gen, "cpu")
    y = macko_spmv.ops.multiply(*A[:5], x.to(device), bias.to(device), A.scales).cpu()
    y_ref, magnitude = product_reference(A, None, x)
    keep = (magnitude + bias.double().abs()).amax(dim=0) < torch.finfo(dtype).max / 4
    assert int(keep.sum()) >= 10
    if device.type == "cuda":
        # The GPU adds the bias to the rounded product, in a second pass
        # (csrc/ops.cpp): the product is checked, then the sum exactly,
        # with the NaN and inf of the rows of the largest scales (their sums
        # overflow) in the same places.
        product = macko_spmv.ops.multiply(*A[:5], x.to(device), None, A.scales).cpu()
        check_product(product[:, keep], y_ref[:, keep], magnitude[:, keep], dtype, "multiply with every byte value",
                      terms=256)  # the rows of the smallest scales sum products near float32's subnormals
        torch.testing.assert_close(y, (product.float() + bias.float()).to(dtype), rtol=0, atol=0, equal_nan=True)
    else:
        check_product(y[:, keep], (y_ref + bias.double())[:, keep], magnitude[:, keep], dtype,
                      "multiply with every byte value", terms=256)


@pytest.mark.parametrize("dtype", DTYPES, ids=short)
def test_multiply_rounds_like_decompress(kernels, route, dtype, value_dtype, gen):  # noqa: F811
    """check_rounds_like_decompress on every CPU kernel variant and route."""
    check_rounds_like_decompress(every_byte_matrix(value_dtype, dtype, gen), dtype, gen, route == "vector")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=short)
@pytest.mark.parametrize("cuda_route", ["stream", "tiles", "dense"])
def test_cuda_routes_round_like_decompress(cuda_route, dtype, value_dtype, gen, monkeypatch):
    """check_rounds_like_decompress on each CUDA route: with fp16 and bf16
    x the streaming kernel's own dequantization (the int8 and e4m3
    conversions of group_decode.cuh; one vector a call and batches), the
    dequantized temporary (dequantize.cu) on the other routes and for fp32
    x on every route."""
    monkeypatch.setenv("MACKO_MULTIPLY_ROUTE", cuda_route)
    A = every_byte_matrix(value_dtype, dtype, gen).to("cuda")
    check_rounds_like_decompress(A, dtype, gen, one_vector_calls=False)
    if cuda_route == "stream" and dtype != torch.float32:
        check_rounds_like_decompress(A, dtype, gen, one_vector_calls=True)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=short)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=short)
def test_cuda_dequantizes_unaligned_rows(index_dtype, dtype, value_dtype, gen):
    """every_byte_matrix's rows start at multiples of 256 entries; here a
    first row of 7 entries shifts every row off the 16-entry chunks of
    dequantize.cu, so each row has a head and a tail taken entry by entry:
    the GPU's decompress and products equal the CPU's, bit for bit, with
    32- and 64-bit row pointers."""
    A = every_byte_matrix(value_dtype, dtype, gen)
    rows = A.rows + 1
    n = 7 + A.rows * 256
    padded = (n + 7) // 8 * 8
    values = torch.zeros(padded, dtype=torch.uint8)
    values[:7] = torch.arange(1, 8, dtype=torch.uint8)
    values[7:n] = A.values.view(torch.uint8)
    row_indices = torch.cat([torch.zeros(1, dtype=torch.int64), 7 + A.row_indices.long()]).to(index_dtype)
    scales = torch.cat([torch.ones(1, dtype=dtype), A.scales])
    B = macko_spmv.MackoMatrix(values.view(value_dtype), torch.zeros(padded // 2, dtype=torch.uint8), row_indices,
                               rows, 256, scales)
    G = B.to("cuda")
    D = macko_spmv.decompress(B)
    assert torch.equal(macko_spmv.decompress(G).cpu(), D)
    for route in ("stream", "tiles", "dense"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MACKO_MULTIPLY_ROUTE", route)
            y = macko_spmv.multiply(G, torch.eye(256, dtype=dtype, device="cuda")).cpu()
        assert torch.equal(y.T, D), route


def test_adversarial_matrices(device, dtype, value_dtype, gen):
    """conftest's corner cases (zero runs around the nibble limit, empty
    rows and shapes, -0.0); the one with NaN and Inf must be refused."""
    for name, M in adversarial_matrices(dtype, gen).items():
        M = M.to(device)
        if not bool(torch.isfinite(M).all()):
            with pytest.raises(ValueError, match="NaN or Inf"):
                macko_spmv.compress(M, value_dtype=value_dtype)
            continue
        A = macko_spmv.compress(M, value_dtype=value_dtype)
        check_scales(M, A, QMAX[value_dtype])
        check_quantization_bound(M, A, value_dtype)
        x = random_x((2, M.shape[1]), dtype, gen, device)
        if M.shape[1] == 0:
            assert torch.equal(macko_spmv.multiply(A, x).cpu(), torch.zeros(2, M.shape[0], dtype=dtype)), name
        else:
            check_quantized_product(A, M, x)


def test_zero_rows_and_rows_without_positive_values(device, dtype, value_dtype):
    """A row of zeros (scale 0, nothing stored), a row of -0.0 (the same),
    a row whose maximum is 0 (every value <= 0: the scale comes from the
    magnitudes), a row with one stored nonzero after a padding entry."""
    M = torch.zeros(5, 40, dtype=dtype)
    M[1] = -0.0
    M[2, ::3] = -torch.arange(1, 15, dtype=dtype)
    M[3, 33] = 2.5
    M = M.to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    scales = A.scales.cpu().double()
    assert scales[0] == 0 and scales[1] == 0 and scales[4] == 0
    assert scales[2] * QMAX[value_dtype] >= 14 and scales[3] * QMAX[value_dtype] >= 2.5
    check_quantization_bound(M, A, value_dtype)
    # The most negative value of row 2 takes about -qmax; row 3's one value +qmax.
    q = A.values.cpu().float()
    assert -QMAX[value_dtype] <= float(q.min()) <= -largest_q(QMAX[value_dtype], dtype)
    assert QMAX[value_dtype] >= float(q.max()) >= largest_q(QMAX[value_dtype], dtype)
    x = torch.ones(40, dtype=dtype, device=device)
    check_quantized_product(A, M, x)
    zero = torch.zeros(6, 9, dtype=dtype, device=device)
    Z = macko_spmv.compress(zero, value_dtype=value_dtype)
    assert torch.equal(Z.scales.cpu(), torch.zeros(6, dtype=dtype)) and Z.values.numel() == 0
    bias = torch.arange(6, dtype=dtype, device=device)
    y = macko_spmv.ops.multiply(*Z[:5], torch.ones(9, dtype=dtype, device=device), bias, Z.scales)
    assert torch.equal(y.cpu(), bias.cpu())


def test_entries_that_quantize_to_zero_stay_stored(device, dtype, value_dtype):
    """The pattern is M's, as to(dtype) keeps patterns: a tiny entry beside
    a large one in its row is stored as a zero."""
    M = torch.zeros(2, 20, dtype=dtype)
    M[0, 0] = 1000.0
    M[0, 7] = 1e-3
    M[1, 9] = -3.0
    M = M.to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    assert A.stored_entries == 3
    q = A.values.cpu().float()
    assert q[1] == 0 and q[0] >= largest_q(QMAX[value_dtype], dtype) and q[2] <= -largest_q(QMAX[value_dtype], dtype)
    assert A.density == pytest.approx(2 / 40)  # the zero counts as zero
    check_quantization_bound(M, A, value_dtype)


def test_range_limits(device, dtype, value_dtype):
    """Each row's largest magnitude maps to +-qmax (448 for e4m3, its
    largest finite value; never its NaN encodings), at the largest values
    the activation dtype holds and at its smallest subnormals, where the
    scale underflows to 0 and the smallest positive number is used."""
    info = torch.finfo(dtype)
    tiny = info.smallest_normal * info.eps  # the smallest subnormal
    M = torch.zeros(6, 16, dtype=dtype)
    M[0, :4] = torch.tensor([info.max, -info.max, info.max / 3, 1.0])
    M[1, :3] = torch.tensor([448.0, -448.0, 1.0])
    M[2, :2] = torch.tensor([tiny, -tiny])
    M[3, :2] = torch.tensor([3 * tiny, tiny])
    M[4, :3] = torch.tensor([1.0, 0.5, -1.0])
    M[5, 5] = info.smallest_normal
    M = M.to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    qmax = QMAX[value_dtype]
    q = A.values.cpu().float()
    assert bool(torch.isfinite(q).all())
    if value_dtype == torch.float8_e4m3fn:
        assert not bool(((value_bits(A.values.cpu()) & 0x7F) == 0x7F).any())  # no NaN bytes
    assert bool((A.scales.cpu() > 0).all()) and bool(torch.isfinite(A.scales.cpu()).all())
    least = largest_q(qmax, dtype)
    assert qmax >= q[0] >= least and -qmax <= q[1] <= -least  # row 0's +-max
    assert qmax >= q[4] >= least and -qmax <= q[5] <= -least  # row 1's +-448
    check_scales(M, A, qmax)
    check_quantization_bound(M, A, value_dtype)
    x = torch.ones(16, dtype=dtype, device=device) / 4
    check_quantized_product(A, M, x)


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_are_refused(device, dtype, value_dtype, special):
    M = torch.ones(4, 9, dtype=dtype)
    M[2, 5] = special
    with pytest.raises(ValueError, match=r"NaN or Inf \(first in row 2\)"):
        macko_spmv.compress(M.to(device), value_dtype=value_dtype)
    macko_spmv.compress(M.to(device))  # 16-bit values store them, as before


def test_value_dtype_must_be_8_bit():
    M = torch.ones(2, 3)
    for bad in (torch.float16, torch.uint8, "int8", torch.float8_e5m2):
        with pytest.raises(TypeError, match="value_dtype must be None, torch.int8 or torch.float8_e4m3fn"):
            macko_spmv.compress(M, value_dtype=bad)


def test_default_keeps_the_five_tuple(device, dtype, gen):
    """value_dtype=None is today's compress, byte for byte."""
    M = random_pruned(37, 101, 0.3, dtype, gen).to(device)
    A, B = macko_spmv.compress(M), macko_spmv.compress(M, value_dtype=None)
    assert len(A) == len(B) == 5 and A.scales is None and A.value_dtype == A.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(A[:3], B[:3])) and A[3:] == B[3:]
    assert "value_dtype" not in repr(A)


def test_matrix_properties(value_dtype, gen):
    M = random_pruned(37, 101, 0.5, torch.float16, gen)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    values, deltas, row_indices, rows, cols, scales = A
    assert (rows, cols) == (37, 101) and A.scales is scales and A.shape == torch.Size([37, 101])
    assert values.dtype == value_dtype and values.element_size() == 1
    assert A.nbytes == values.numel() + deltas.numel() + row_indices.numel() * 4 + scales.numel() * 2
    assert A.nbytes < macko_spmv.compress(M).nbytes
    assert f"value_dtype={value_dtype}" in repr(A) and "dtype=torch.float16" in repr(A)
    # A 6-tuple is accepted (validated) where a MackoMatrix is.
    y = macko_spmv.multiply(tuple(A), torch.ones(101, dtype=torch.float16))
    assert torch.equal(y, macko_spmv.multiply(A, torch.ones(101, dtype=torch.float16)))
    assert torch.equal(macko_spmv.decompress(list(A)), macko_spmv.decompress(A))
    with pytest.raises(ValueError, match="scales must be finite"):
        macko_spmv.MackoMatrix(values, deltas, row_indices, rows, cols, -scales)


def test_to_converts_the_activation_dtype(device, value_dtype, gen):
    M = random_pruned(20, 70, 0.3, torch.float32, gen).to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    B = A.to(torch.float16)
    assert B.dtype == torch.float16 and B.value_dtype == value_dtype
    assert torch.equal(value_bits(B.values), value_bits(A.values)) and B.values is A.values
    assert torch.equal(B.scales, A.scales.half())
    B.validate()
    assert torch.equal(A.to("cpu").scales, A.scales.cpu()) and A.to("cpu").device.type == "cpu"
    copied = A.to(device, copy=True)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(A.arrays, copied.arrays))
    with pytest.raises(TypeError, match="dtype must be one of"):
        A.to(torch.int8)
    huge = macko_spmv.compress(torch.full((2, 3), 1e10, device=device), value_dtype=value_dtype)
    with pytest.raises(ValueError, match="scales overflow torch.float16"):
        huge.to(torch.float16)
    # A scale finite in fp16 whose values are not (qmax * scale > 65504).
    qmax = QMAX[value_dtype]
    large = macko_spmv.compress(torch.full((2, 3), 600.0 * qmax, device=device), value_dtype=value_dtype)
    assert float(large.scales.half().max()) < 65504
    with pytest.raises(ValueError, match=f"scales overflow torch.float16 .* times {qmax}"):
        large.to(torch.float16)
    large.to(torch.bfloat16).validate()


def test_checks_of_the_raw_ops(device, value_dtype, gen):
    """Missing, superfluous or malformed scales, x and bias in the wrong
    dtype: the kernels' checks and the shape functions' (meta) alike."""
    A = macko_spmv.compress(random_pruned(12, 50, 0.3, torch.float16, gen).to(device), value_dtype=value_dtype)
    plain = macko_spmv.compress(random_pruned(12, 50, 0.3, torch.float16, gen).to(device))
    ops = torch.ops.macko_spmv
    for where in (device, "meta"):
        arrays = [array.to(where) for array in A[:3]]
        plain_arrays = [array.to(where) for array in plain[:3]]
        scales = A.scales.to(where)
        x = torch.ones(50, dtype=torch.float16, device=where)
        bad = [
            ((*arrays, 12, 50, x), ValueError, "values of dtype .* need scales"),
            ((*plain_arrays, 12, 50, x, None, scales), ValueError, "scales apply to int8 and float8_e4m3fn values only"),
            ((*arrays, 12, 50, x, None, scales.int()), TypeError, "scales must be float16, bfloat16 or float32"),
            ((*arrays, 12, 50, x, None, scales[:11]), ValueError, r"scales must be \[rows\] = \[12\]"),
            ((*arrays, 12, 50, x, None, scales.repeat(2)[::2]), ValueError, "scales must be contiguous"),
            ((*arrays, 12, 50, x.float(), None, scales), TypeError, "x must have the matrix's dtype"),
            ((*arrays, 12, 50, x, torch.ones(12, device=where), scales), TypeError, "bias must have the matrix's dtype"),
        ]
        for args, error, message in bad:
            with pytest.raises(error, match=message):
                ops.multiply(*args)
        with pytest.raises(ValueError, match="need scales"):
            ops.decompress(*arrays, 12, 50)
        with pytest.raises(TypeError, match="scales must be float16"):
            ops.decompress(*arrays, 12, 50, scales.double())
        out = ops.multiply(*arrays, 12, 50, x.float(), None, scales.float())
        assert out.dtype == torch.float32 and out.shape == (12,)  # the activation dtype is the scales'
    if HAS_CUDA and device == "cpu":
        with pytest.raises(ValueError, match="scales must be on the values' device"):
            ops.multiply(*A[:5], torch.ones(50, dtype=torch.float16), None, A.scales.cuda())
    for scale, message in ((float("nan"), "nan"), (float("inf"), "inf"), (-1.0, "-1")):
        scales = A.scales.clone()
        scales[7] = scale
        with pytest.raises(ValueError, match=f"scales must be finite and >= 0; row 7's scale is {message}"):
            ops.validate(*A[:5], scales)
    # A scale whose qmax multiple passes the dtype's largest number (every
    # dequantized value must be finite), and the largest that does not.
    qmax = QMAX[value_dtype]
    cap = scale_cap(qmax, torch.float16)
    scales = A.scales.clone()
    scales[4] = cap
    ops.validate(*A[:5], scales)
    scales[4] = torch.nextafter(torch.tensor(cap, dtype=torch.float16), torch.tensor(float("inf"), dtype=torch.float16))
    with pytest.raises(ValueError, match=f"row 4's scale .* times {qmax} passes the largest Half"):
        ops.validate(*A[:5], scales)
    # The bytes compress never stores: int8's -128, e4m3's NaN encodings.
    row_indices = A.row_indices.cpu()
    row = int(torch.nonzero(row_indices[1:] > row_indices[:-1])[-1])  # the last row that stores entries
    entry = int(row_indices[row])
    for byte in ((0x80,) if value_dtype == torch.int8 else (0x7F, 0xFF)):
        values = A.values.clone()
        values.view(torch.uint8)[entry] = byte
        expected = "-128, outside the symmetric int8 range" if value_dtype == torch.int8 else "a NaN of float8_e4m3fn"
        with pytest.raises(ValueError, match=rf"values\[{entry}\] \(row {row}\) is {expected}"):
            ops.validate(values, *A[1:])


def test_poisoned_outputs(device, dtype, value_dtype, gen):
    """Every element of decompress's and multiply's outputs is written:
    fresh memory is filled with NaN first."""
    M = random_pruned(37, 101, 0.3, dtype, gen)
    M[5] = 0
    M = M.to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    poison_allocator(device, 4 * 37 * 101 * 4)
    D = macko_spmv.decompress(A)
    assert bool(torch.isfinite(D).all()) and torch.equal(D.cpu(), rounded(exact_dequantized(M, A), dtype))
    for batch in (None, 2, 40):
        x = random_x(((batch,) if batch else ()) + (101,), dtype, gen, device)
        check_quantized_product(A, M, x)


def test_opcheck(device, value_dtype, gen):
    M = random_pruned(19, 53, 0.3, torch.float32, gen).to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    multiply = torch.ops.macko_spmv.multiply.default
    # opcheck's test_schema compares the inputs before and after the call
    # with allclose, which torch does not implement for float8 tensors.
    utils = {}
    if value_dtype == torch.float8_e4m3fn:
        utils["test_utils"] = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for x in (random_x((53,), torch.float32, gen, device), random_x((4, 53), torch.float32, gen, device)):
        bias = random_x((19,), torch.float32, gen, device)
        torch.library.opcheck(multiply, (*A[:5], x), {"scales": A.scales}, **utils)
        torch.library.opcheck(multiply, (*A[:5], x.clone().requires_grad_(), None, A.scales), **utils)
        torch.library.opcheck(multiply, (*A[:5], x.clone().requires_grad_(), bias.clone().requires_grad_(),
                                         A.scales), **utils)
    torch.library.opcheck(torch.ops.macko_spmv.decompress.default, tuple(A), **utils)


def test_gradient_to_x(device, value_dtype, gen):
    M = random_pruned(13, 23, 0.5, torch.float32, gen).to(device)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    x = random_x((3, 23), torch.float32, gen, device).requires_grad_()
    w = random_x((3, 13), torch.float32, gen, device)
    (macko_spmv.multiply(A, x) * w).sum().backward()
    expected = w.double().cpu() @ macko_spmv.decompress(A).double().cpu()
    assert torch.allclose(x.grad.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    # With a bias beside the scales (each optional input shifts the others'
    # places among the op's tensor inputs): dL/dx and dL/dbias still.
    x.grad = None
    bias = random_x((13,), torch.float32, gen, device).requires_grad_()
    (torch.ops.macko_spmv.multiply(*A[:5], x, bias, A.scales) * w).sum().backward()
    assert torch.allclose(x.grad.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(bias.grad.double().cpu(), w.double().cpu().sum(0), rtol=1e-6, atol=1e-6)
    scales = A.scales.clone().requires_grad_()
    for bias in (None, bias.detach()):
        y = torch.ops.macko_spmv.multiply(*A[:5], x.detach(), bias, scales)
        with pytest.raises(NotImplementedError, match="values or scales"):
            y.sum().backward()


def test_torch_compile_fullgraph_cpu(value_dtype, gen):
    M = random_pruned(33, 65, 0.3, torch.float32, gen)
    A = macko_spmv.compress(M, value_dtype=value_dtype)

    @torch.compile(fullgraph=True)
    def layer(x):
        return torch.relu(macko_spmv.multiply(A, x)) * 2

    for x in (random_x((65,), torch.float32, gen, "cpu"), random_x((3, 65), torch.float32, gen, "cpu")):
        assert torch.equal(layer(x), torch.relu(macko_spmv.multiply(A, x)) * 2)
    linear = macko_spmv.MackoLinear(M, bias=torch.ones(33), value_dtype=value_dtype)
    compiled = torch.compile(linear, fullgraph=True)
    x = random_x((4, 65), torch.float32, gen, "cpu")
    assert torch.equal(compiled(x), linear(x))


def test_pickle_round_trip(value_dtype, gen):
    A = macko_spmv.compress(random_pruned(20, 70, 0.3, torch.bfloat16, gen), value_dtype=value_dtype)
    buffer = io.BytesIO()
    torch.save(A, buffer)
    buffer.seek(0)
    B = torch.load(buffer)  # weights_only=True: MackoMatrix is a safe global
    assert isinstance(B, macko_spmv.MackoMatrix) and len(B) == 6
    assert torch.equal(value_bits(B.values), value_bits(A.values)) and torch.equal(B.scales, A.scales)


def sparse_linear(in_features, out_features, dtype, gen, bias=True):
    linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(random_pruned(out_features, in_features, 0.5, dtype, gen))
    return linear


def test_macko_linear(device, dtype, value_dtype, gen):
    linear = sparse_linear(101, 37, dtype, gen).to(device)
    layer = macko_spmv.MackoLinear.from_linear(linear, value_dtype=value_dtype)
    assert layer.value_dtype == value_dtype and layer.weight.dtype == dtype and layer.scales.dtype == dtype
    assert layer.matrix.value_dtype == value_dtype and layer.nbytes == layer.matrix.nbytes
    assert f"value_dtype={value_dtype}" in repr(layer)
    x = random_x((2, 5, 101), dtype, gen, device)
    A = layer.matrix
    y_ref, magnitude = product_reference(A, linear.weight.detach(), x.reshape(-1, 101))
    check_product(layer(x).reshape(-1, 37).detach().cpu(), y_ref + linear.bias.detach().cpu().double(), magnitude,
                  dtype, "MackoLinear")
    dense = layer.to_linear()
    assert dense.weight.dtype == dtype and torch.equal(dense.weight, macko_spmv.decompress(A))
    with pytest.raises(TypeError, match="value_dtype applies to a dense weight"):
        macko_spmv.MackoLinear(A, value_dtype=value_dtype)


def test_macko_linear_conversions(value_dtype, gen):
    """.half() and .to(dtype) change the activation dtype (scales, bias);
    the 8-bit values stay as they are (float8 is a floating dtype, which a
    module cast would otherwise convert); .double() is refused."""
    layer = macko_spmv.MackoLinear.from_linear(sparse_linear(64, 24, torch.float32, gen), value_dtype=value_dtype)
    values = layer.values.clone()
    layer.half()
    assert layer.values.dtype == value_dtype and torch.equal(value_bits(layer.values), value_bits(values))
    assert layer.scales.dtype == layer.bias.dtype == layer.weight.dtype == torch.float16
    assert layer(torch.ones(3, 64, dtype=torch.float16)).dtype == torch.float16
    layer.to(torch.bfloat16)
    assert layer.values.dtype == value_dtype and layer.scales.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="cannot be converted to torch.float64"):
        layer.double()
    assert layer.values.dtype == value_dtype and layer.scales.dtype == torch.bfloat16
    layer.to("meta")
    assert layer.values.dtype == value_dtype and layer.values.is_meta and layer.scales.is_meta
    # A scale finite in fp16 whose values are not (qmax * scale > 65504):
    # refused, as MackoMatrix.to refuses it, and the layer left as it was.
    linear = nn.Linear(8, 2, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.fill_(600.0 * QMAX[value_dtype])
    large = macko_spmv.MackoLinear.from_linear(linear, value_dtype=value_dtype)
    with pytest.raises(ValueError, match=f"scales overflow torch.float16 .* times {QMAX[value_dtype]}"):
        large.half()
    assert large.scales.dtype == torch.float32


def test_state_dict_round_trip(device, value_dtype, gen):
    """A quantized layer's state dict loads into a 16-bit layer (which takes
    8-bit values and keeps its dtype), and a 16-bit one back into it."""
    linear = sparse_linear(70, 20, torch.float16, gen).to(device)
    quantized = macko_spmv.MackoLinear.from_linear(linear, value_dtype=value_dtype)
    state = quantized.state_dict()
    assert set(state) == {"values", "deltas", "row_indices", "dense_shape", "scales", "bias"}
    target = macko_spmv.MackoLinear.from_linear(sparse_linear(70, 20, torch.float16, gen).to(device))
    target.load_state_dict(state)
    assert target.value_dtype == value_dtype and target.scales.dtype == torch.float16
    x = random_x((3, 70), torch.float16, gen, device)
    assert torch.equal(target(x), quantized(x))
    plain = macko_spmv.MackoLinear.from_linear(linear)
    target.load_state_dict(plain.state_dict())
    assert target.value_dtype == torch.float16 and "scales" not in target.state_dict()
    assert torch.equal(target(x), plain(x))
    bad = dict(state, scales=-state["scales"])
    with pytest.raises(RuntimeError, match="scales must be finite and >= 0"):
        target.load_state_dict(bad)


def test_sparsify_save_and_load(tmp_path, value_dtype, gen):
    def model(device=None):
        with torch.device(device or "cpu"):
            return nn.Sequential(nn.Linear(101, 37), nn.ReLU(), nn.Linear(37, 64), nn.Linear(64, 8))

    net = model()
    for layer in (net[0], net[2]):
        with torch.no_grad():
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=gen) < 0.5)
    report = macko_spmv.SparsifyReport()
    macko_spmv.sparsify(net, min_sparsity=0.4, value_dtype=value_dtype, progress=False, verbose=False, report=report)
    assert [layer.name for layer in report.converted] == ["0", "2"] and isinstance(net[3], nn.Linear)
    assert all(layer.macko_bytes == getattr(net, layer.name).nbytes for layer in report.converted)
    assert net[0].value_dtype == net[2].value_dtype == value_dtype
    x = torch.randn(5, 101, generator=gen)
    expected = net(x)
    path = tmp_path / "model.safetensors"
    macko_spmv.save(net, path)
    for target in (model("meta"), model()):
        macko_spmv.load(target, path)
        assert target[0].value_dtype == value_dtype and target[0].scales.dtype == torch.float32
        assert torch.equal(target(x), expected)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_matches_cpu(dtype, value_dtype, gen):
    """The GPU's dequantized matrix is the CPU's, bit for bit (both round
    (float)q * (float)scale once), and its product is within the bound of
    product_reference; also under a CUDA graph (dequantize.cu does not
    synchronise)."""
    M = random_pruned(300, 500, 0.3, dtype, gen)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    G = A.to("cuda")
    assert torch.equal(macko_spmv.decompress(G).cpu(), macko_spmv.decompress(A))
    for batch in (None, 4, 12, 40):
        x = random_x(((batch,) if batch else ()) + (500,), dtype, gen, "cuda")
        check_quantized_product(G, M.cuda(), x)
    x = random_x((500,), dtype, gen, "cuda")
    static_x = x.clone()
    macko_spmv.multiply(G, static_x)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = macko_spmv.multiply(G, static_x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, macko_spmv.multiply(G, x))


def test_int64_row_indices(kernels, route, value_dtype, gen):  # noqa: F811
    """Row pointers of either width (a reader accepts both for any matrix)."""
    M = random_pruned(50, 700, 0.3, torch.bfloat16, gen)
    A = macko_spmv.compress(M, value_dtype=value_dtype)
    B = macko_spmv.MackoMatrix(A.values, A.deltas, A.row_indices.long(), A.rows, A.cols, A.scales)
    for batch in (None, 3, 20):
        x = random_x(((batch,) if batch else ()) + (700,), torch.bfloat16, gen, "cpu")
        assert torch.equal(macko_spmv.multiply(B, x), macko_spmv.multiply(A, x))
        check_quantized_product(B, M, x)
    assert torch.equal(macko_spmv.decompress(B), macko_spmv.decompress(A))


def test_scales_with_16_bit_values_are_refused(gen):
    A = macko_spmv.compress(random_pruned(6, 30, 0.5, torch.float16, gen))
    with pytest.raises(ValueError, match="scales apply to int8 and float8_e4m3fn values only"):
        macko_spmv.MackoMatrix(*A, torch.ones(6, dtype=torch.float16))
    with pytest.raises(TypeError, match="scales must be a torch.Tensor or None"):
        macko_spmv.MackoMatrix(*A, [1.0] * 6)
