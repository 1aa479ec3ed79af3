"""The CUDA routes of multiply (the streaming kernel, the tile kernel, and
decompress + cuBLAS a slab at a time) and the decompress kernel, against
float64. Shapes whose cols are a multiple of 8 reach the tile kernel (16-bit
values); the others take the stream route under "tiles"."""

import pytest
import torch

import macko_spmv
from conftest import assert_product_close, poison_allocator, random_pruned, requires_cuda

pytestmark = requires_cuda

ROUTES = ["stream", "tiles", "dense", "auto"]


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    """MACKO_MULTIPLY_ROUTE for the test (the op reads it on every call)."""
    monkeypatch.setenv("MACKO_MULTIPLY_ROUTE", request.param)
    return request.param


def random_x(shape, dtype, gen):
    return torch.randn(*shape, generator=gen).to(dtype).cuda()


def poisoned_multiply(A, x):
    poison_allocator(x.device, 4 * A.rows * (x.numel() // max(A.cols, 1) + 1) * 4)
    return macko_spmv.multiply(A, x)


@pytest.mark.parametrize("shape", [(1, 300), (300, 1), (13, 97), (257, 1031), (5, 4099), (300, 8), (19, 264), (33, 1040), (21, 2056), (4500, 264)])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.02])
@pytest.mark.parametrize("batch", [1, 2, 3, 8, 9, 16, 33, 130])
def test_routes_agree_with_float64(route, dtype, shape, density, batch, gen):
    M = random_pruned(*shape, density, dtype, gen).cuda()
    M[shape[0] // 2] = 0  # an empty row
    X = random_x((batch, shape[1]), dtype, gen)
    Y = poisoned_multiply(macko_spmv.compress(M), X)
    assert Y.shape == (batch, shape[0]) and Y.dtype == dtype
    assert_product_close(Y, M, X)


@pytest.mark.parametrize("density", [0.01, 0.15, 0.6])
@pytest.mark.parametrize("batch", [8, 13, 24, 40, 64])
def test_tile_kernel_rows_longer_than_its_ring(dtype, density, batch, monkeypatch, gen):
    """Rows of 16,392 columns: eight times the tile kernel's ring of 2,048
    columns, so every row wraps the ring; at density 0.01 one warp step of
    256 entries spans several rings' worth of columns and is stored in
    passes. 37 rows: a last row tile of 5 rows."""
    monkeypatch.setenv("MACKO_MULTIPLY_ROUTE", "tiles")
    M = random_pruned(37, 16392, density, dtype, gen).cuda()
    M[3] = 0
    M[20, :9000] = 0  # a row whose entries start past the first rings
    X = random_x((batch, 16392), dtype, gen)
    assert_product_close(poisoned_multiply(macko_spmv.compress(M), X), M, X)


def test_one_vector_through_each_route(route, dtype, gen):
    M = random_pruned(77, 501, 0.4, dtype, gen).cuda()
    x = random_x((501,), dtype, gen)
    y = poisoned_multiply(macko_spmv.compress(M), x)
    assert y.shape == (77,)
    assert_product_close(y, M, x)


def test_strided_and_leading_dims(route, gen):
    M = random_pruned(45, 130, 0.3, torch.float16, gen).cuda()
    A = macko_spmv.compress(M)
    X = random_x((3, 7, 260), torch.float16, gen)[..., ::2]  # [3, 7, 130], column stride 2
    Y = macko_spmv.multiply(A, X)
    assert Y.shape == (3, 7, 45)
    assert_product_close(Y.reshape(21, 45), M, X.reshape(21, 130))
    rows_strided = random_x((40, 130), torch.float16, gen)[::4]  # row stride 4 * 130
    assert_product_close(macko_spmv.multiply(A, rows_strided), M, rows_strided)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_dense_route_over_several_slabs(monkeypatch, dtype, gen):
    """A matrix of more rows than one slab (4096 rows, or more up to 128 MiB):
    every slab's rows land in their columns of y (here rows of 32.8 kB,
    two slabs of 2050 rows)."""
    monkeypatch.setenv("MACKO_MULTIPLY_ROUTE", "dense")
    M = random_pruned(4100, 16400, 0.3, dtype, gen).cuda()
    X = random_x((24, 16400), dtype, gen)
    assert_product_close(poisoned_multiply(macko_spmv.compress(M), X), M, X)


def test_dense_route_keeps_torch_reduction_setting(monkeypatch, gen):
    monkeypatch.setenv("MACKO_MULTIPLY_ROUTE", "dense")
    before = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    A = macko_spmv.compress(random_pruned(64, 64, 0.5, torch.float16, gen).cuda())
    macko_spmv.multiply(A, random_x((32, 64), torch.float16, gen))
    assert torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction == before


def test_unknown_route_is_refused(monkeypatch):
    monkeypatch.setenv("MACKO_MULTIPLY_ROUTE", "fastest")
    A = macko_spmv.compress(torch.eye(4, device="cuda"))
    with pytest.raises(ValueError, match="MACKO_MULTIPLY_ROUTE"):
        macko_spmv.multiply(A, torch.ones(4, device="cuda"))


def test_routes_under_graph_capture(route, gen):
    M = random_pruned(300, 500, 0.3, torch.float16, gen).cuda()
    A = macko_spmv.compress(M)
    X = torch.empty(40, 500, dtype=torch.float16, device="cuda")
    X.copy_(random_x((40, 500), torch.float16, gen))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (cuBLAS handles, workspaces) outside the graph
        macko_spmv.multiply(A, X)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        Y = macko_spmv.multiply(A, X)
    for _ in range(2):
        X.copy_(random_x((40, 500), torch.float16, gen))
        Y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_product_close(Y, M, X)


def test_prefill_through_compiled_layer(gen):
    """A prompt-sized input through a compiled MackoLinear (the auto route
    takes the dense route for it) matches the float64 product."""
    linear = torch.nn.Linear(256, 192, bias=False, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        linear.weight.mul_(torch.rand(linear.weight.shape, device="cuda") < 0.5)
    layer = macko_spmv.MackoLinear.from_linear(linear)
    compiled = torch.compile(layer, fullgraph=True)
    X = random_x((2, 300, 256), torch.float16, gen)
    with torch.inference_mode():
        Y = compiled(X)
    assert_product_close(Y.reshape(600, 192), linear.weight.detach(), X.reshape(600, 256))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (37, 2049), (5, 50_001), (64, 4096), (130, 1003)])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.05, 0.0])
def test_decompress_writes_every_element(dtype, shape, density, gen):
    """Rows shorter and longer than a shared-memory segment, columns that are
    and are not a multiple of 16 bytes, empty rows: the output (in memory
    poisoned with NaN first) equals the matrix."""
    M = random_pruned(*shape, density, dtype, gen).cuda()
    A = macko_spmv.compress(M)
    poison_allocator(M.device, 4 * M.numel() * M.element_size())
    assert torch.equal(macko_spmv.decompress(A), M)


def test_zero_columns_with_unvalidated_pointers(route):
    """cols = 0 gives zeros on every route, even with row pointers that a
    validated matrix could not have (no kernel runs: there is no column to
    clamp x to)."""
    values = torch.zeros(8, dtype=torch.float16, device="cuda")
    deltas = torch.zeros(4, dtype=torch.uint8, device="cuda")
    row_indices = torch.tensor([3, 3], dtype=torch.int32, device="cuda")
    for x in (torch.ones(0, dtype=torch.float16, device="cuda"), torch.ones(5, 0, dtype=torch.float16, device="cuda")):
        y = torch.ops.macko_spmv.multiply(values, deltas, row_indices, 1, 0, x)
        assert torch.equal(y.cpu(), torch.zeros(*x.shape[:-1], 1, dtype=torch.float16))


@pytest.mark.parametrize("batch", [1, 8, 16, 130])
def test_repeated_calls_are_bitwise_equal(route, dtype, batch, gen):
    """The same product twice gives the same bits: no route sums in an order
    that changes between calls (no atomics; the tile kernel adds its warps'
    partial sums in a fixed order). Many row tiles for the tile kernel."""
    M = random_pruned(1000, 3000, 0.4, dtype, gen).cuda()
    A = macko_spmv.compress(M)
    X = random_x((batch, 3000), dtype, gen)
    first = macko_spmv.multiply(A, X)
    for _ in range(3):
        assert torch.equal(macko_spmv.multiply(A, X), first)
