"""The CPU multiply: every kernel variant and route against float64.

The CPU kernels exist per instruction set (baseline, AVX2, AVX-512: the
best the CPU runs is used; MACKO_CPU_KERNELS caps it), and a batch takes one
of three routes (vector kernel, sparse batch kernel, dense scratch + BLAS;
MACKO_CPU_MULTIPLY_ROUTE forces one). Each test runs every variant this CPU
can run, checks that it is the one running, and skips the others with the
reason; and every route. Outputs are poisoned before each call.
"""

import ctypes
import mmap

import pytest
import torch

import macko_spmv
from conftest import (DTYPES, adversarial_matrices, assert_product_close, check_product, poison_allocator,
                      random_pruned, reference_product)
from test_multiply import poisoned_multiply, random_x

VARIANTS = ["baseline", "avx2", "avx512"]
ROUTES = ["vector", "sparse", "dense"]


@pytest.fixture(params=VARIANTS)
def kernels(request, monkeypatch):
    """Caps the kernels at one variant; skips if this CPU cannot run it."""
    monkeypatch.setenv("MACKO_CPU_KERNELS", request.param)
    running = torch.ops.macko_spmv._cpu_kernels()
    if running != request.param:
        pytest.skip(f"this CPU or build cannot run the {request.param} kernels (the best it runs: {running})")
    return running


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    monkeypatch.setenv("MACKO_CPU_MULTIPLY_ROUTE", request.param)
    return request.param


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


SHAPES = [(1, 1), (1, 300), (300, 1), (13, 97), (257, 1031), (4, 4099), (37, 2053)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_vector(kernels, dtype, gen):
    """One vector, shapes with odd sizes, densities from full to sparse
    (each density takes another window width in the AVX-512 kernel)."""
    for shape in SHAPES:
        for density in (1.0, 0.7, 0.5, 0.3, 0.1, 0.02):
            M = random_pruned(*shape, density, dtype, gen)
            M[torch.rand(shape[0], generator=gen) < 0.2] = 0  # empty rows
            x = random_x((shape[1],), dtype, gen, "cpu")
            assert_product_close(poisoned_multiply(macko_spmv.compress(M), x), M, x)


@pytest.mark.parametrize("lookup", ["window", "gather"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_vector_sparse_row_lookups(kernels, lookup, dtype, gen, monkeypatch):
    """Both ways the AVX-512 vector kernel looks up x for its sparsest rows
    (MACKO_CPU_SPARSE_LOOKUP; by default the faster on this CPU), at
    densities whose rows take the widest window, one to four right-hand
    sides (the vector route's register tiles); the other variants ignore
    the setting."""
    monkeypatch.setenv("MACKO_CPU_SPARSE_LOOKUP", lookup)
    monkeypatch.setenv("MACKO_CPU_MULTIPLY_ROUTE", "vector")
    for shape in [(13, 97), (257, 1031), (37, 2053)]:
        for density in (0.2, 0.1, 0.02):
            M = random_pruned(*shape, density, dtype, gen)
            M[torch.rand(shape[0], generator=gen) < 0.2] = 0
            A = macko_spmv.compress(M)
            for x_shape in [(shape[1],), (3, shape[1]), (4, shape[1])]:
                x = random_x(x_shape, dtype, gen, "cpu")
                assert_product_close(poisoned_multiply(A, x), M, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_batch(kernels, route, dtype, gen):
    """Batches that fill 1, part of 1 and several register tiles, through
    each route."""
    for shape in [(1, 300), (300, 1), (13, 97), (67, 1031)]:
        M = random_pruned(*shape, 0.4, dtype, gen)
        M[torch.rand(shape[0], generator=gen) < 0.2] = 0
        A = macko_spmv.compress(M)
        for batch in (1, 2, 3, 4, 5, 16, 17, 63, 64, 65, 130):
            X = random_x((batch, shape[1]), dtype, gen, "cpu")
            assert_product_close(poisoned_multiply(A, X), M, X)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_batch_chosen_route(kernels, dtype, gen, monkeypatch):
    """No route forced: the choice between the sparse and dense routes,
    from costs measured on this CPU at the first such call (choose_route),
    gives the product at densities and batches on both sides of it; and
    5-6 right-hand sides, which take two vector passes at high density."""
    monkeypatch.delenv("MACKO_CPU_MULTIPLY_ROUTE", raising=False)
    for density in (1.0, 0.5, 0.1):
        M = random_pruned(67, 1031, density, dtype, gen)
        A = macko_spmv.compress(M)
        for batch in (5, 6, 17, 130, 700):
            X = random_x((batch, 1031), dtype, gen, "cpu")
            assert_product_close(poisoned_multiply(A, X), M, X)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_fused_bias(kernels, route, dtype, gen):
    """The raw op's bias, added to each fp32 sum before the rounding, on
    every route: against float64 x M^T + bias, with x of normal values and,
    for fp32 and bf16, of fp32 subnormals (whose sums the kernels scale back
    by 2^-24: the bias must join after that), and with strided biases."""
    for shape in [(1, 300), (300, 1), (13, 97), (67, 1031)]:
        M = random_pruned(*shape, 0.4, dtype, gen)
        M[torch.rand(shape[0], generator=gen) < 0.2] = 0  # empty rows: the bias alone
        A = macko_spmv.compress(M)
        bias = random_x((shape[0],), dtype, gen, "cpu")
        for batch in (None, 1, 3, 5, 17, 65):
            x = random_x(((batch,) if batch else ()) + (shape[1],), dtype, gen, "cpu")
            kinds = [x] if dtype == torch.float16 else [x, (x.float() * torch.finfo(dtype).tiny * 0.25).to(dtype)]
            for xk in kinds:
                for b in (bias, torch.stack([bias, -bias], 1)[:, 0]):  # contiguous and strided
                    poison_allocator("cpu", 4 * shape[0] * (batch or 1) * 4)
                    y = torch.ops.macko_spmv.multiply(*A, xk, b)
                    y_ref, magnitude = reference_product(M, xk)
                    check_product(y, y_ref + b.double(), magnitude + b.double().abs(), dtype, "multiply with bias")


def test_fused_bias_without_columns():
    """cols = 0: an empty sum, so the output is the bias."""
    A = macko_spmv.compress(torch.zeros(3, 0))
    bias = torch.tensor([1.0, -2.0, 3.5])
    assert torch.equal(torch.ops.macko_spmv.multiply(*A, torch.ones(2, 0), bias), bias.expand(2, 3))


def test_batch_large_blocks(kernels, route, gen):
    """More stored entries than the batch kernel decodes at once (2**17),
    rows longer than a column block, and a tile of 64 plus a remainder;
    and a sparse matrix (8% stored), whose column blocks are wider for a
    batch of one tile (128 KB: 2048 columns of a 16-wide tile)."""
    M = random_pruned(300, 1031, 0.9, torch.float32, gen)
    X = random_x((70, 1031), torch.float32, gen, "cpu")
    assert_product_close(poisoned_multiply(macko_spmv.compress(M), X), M, X)
    M = random_pruned(60, 9001, 0.04, torch.float16, gen)
    for batch in (12, 70):
        X = random_x((batch, 9001), torch.float16, gen, "cpu")
        assert_product_close(poisoned_multiply(macko_spmv.compress(M), X), M, X)


@pytest.mark.parametrize("block_bytes", ["1", "4096", "1048576"])
def test_batch_column_block_sizes(kernels, block_bytes, gen, monkeypatch):
    """The sparse route with column blocks set by MACKO_CPU_COLUMN_BLOCK_BYTES
    (the narrowest takes 64 columns, the widest the whole matrix)."""
    monkeypatch.setenv("MACKO_CPU_MULTIPLY_ROUTE", "sparse")
    monkeypatch.setenv("MACKO_CPU_COLUMN_BLOCK_BYTES", block_bytes)
    for density in (0.6, 0.1):
        M = random_pruned(70, 2053, density, torch.bfloat16, gen)
        for batch in (5, 40):
            X = random_x((batch, 2053), torch.bfloat16, gen, "cpu")
            assert_product_close(poisoned_multiply(macko_spmv.compress(M), X), M, X)


def test_windows_that_do_not_hold_a_chunk(kernels, gen):
    """Rows dense on average (a narrow window) with runs of 15-31 zeros, so
    that some chunks of 16 entries span more columns than the window."""
    M = random_pruned(40, 3000, 1.0, torch.float16, gen)
    for r in range(40):
        for c0 in range(r % 7, 3000, 97 + r):
            M[r, c0 : c0 + 15 + (r % 17)] = 0
    for batch in (None, 3):
        x = random_x(((batch,) if batch else ()) + (3000,), torch.float16, gen, "cpu")
        assert_product_close(poisoned_multiply(macko_spmv.compress(M), x), M, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_adversarial_matrices(kernels, route, dtype, gen):
    for name, M in adversarial_matrices(dtype, gen).items():
        if torch.isnan(M).any() or torch.isinf(M).any():
            continue  # see test_special_values
        A = macko_spmv.compress(M)
        for batch in (None, 2, 7):
            x = random_x(((batch,) if batch else ()) + (M.shape[1],), dtype, gen, "cpu")
            y = poisoned_multiply(A, x)
            if M.shape[1] == 0:
                assert torch.equal(y, torch.zeros_like(y)), name
            else:
                assert_product_close(y, M, x)


def test_int64_row_indices(kernels, route, gen):
    M = random_pruned(50, 700, 0.3, torch.bfloat16, gen)
    A = macko_spmv.compress(M)
    B = macko_spmv.MackoMatrix(A.values, A.deltas, A.row_indices.long(), A.rows, A.cols)
    for batch in (None, 3, 20):
        x = random_x(((batch,) if batch else ()) + (700,), torch.bfloat16, gen, "cpu")
        y = poisoned_multiply(B, x)
        assert torch.equal(y, macko_spmv.multiply(A, x))
        assert_product_close(y, M, x)


@pytest.mark.parametrize("own_route", ["vector", "sparse"])
def test_same_bits_at_every_thread_count(kernels, own_route, gen, restore_threads, monkeypatch):
    """The library's own kernels sum each row on one thread in a fixed order
    (the dense route's BLAS may not)."""
    monkeypatch.setenv("MACKO_CPU_MULTIPLY_ROUTE", own_route)
    M = random_pruned(301, 2000, 0.3, torch.float16, gen)
    A = macko_spmv.compress(M)
    for batch in (None, 3, 40):
        x = random_x(((batch,) if batch else ()) + (2000,), torch.float16, gen, "cpu")
        torch.set_num_threads(1)
        one = macko_spmv.multiply(A, x)
        for threads in (2, 3):
            torch.set_num_threads(threads)
            assert torch.equal(macko_spmv.multiply(A, x).view(torch.int16), one.view(torch.int16))


def stored_entries(A):
    """(row, column, value) of every stored entry, decoded from the arrays
    with plain tensor ops (independent of the kernels)."""
    values, deltas, row_indices, rows, cols = A
    n = int(row_indices[-1])
    gaps = torch.stack([deltas & 0xF, deltas >> 4], 1).reshape(-1)[:n].long()
    lengths = (row_indices[1:] - row_indices[:-1]).long()
    row = torch.repeat_interleave(torch.arange(rows), lengths)
    ends = (gaps + 1).cumsum(0)
    starts = row_indices[:-1].long()
    before = torch.where(starts > 0, ends[(starts - 1).clamp(min=0)], torch.zeros_like(starts))
    col = ends - before[row] - 1
    return row, col, values[:n]


def stored_entry_reference(A, x):
    """float64 sums over the stored entries only (a stored zero times Inf is
    NaN; a column a row does not store contributes nothing)."""
    row, col, value = stored_entries(A)
    X = x.double().reshape(-1, A.cols)
    products = X[:, col] * value.double()
    y = torch.zeros(X.shape[0], A.rows, dtype=torch.float64).index_add_(1, row, products)
    scale = torch.zeros_like(y).index_add_(1, row, products.abs().nan_to_num(0, 0, 0))
    return y.reshape(*x.shape[:-1], A.rows), scale.reshape(*x.shape[:-1], A.rows)


def special_x(kind, shape, dtype, gen):
    x = random_x(shape, dtype, gen, "cpu")
    pick = torch.rand(shape, generator=gen)
    tiny = torch.finfo(dtype).tiny
    if kind == "half zeros":
        x[pick < 0.5] = 0
    elif kind == "subnormals":
        x = (x.float() * tiny * 0.25).to(dtype)
        assert ((x != 0) & (x.abs() < tiny)).float().mean() > 0.9
    elif kind == "subnormals and large":  # too wide a range to scale the subnormals away
        x[pick < 0.5] = (x[pick < 0.5].float() * tiny * 0.25).to(dtype)
        x[pick > 0.99] = 2.0**70 if dtype != torch.float16 else 8.0  # (fp16 x has no fp32 subnormals)
    elif kind == "nan":
        x[pick < 0.01] = float("nan")
    elif kind == "inf":
        x[pick < 0.005] = float("inf")
        x[(pick >= 0.005) & (pick < 0.01)] = float("-inf")
    return x


@pytest.mark.parametrize("kind", ["half zeros", "subnormals", "subnormals and large", "nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_special_values_in_x(kernels, route, kind, dtype, gen):
    """Zeros, subnormals, NaN and +-Inf in x: as the float64 sums over the
    stored entries (padding entries are stored zeros: 0 * Inf = NaN there).
    fp32 subnormals are scaled out of the way of the FMAs when x's range
    allows it, and left as they are when it does not."""
    M = random_pruned(90, 700, 0.2, dtype, gen)
    M[3, :] = 0
    M[4, ::40] = 1  # long zero runs: padding entries
    A = macko_spmv.compress(M)
    for batch in (None, 3, 9):
        x = special_x(kind, ((batch,) if batch else ()) + (700,), dtype, gen)
        y = poisoned_multiply(A, x).double()
        ref, scale = stored_entry_reference(A, x)
        assert torch.equal(torch.isnan(y), torch.isnan(ref)), kind
        assert torch.equal(torch.isinf(y) & (y > 0), torch.isinf(ref) & (ref > 0)), kind
        assert torch.equal(torch.isinf(y) & (y < 0), torch.isinf(ref) & (ref < 0)), kind
        finite = torch.isfinite(ref)
        out_eps = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 2**-23}[dtype]
        bound = out_eps * ref.abs() + 1e-5 * scale + torch.finfo(dtype).tiny * torch.finfo(dtype).eps
        assert ((y - ref).abs()[finite] <= bound[finite]).all(), kind


def test_stored_zero_times_inf_is_nan(kernels, route):
    """A padding entry (a stored zero) meets an Inf in x: NaN, as IEEE says;
    a row that stores nothing in that column stays finite."""
    M = torch.zeros(2, 40)
    M[0, 0] = M[0, 39] = 1.0  # columns 16 and 32 hold padding entries
    M[1, 0] = 2.0
    A = macko_spmv.compress(M)
    assert A.stored_entries == 5
    x = torch.ones(3, 40)
    x[:, 16] = float("inf")
    y = macko_spmv.multiply(A, x)
    assert torch.isnan(y[:, 0]).all() and (y[:, 1] == 2.0).all()


@pytest.mark.parametrize("special", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_first_column_reaches_only_its_rows(kernels, route, special, gen):
    """x[0] NaN or Inf: only the rows that store column 0 turn non-finite.
    Rows whose entries start and end inside a chunk have lanes outside the
    row, which a kernel may point at column 0 (the AVX2 one: they must add
    0 * 0, not 0 * x[0])."""
    M = torch.zeros(7, 300)
    for r, (first, count) in enumerate([(5, 3), (1, 11), (40, 17), (2, 1), (0, 9), (100, 200), (7, 40)]):
        M[r, first:first + count] = torch.rand(count, generator=gen) + 0.5
    A = macko_spmv.compress(M)
    x = torch.rand(2, 300, generator=gen)
    x[:, 0] = special
    finite_x = x.double()
    finite_x[:, 0] = 0  # the reference for the rows without column 0 (dense math would add 0 * x[0] = NaN)
    for xs, x_ref in ((x[0], finite_x[0]), (x, finite_x)):  # one vector (vector route) and a batch
        y = macko_spmv.multiply(A, xs)
        ref = x_ref @ M.double().T
        stores_col0 = (M[:, 0] != 0)
        assert torch.isfinite(y[..., ~stores_col0]).all()
        assert not torch.isfinite(y[..., stores_col0]).any()
        torch.testing.assert_close(y[..., ~stores_col0].double(), ref[..., ~stores_col0], rtol=1e-5, atol=1e-5)


# Corrupted arrays that bypass validation: every read must stay inside the
# arrays. Each array is copied next to a page that may not be read, at its
# end and at its start, so that any read past either end is a crash.

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def guarded_copy(t, at_end):
    """A copy of the 1-D tensor t in memory with an unreadable page right
    after its last byte (at_end) or right before its first."""
    nbytes = t.numel() * t.element_size()
    pages = max(1, -(-nbytes // PAGE))
    buffer = mmap.mmap(-1, (pages + 2) * PAGE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    for guard in (address, address + (pages + 1) * PAGE):
        assert _libc.mprotect(guard, PAGE, 0) == 0, ctypes.get_errno()
    offset = PAGE + (pages * PAGE - nbytes if at_end else 0)
    copy = torch.frombuffer(buffer, dtype=t.dtype, count=t.numel(), offset=offset)
    copy.copy_(t)
    return copy


@pytest.mark.parametrize("at_end", [True, False], ids=["guard after", "guard before"])
def test_corrupted_arrays_stay_in_bounds(kernels, route, at_end, gen):
    rows, cols = 40, 300
    A = macko_spmv.compress(random_pruned(rows, cols, 0.2, torch.float16, gen))
    if A.values.numel() % 16 == 0:  # make the stream end half way into a chunk of 16
        A = macko_spmv.compress(random_pruned(rows, cols, 0.2, torch.float16, gen)[:, :-3])
        cols -= 3
    n_padded = A.values.numel()
    pointers = [
        A.row_indices,
        torch.full((rows + 1,), -5, dtype=torch.int32),
        torch.full((rows + 1,), n_padded + 1000, dtype=torch.int32),
        torch.arange(rows + 1, dtype=torch.int32).flip(0) * 50,
        torch.randint(-100, n_padded + 100, (rows + 1,), generator=gen, dtype=torch.int32),
        torch.tensor([0] + [n_padded] * rows, dtype=torch.int32),  # every row owns the whole stream
        torch.tensor([0] * rows + [n_padded], dtype=torch.int32),  # the last row does
    ]
    deltas = [A.deltas, torch.full_like(A.deltas, 0xFF), torch.zeros_like(A.deltas)]
    values = guarded_copy(A.values, at_end)
    for batch in (1, 3, 5, 70):
        x = guarded_copy(random_x((batch * cols,), torch.float16, gen, "cpu"), at_end).view(batch, cols)
        for p in pointers:
            for d in deltas:
                y = torch.ops.macko_spmv.multiply(values, guarded_copy(d, at_end), guarded_copy(p, at_end), rows, cols, x)
                assert y.shape == (batch, rows)


def test_bad_environment_values_are_errors(monkeypatch):
    A = macko_spmv.compress(torch.eye(3))
    monkeypatch.setenv("MACKO_CPU_KERNELS", "avx3")
    with pytest.raises(ValueError, match="MACKO_CPU_KERNELS must be baseline, avx2 or avx512"):
        macko_spmv.multiply(A, torch.ones(3))
    monkeypatch.delenv("MACKO_CPU_KERNELS")
    monkeypatch.setenv("MACKO_CPU_MULTIPLY_ROUTE", "fast")
    with pytest.raises(ValueError, match="MACKO_CPU_MULTIPLY_ROUTE must be vector, sparse or dense"):
        macko_spmv.multiply(A, torch.ones(2, 3))
    monkeypatch.delenv("MACKO_CPU_MULTIPLY_ROUTE")
    monkeypatch.setenv("MACKO_CPU_SPARSE_LOOKUP", "permute")
    with pytest.raises(ValueError, match="MACKO_CPU_SPARSE_LOOKUP must be gather or window"):
        macko_spmv.multiply(A, torch.ones(3))
    monkeypatch.delenv("MACKO_CPU_SPARSE_LOOKUP")
    monkeypatch.setenv("MACKO_CPU_MULTIPLY_ROUTE", "sparse")
    for setting in ("big", "0", "-4096", "4096x"):
        monkeypatch.setenv("MACKO_CPU_COLUMN_BLOCK_BYTES", setting)
        with pytest.raises(ValueError, match="MACKO_CPU_COLUMN_BLOCK_BYTES must be a number of bytes"):
            macko_spmv.multiply(A, torch.ones(2, 3))


@pytest.mark.parametrize("batch", [1, 5, 40])
def test_repeated_calls_are_bitwise_equal(kernels, route, dtype, batch, gen):
    """The same product twice gives the same bits on the CPU too: each row's
    sum is taken by one thread in a fixed order, whatever the threads'
    timing; and the dense route's BLAS, with the thread count fixed."""
    M = random_pruned(300, 700, 0.4, dtype, gen)
    A = macko_spmv.compress(M)
    X = random_x((batch, 700), dtype, gen, "cpu")
    first = macko_spmv.multiply(A, X)
    for _ in range(3):
        assert torch.equal(macko_spmv.multiply(A, X), first)
