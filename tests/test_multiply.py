"""multiply against float64 dense math, on every device and dtype."""

import pytest
import torch

import macko_spmv
from conftest import (adversarial_matrices, assert_product_close, poison_allocator, random_pruned,
                      requires_cuda)
from reference import stored_entries, stored_product


def random_x(shape, dtype, gen, device):
    return torch.randn(*shape, generator=gen).to(dtype).to(device)


def poisoned_multiply(A, x):
    rows = A.rows * (x.numel() // max(A.cols, 1) if x.dim() > 1 else 1)
    poison_allocator(x.device, 4 * rows * 4)
    return macko_spmv.multiply(A, x)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (13, 97), (64, 64), (257, 1031), (4, 4099)])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.02])
def test_vector(device, dtype, shape, density, gen):
    M = random_pruned(*shape, density, dtype, gen).to(device)
    x = random_x((shape[1],), dtype, gen, device)
    y = poisoned_multiply(macko_spmv.compress(M), x)
    assert y.shape == (shape[0],) and y.dtype == dtype and y.device == M.device
    assert_product_close(y, M, x)


def test_adversarial(device, dtype, gen):
    for name, M in adversarial_matrices(dtype, gen).items():
        if torch.isnan(M).any() or torch.isinf(M).any():
            continue  # NaN/Inf make the reference NaN; covered below
        M = M.to(device)
        x = random_x((M.shape[1],), dtype, gen, device)
        y = poisoned_multiply(macko_spmv.compress(M), x)
        if M.shape[1] == 0:
            assert torch.equal(y.cpu(), torch.zeros(M.shape[0], dtype=dtype)), name
        else:
            assert_product_close(y, M, x)


def test_nan_and_inf_propagate(device):
    M = torch.zeros(3, 40)
    M[0, 5] = float("nan")
    M[1, 39] = float("inf")
    M[2, 0] = 1.0
    A = macko_spmv.compress(M.to(device))
    y = macko_spmv.multiply(A, torch.ones(40, device=device)).cpu()
    assert torch.isnan(y[0]) and y[1] == float("inf") and y[2] == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("batch", [None, 3, 8])
def test_inf_and_nan_in_x_meet_only_stored_entries(device, dtype, batch, gen):
    """The documented behaviour (README, multiply's docstring): x's inf/NaN
    reach y[r] through row r's stored entries only, padding zeros included
    (0 * inf = NaN), never through the zeros the format skips."""
    rows, cols = 40, 300
    M = random_pruned(rows, cols, 0.04, dtype, gen)  # long zero runs: many padding entries
    x = random_x((cols,) if batch is None else (batch, cols), dtype, gen, "cpu")
    special = torch.randperm(cols, generator=gen)[:12]
    x[..., special[:6]] = float("inf")
    x[..., special[6:9]] = float("-inf")
    x[..., special[9:]] = float("nan")
    y = poisoned_multiply(macko_spmv.compress(M.to(device)), x.to(device)).double().cpu()
    expected = stored_product(M, x)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.equal(torch.isinf(y), torch.isinf(expected)) and torch.equal(y[y.isinf()], expected[y.isinf()])
    finite = expected.isfinite()
    assert torch.allclose(y[finite], expected[finite], rtol=1e-2, atol=1e-2)

    # The test covers both cases: rows made NaN by a padding zero alone, and
    # rows whose skipped zeros meet inf/NaN (a dense product would be NaN there).
    positions, _, _ = stored_entries(M)
    columns = [set() for _ in range(rows)]
    for r, c in positions:
        columns[r].add(c)
    hit = {int(c) for c in special}
    padding_hits = [r for r in range(rows) if any(c in hit and M[r, c] == 0 for c in columns[r])]
    skipped_hits = [r for r in range(rows) if not (columns[r] & hit)]
    assert padding_hits and skipped_hits
    dense = (M.double() @ x.double().T).T if batch else M.double() @ x.double()
    assert torch.isnan(dense[..., skipped_hits]).all() and expected[..., skipped_hits].isfinite().all()


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 16, 17, 40])
def test_batch(device, dtype, batch, gen):
    M = random_pruned(67, 129, 0.3, dtype, gen).to(device)
    A = macko_spmv.compress(M)
    X = random_x((batch, 129), dtype, gen, device)
    Y = poisoned_multiply(A, X)
    assert Y.shape == (batch, 67)
    assert_product_close(Y, M, X)


def test_batch_leading_dims_and_strides(device, gen):
    M = random_pruned(31, 50, 0.4, torch.float32, gen).to(device)
    A = macko_spmv.compress(M)
    X = random_x((2, 3, 100), torch.float32, gen, device)[..., ::2]  # [2, 3, 50], strided
    Y = macko_spmv.multiply(A, X)
    assert Y.shape == (2, 3, 31)
    assert_product_close(Y.reshape(6, 31), M, X.reshape(6, 50))
    y = macko_spmv.multiply(A, random_x((100,), torch.float32, gen, device)[::2])
    assert y.shape == (31,)


def test_empty_batch(device):
    A = macko_spmv.compress(torch.eye(4, device=device))
    assert macko_spmv.multiply(A, torch.empty(0, 4, device=device)).shape == (0, 4)


def test_int64_row_indices(device, gen):
    """Matrices with > 2**31 - 1 entries use int64 row pointers; the kernels
    take both widths (tested here on a small matrix with widened pointers)."""
    M = random_pruned(20, 70, 0.3, torch.float16, gen).to(device)
    A = macko_spmv.compress(M)
    B = macko_spmv.MackoMatrix(A.values, A.deltas, A.row_indices.long(), A.rows, A.cols)
    x = random_x((70,), torch.float16, gen, device)
    assert torch.equal(macko_spmv.multiply(B, x), macko_spmv.multiply(A, x))
    assert torch.equal(macko_spmv.decompress(B), M)


def test_gradient_wrt_x(device, gen):
    M = random_pruned(23, 41, 0.3, torch.float32, gen).to(device)
    A = macko_spmv.compress(M)
    x = random_x((3, 41), torch.float32, gen, device).requires_grad_()
    w = random_x((3, 23), torch.float32, gen, device)
    (macko_spmv.multiply(A, x) * w).sum().backward()
    assert torch.allclose(x.grad.double().cpu(), w.double().cpu() @ M.double().cpu(), rtol=1e-5, atol=1e-5)


def test_gradient_wrt_values_is_refused(device, gen):
    A = macko_spmv.compress(random_pruned(5, 9, 0.5, torch.float32, gen).to(device))
    values = A.values.clone().requires_grad_()
    y = torch.ops.macko_spmv.multiply(values, A.deltas, A.row_indices, 5, 9, torch.ones(9, device=device))
    with pytest.raises(NotImplementedError, match="values"):
        y.sum().backward()


def test_opcheck(device, gen):
    M = random_pruned(19, 53, 0.3, torch.float32, gen).to(device)
    A = macko_spmv.compress(M)
    for x in (random_x((53,), torch.float32, gen, device), random_x((4, 53), torch.float32, gen, device)):
        torch.library.opcheck(torch.ops.macko_spmv.multiply.default, (*A, x))
        torch.library.opcheck(torch.ops.macko_spmv.multiply.default, (*A, x.clone().requires_grad_()))
        bias = random_x((19,), torch.float32, gen, device)
        torch.library.opcheck(torch.ops.macko_spmv.multiply.default, (*A, x, bias))
        torch.library.opcheck(torch.ops.macko_spmv.multiply.default,
                              (*A, x.clone().requires_grad_(), bias.clone().requires_grad_()))
    torch.library.opcheck(torch.ops.macko_spmv.decompress.default, tuple(A))


def test_torch_compile_fullgraph(device, gen):
    M = random_pruned(33, 65, 0.3, torch.float32, gen).to(device)
    A = macko_spmv.compress(M)

    @torch.compile(fullgraph=True)
    def layer(x):
        return torch.relu(macko_spmv.multiply(A, x)) * 2

    for x in (random_x((65,), torch.float32, gen, device), random_x((3, 65), torch.float32, gen, device)):
        assert torch.equal(layer(x), torch.relu(macko_spmv.multiply(A, x)) * 2)


@requires_cuda
def test_cuda_graph_capture_and_replay(gen):
    M = random_pruned(300, 500, 0.3, torch.float16, gen).cuda()
    A = macko_spmv.compress(M)
    x = torch.empty(500, dtype=torch.float16, device="cuda")
    X = torch.empty(4, 500, dtype=torch.float16, device="cuda")
    x.copy_(random_x((500,), torch.float16, gen, "cuda"))
    X.copy_(random_x((4, 500), torch.float16, gen, "cuda"))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        macko_spmv.multiply(A, x), macko_spmv.multiply(A, X)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = macko_spmv.multiply(A, x)
        Y = macko_spmv.multiply(A, X)
    for _ in range(2):  # new inputs each replay
        x.copy_(random_x((500,), torch.float16, gen, "cuda"))
        X.copy_(random_x((4, 500), torch.float16, gen, "cuda"))
        y.fill_(float("nan"))
        Y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_product_close(y, M, x)
        assert_product_close(Y, M, X)


@requires_cuda
def test_stream_experiment_variants_only_when_asked(gen, monkeypatch):
    """MACKO_STREAM_VARIANT (benchmarks/experiments/stream_ablation.py) cuts
    the kernel's work short (with a warning, once a process): the variants
    must run, and products must be back as soon as it is unset."""
    M = random_pruned(300, 500, 0.5, torch.float16, gen).cuda()
    A = macko_spmv.compress(M)
    x = random_x((500,), torch.float16, gen, "cuda")
    for variant in ("ring", "decode"):
        monkeypatch.setenv("MACKO_STREAM_VARIANT", variant)
        macko_spmv.multiply(A, x)
        torch.cuda.synchronize()
    monkeypatch.delenv("MACKO_STREAM_VARIANT")
    assert_product_close(poisoned_multiply(A, x), M, x)


@requires_cuda
def test_chained_calls_wait_for_the_call_before(gen):
    """Each call reads the previous call's output, in a CUDA graph and
    eagerly, with the previous input freed (its memory then holds the next
    output): on sm_90 the kernels are launched programmatically and start
    before the kernel before them ends, so reading x or writing y early
    would show here. Matrices large enough that a kernel runs for several
    microseconds; values scaled to keep the chain in fp16's range."""
    layers = [random_pruned(4096, 4096, 0.5, torch.float16, gen) / 32 for _ in range(3)]
    matrices = [macko_spmv.compress(M.cuda()) for M in layers]

    def chain(x):
        outs = [x]
        for A in matrices:
            outs.append(macko_spmv.multiply(A, outs[-1]))
        return outs

    x = torch.empty(4096, dtype=torch.float16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        chain(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain(x)
    for _ in range(3):  # a new x each replay: stale outputs would differ
        x.copy_(random_x((4096,), torch.float16, gen, "cuda"))
        for y in outs[1:]:
            y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for M, x_in, y in zip(layers, outs, outs[1:]):
            assert_product_close(y, M, x_in)

    x_in = random_x((4096,), torch.float16, gen, "cuda")
    kept = x_in.clone()
    y = macko_spmv.multiply(matrices[0], x_in)
    del x_in  # its block is free for the next output while the first call may still read it
    z = macko_spmv.multiply(matrices[1], y)
    torch.cuda.synchronize()
    assert_product_close(y, layers[0], kept)
    assert_product_close(z, layers[1], y)


@requires_cuda
@pytest.mark.parametrize(
    "shape, batch",
    [((140_001, 7), None), ((3, 120_001), None), ((5, 20_011), 8), ((2, 70_001), 3)],
    ids=["warps with over 31 rows", "x in global memory", "batch x in global memory", "batch of 3, wide"],
)
def test_cuda_launch_paths(shape, batch, gen):
    """Shapes that take the kernel's less common paths: a warp's rows span
    more than one load of row pointers; x (or the transposed batch) too
    large for shared memory, gathered from global memory instead."""
    M = random_pruned(*shape, 0.5, torch.float16, gen).cuda()
    x = random_x(((batch,) if batch else ()) + (shape[1],), torch.float16, gen, "cuda")
    y = poisoned_multiply(macko_spmv.compress(M), x)
    assert_product_close(y, M, x)


@requires_cuda
def test_cuda_matches_cpu_format(dtype, gen):
    M = random_pruned(129, 777, 0.2, dtype, gen)
    A_cpu, A_gpu = macko_spmv.compress(M), macko_spmv.compress(M.cuda())
    for a, b in zip(A_cpu[:3], A_gpu[:3]):
        assert torch.equal(a.view(torch.uint8), b.cpu().view(torch.uint8))


@requires_cuda
def test_misaligned_views_are_read_correctly(gen):
    M = random_pruned(16, 64, 0.5, torch.float16, gen).cuda()
    A = macko_spmv.compress(M)
    # The same arrays at an offset of 1 element inside bigger buffers.
    values = torch.cat([torch.zeros(1, dtype=A.values.dtype, device="cuda"), A.values])[1:]
    deltas = torch.cat([torch.zeros(1, dtype=torch.uint8, device="cuda"), A.deltas])[1:]
    B = macko_spmv.MackoMatrix(values, deltas, A.row_indices, 16, 64)
    x = random_x((64,), torch.float16, gen, "cuda")
    assert torch.equal(macko_spmv.multiply(B, x), macko_spmv.multiply(A, x))
    assert torch.equal(macko_spmv.decompress(B), M)
