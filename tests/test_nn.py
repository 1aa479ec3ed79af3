"""MackoLinear, sparsify and densify: outputs against float64 math, module
conversions, checkpoints, gradients and torch.compile."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import macko_spmv
from conftest import random_pruned, requires_cuda
from macko_spmv import MackoLinear, SparsifyReport, densify, sparsify

OUTPUT_EPS = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 2**-23}


def random_tensor(shape, dtype, gen, device):
    return torch.randn(*shape, generator=gen).to(dtype).to(device)


def pruned_layer(out_features, in_features, dtype, gen, device, bias=True, density=0.5):
    """(MackoLinear, its dense pruned weight, its bias or None)."""
    weight = random_pruned(out_features, in_features, density, dtype, gen).to(device)
    bias_tensor = random_tensor((out_features,), dtype, gen, device) if bias else None
    return MackoLinear(weight, bias_tensor), weight, bias_tensor


def assert_linear_close(y, weight, bias, x):
    """y vs float64 F.linear(x, weight, bias): the op's output rounding, the
    float32 sums' error and the rounding of the bias addition, elementwise."""
    x64, w64 = x.double().cpu(), weight.double().cpu()
    product = F.linear(x64, w64)
    reference = product + bias.double().cpu() if bias is not None else product
    scale = F.linear(x64.abs(), w64.abs())
    bound = OUTPUT_EPS[y.dtype] * (product.abs() + reference.abs()) + 1e-5 * scale + 1e-30
    y64 = y.double().cpu()
    assert y64.shape == reference.shape
    assert torch.isfinite(y64).all()
    error = (y64 - reference).abs()
    assert (error <= bound).all(), f"max error {error.max().item():.3g}, bound there {bound.flatten()[error.argmax()]:.3g}"


# ----------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("shape", [(1, 1), (13, 97), (97, 13), (64, 257)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("leading", [(), (5,), (2, 3)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_forward_matches_float64(device, dtype, shape, leading, bias, gen):
    layer, weight, bias_tensor = pruned_layer(*shape, dtype, gen, device, bias=bias)
    x = random_tensor((*leading, shape[1]), dtype, gen, device)
    y = layer(x)
    assert y.shape == (*leading, shape[0]) and y.dtype == dtype and y.device == x.device
    assert_linear_close(y, weight, bias_tensor, x)


def test_forward_equals_the_dense_layer(device, dtype, gen):
    linear = nn.Linear(97, 31, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(random_pruned(31, 97, 0.4, dtype, gen))
    layer = MackoLinear.from_linear(linear)
    assert torch.equal(layer.dense_weight(), linear.weight)
    x = random_tensor((4, 97), dtype, gen, device)
    assert_linear_close(layer(x), linear.weight, linear.bias, x)


def test_forward_empty_and_strided_inputs(device, gen):
    layer, weight, bias = pruned_layer(7, 20, torch.float32, gen, device)
    assert layer(torch.empty(0, 20, device=device)).shape == (0, 7)
    assert layer(torch.empty(2, 0, 20, device=device)).shape == (2, 0, 7)
    x = random_tensor((3, 4, 40), torch.float32, gen, device)[..., ::2]  # not contiguous
    assert_linear_close(layer(x), weight, bias, x)
    no_inputs = MackoLinear(torch.zeros(7, 0, device=device), bias)  # y = bias
    assert torch.equal(no_inputs(torch.empty(2, 0, device=device)), bias.expand(2, 7))


def test_forward_rejects_bad_input(device, gen):
    layer, _, _ = pruned_layer(7, 20, torch.float16, gen, device)
    with pytest.raises(ValueError, match="scalar"):
        layer(torch.tensor(1.0, dtype=torch.float16, device=device))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.ones(20, device=device))
    with pytest.raises(ValueError, match="cols = 20"):
        layer(torch.ones(3, 19, dtype=torch.float16, device=device))


# ----------------------------------------------------------------------
# Construction and inspection


def test_constructors_and_inspection(gen):
    weight = random_pruned(12, 40, 0.25, torch.float32, gen)
    bias = torch.randn(12, generator=gen)
    layer = MackoLinear(weight, bias)
    assert (layer.out_features, layer.in_features) == (12, 40)
    assert torch.equal(layer.dense_weight(), weight) and torch.equal(layer.bias, bias)
    assert isinstance(layer.bias, nn.Parameter) and layer.bias.data_ptr() != bias.data_ptr()
    assert layer.row_indices.numel() == 13 and layer.deltas.dtype == torch.uint8
    assert layer.density == pytest.approx(int(torch.count_nonzero(weight)) / weight.numel())
    assert layer.nbytes == macko_spmv.compress(weight).nbytes
    text = repr(layer)
    for part in ("in_features=40", "out_features=12", "bias=True", f"density={layer.density:.3f}",
                 "stored_fraction=", f"nbytes={layer.nbytes}"):
        assert part in text

    from_matrix = MackoLinear(macko_spmv.compress(weight))
    assert from_matrix.bias is None and torch.equal(from_matrix.dense_weight(), weight)

    linear = layer.to_linear()
    assert type(linear) is nn.Linear and not linear.weight.is_meta
    assert torch.equal(linear.weight, weight) and torch.equal(linear.bias, bias)
    assert linear.weight.requires_grad and linear.bias.requires_grad


def test_weight_is_metadata_and_dense_weight_decompresses(device, gen, monkeypatch):
    layer, weight, _ = pruned_layer(13, 45, torch.float16, gen, device)
    calls = []
    real_decompress = macko_spmv.ops.decompress
    monkeypatch.setattr(macko_spmv.ops, "decompress", lambda *args: calls.append(1) or real_decompress(*args))
    info = layer.weight
    assert isinstance(info, torch.Tensor) and isinstance(info, macko_spmv.nn.DenseWeightInfo)
    assert info.shape == (13, 45) and info.dtype == torch.float16 and info.device == weight.device
    assert info.dim() == 2 and info.numel() == 13 * 45 and not info.requires_grad
    assert info.data.shape == (13, 45) and info.detach().dtype == torch.float16
    assert "dense_weight()" in repr(info)
    assert calls == []  # nothing decompressed
    x = random_tensor((2, 45), torch.float16, gen, device)
    for compute in (lambda: F.linear(x, info), lambda: x @ info.T, lambda: info.float(), lambda: info.sum(),
                    lambda: torch.equal(info, weight), lambda: info + 1, lambda: 2 * info, lambda: info.clone(),
                    lambda: info[0], lambda: info.view(-1)):
        with pytest.raises(TypeError, match=r"dense_weight\(\)"):
            compute()
    assert calls == []
    assert torch.equal(layer.dense_weight(), weight) and calls == [1]
    layer.float()
    assert layer.weight.dtype == torch.float32  # follows conversions


def test_constructor_rejects():
    with pytest.raises(ValueError, match="2-D"):
        MackoLinear(torch.ones(3))
    with pytest.raises(TypeError, match="Tensor or a MackoMatrix"):
        MackoLinear([[1.0]])
    with pytest.raises(ValueError, match=r"\[out_features\] = \[3\]"):
        MackoLinear(torch.ones(3, 4), torch.ones(4))
    with pytest.raises(TypeError, match="dtype and device"):
        MackoLinear(torch.ones(3, 4), torch.ones(3, dtype=torch.float16))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        MackoLinear(torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="nn.Linear"):
        MackoLinear.from_linear(nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize("convert", [
    lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.float(),
    lambda m: m.to(torch.float16), lambda m: m.to(dtype=torch.bfloat16),
], ids=["half", "bfloat16", "float", "to_half", "to_bfloat16"])
def test_dtype_conversions_touch_only_values_and_bias(convert, gen):
    layer, weight, bias = pruned_layer(9, 33, torch.float32, gen, "cpu")
    deltas, row_indices = layer.deltas, layer.row_indices
    model = nn.Sequential(layer)
    convert(model)
    target = layer.values.dtype
    assert target in (torch.float16, torch.bfloat16, torch.float32)
    assert layer.bias.dtype == target and isinstance(layer.bias, nn.Parameter)
    assert layer.deltas is deltas and layer.row_indices is row_indices  # not even copied
    assert layer.dense_shape.dtype == torch.int64
    assert torch.equal(layer.dense_weight(), weight.to(target))
    x = random_tensor((4, 33), target, gen, "cpu")
    assert_linear_close(layer(x), weight.to(target), bias.to(target), x)


def test_unsupported_dtype_conversion_is_refused_untouched(gen):
    layer, weight, _ = pruned_layer(9, 33, torch.float16, gen, "cpu")
    with pytest.raises(TypeError, match="cannot be converted to torch.float64"):
        layer.double()
    with pytest.raises(TypeError, match="float64"):
        layer.to(torch.float64)
    with pytest.raises(TypeError, match="integer arrays"):
        layer.type(torch.float32)  # Module.type casts every tensor, uint8 included
    assert layer.values.dtype == torch.float16 and layer.bias.dtype == torch.float16
    assert layer.deltas.dtype == torch.uint8 and layer.row_indices.dtype == torch.int32
    assert torch.equal(layer.dense_weight(), weight)


# ----------------------------------------------------------------------
# Checkpoints


def assert_same_layer(loaded, original, gen):
    for name in ("values", "deltas", "row_indices", "dense_shape", "bias"):
        assert torch.equal(getattr(loaded, name), getattr(original, name)), name
    x = random_tensor((3, original.in_features), original.values.dtype, gen, original.values.device)
    assert torch.equal(loaded(x), original(x))


def fresh_layer_of_other_density(layer, gen, density=0.05):
    """A layer of the same shape whose arrays have other lengths."""
    other, _, _ = pruned_layer(layer.out_features, layer.in_features, layer.values.dtype, gen,
                               layer.values.device, density=density)
    assert other.values.numel() != layer.values.numel()
    return other


def test_state_dict_round_trip_resizes_buffers(device, dtype, gen):
    layer, _, _ = pruned_layer(37, 101, dtype, gen, device)
    assert set(layer.state_dict()) == {"values", "deltas", "row_indices", "dense_shape", "bias"}
    target = fresh_layer_of_other_density(layer, gen)
    target.load_state_dict(layer.state_dict())
    assert_same_layer(target, layer, gen)


def test_torch_save_round_trips(gen):
    layer, _, _ = pruned_layer(37, 101, torch.float16, gen, "cpu")
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    target = fresh_layer_of_other_density(layer, gen)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same_layer(target, layer, gen)

    buffer = io.BytesIO()
    torch.save(nn.Sequential(layer), buffer)  # the whole module, pickled
    buffer.seek(0)
    assert_same_layer(torch.load(buffer, weights_only=False)[0], layer, gen)


def test_safetensors_round_trip(tmp_path, gen):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = nn.Sequential(nn.Linear(50, 64), nn.ReLU(), nn.Linear(64, 10))
    for linear in (model[0], model[2]):
        with torch.no_grad():
            linear.weight.mul_(torch.rand(linear.weight.shape, generator=gen) < 0.4)
    sparsify(model, progress=False, verbose=False)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), path)

    target = nn.Sequential(nn.Linear(50, 64), nn.ReLU(), nn.Linear(64, 10))
    sparsify(target, min_sparsity=0.0, progress=False, verbose=False)  # dense: other array lengths
    target.load_state_dict(safetensors_torch.load_file(path))
    assert_same_layer(target[0], model[0], gen)
    assert_same_layer(target[2], model[2], gen)


def test_load_casts_values_and_takes_the_checkpoints_row_index_width(gen):
    layer, weight, _ = pruned_layer(20, 70, torch.float32, gen, "cpu")
    state = layer.state_dict()
    state["row_indices"] = state["row_indices"].long()  # as for > 2**31 - 1 entries
    target = MackoLinear(torch.zeros(20, 70, dtype=torch.float16), torch.zeros(20, dtype=torch.float16))
    target.load_state_dict(state)
    assert target.values.dtype == torch.float16 and target.row_indices.dtype == torch.int64
    assert torch.equal(target.dense_weight(), weight.half())


def test_load_rejects_other_shapes_and_corrupt_arrays(gen):
    layer, _, _ = pruned_layer(20, 70, torch.float32, gen, "cpu")
    with pytest.raises(RuntimeError, match=r"dense_shape.*\(20, 70\).*\(20, 71\)"):
        MackoLinear(torch.zeros(20, 71), torch.zeros(20)).load_state_dict(layer.state_dict())
    state = layer.state_dict()
    state["row_indices"] = state["row_indices"].flip(0).contiguous()
    with pytest.raises(RuntimeError, match="invalid MACKO arrays"):
        MackoLinear(torch.zeros(20, 70), torch.zeros(20)).load_state_dict(state)
    with pytest.raises(RuntimeError, match="bias"):  # bias missing
        no_bias = MackoLinear(layer.dense_weight()).state_dict()
        MackoLinear(torch.zeros(20, 70), torch.zeros(20)).load_state_dict(no_bias)


# ----------------------------------------------------------------------
# sparsify and densify


class Tower(nn.Module):
    """Layers of known sparsities, a reused layer, a tied weight and a subclass."""

    def __init__(self, gen, dtype=torch.float32):
        super().__init__()

        def linear(in_features, out_features, sparsity):
            layer = nn.Linear(in_features, out_features, dtype=dtype)
            with torch.no_grad():
                # exactly round(sparsity * numel) zeros at random places
                order = torch.randperm(layer.weight.numel(), generator=gen)
                mask = torch.ones(layer.weight.numel())
                mask[order[: round(sparsity * layer.weight.numel())]] = 0
                layer.weight.mul_(mask.view_as(layer.weight).to(dtype))
            return layer

        self.embed = nn.Embedding(11, 24, dtype=dtype)
        self.dense = linear(24, 40, 0.0)
        self.half_sparse = linear(40, 40, 0.5)
        self.blocks = nn.ModuleList([linear(40, 40, 0.8), linear(40, 40, 0.35)])
        self.shared = linear(40, 40, 0.6)  # applied twice, also under the name `shared_again`
        self.shared_again = self.shared
        self.head = linear(24, 11, 0.5)  # weight [11, 24], tied to the embedding's [11, 24]
        self.head.weight = self.embed.weight
        self.mha_like = nn.modules.linear.NonDynamicallyQuantizableLinear(40, 24, dtype=dtype)
        with torch.no_grad():
            self.mha_like.weight.zero_()

    def forward(self, tokens):
        h = self.embed(tokens)
        h = torch.relu(self.dense(h))
        h = torch.relu(self.half_sparse(h))
        for block in self.blocks:
            h = torch.relu(block(h))
        h = torch.relu(self.shared_again(self.shared(h)))
        return self.head(self.mha_like(h))


def test_sparsify_threshold_report_and_densify(gen, capsys):
    model = Tower(gen)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    with torch.no_grad():
        expected = model(tokens)
    dense_weights = {name: module.weight.clone() for name, module in model.named_modules()
                     if isinstance(module, nn.Linear)}

    report = SparsifyReport()
    assert sparsify(model, min_sparsity=0.4, progress=False, report=report) is model  # in place
    converted = {layer.name for layer in report.converted}
    assert converted == {"half_sparse", "blocks.0", "shared"}
    skipped = {layer.name: layer.kind for layer in report.skipped}
    assert skipped == {"dense": "sparsity", "blocks.1": "sparsity", "head": "tied", "mha_like": "subclass"}
    assert "0.350 < min_sparsity 0.4" in next(s.reason for s in report.skipped if s.name == "blocks.1")

    for name in converted:
        assert isinstance(model.get_submodule(name), MackoLinear)
        assert torch.equal(model.get_submodule(name).dense_weight(), dense_weights[name])
    assert model.shared_again is model.shared  # every alias of a reused layer replaced by one layer
    assert type(model.dense) is nn.Linear and model.head.weight is model.embed.weight

    by_name = {layer.name: layer for layer in report.converted}
    assert by_name["half_sparse"].sparsity == pytest.approx(0.5)
    assert by_name["blocks.0"].shape == (40, 40) and by_name["blocks.0"].dtype == torch.float32
    assert report.weight_bytes_before == 3 * 40 * 40 * 4
    assert report.weight_bytes_after == sum(model.get_submodule(name).nbytes for name in converted)
    assert report.weight_bytes_after < report.weight_bytes_before

    printed = capsys.readouterr()
    assert "converted 3 nn.Linear layer(s)" in printed.out and "skipped 4" in printed.out
    assert "sparsify" not in printed.err  # progress=False: no bar
    assert str(report) in printed.out

    with torch.no_grad():
        assert torch.allclose(model(tokens), expected, rtol=1e-5, atol=1e-5)

    assert densify(model) is model
    assert not any(isinstance(module, MackoLinear) for module in model.modules())
    for name in converted:
        layer = model.get_submodule(name)
        assert type(layer) is nn.Linear and torch.equal(layer.weight, dense_weights[name])
    assert model.shared_again is model.shared
    with torch.no_grad():
        assert torch.equal(model(tokens), expected)  # the same dense layers again


def test_sparsify_include_exclude_and_filter_fn(gen):
    def converted_names(**filters):
        report = SparsifyReport()
        sparsify(Tower(gen), min_sparsity=0.0, progress=False, verbose=False, report=report, **filters)
        filtered = {layer.name for layer in report.skipped if layer.kind == "filtered"}
        return {layer.name for layer in report.converted}, filtered

    everything = {"dense", "half_sparse", "blocks.0", "blocks.1", "shared"}
    assert converted_names() == (everything, set())
    others = everything | {"head", "mha_like"}  # filtered before any other reason is looked for
    assert converted_names(include=r"^blocks\.") == ({"blocks.0", "blocks.1"}, others - {"blocks.0", "blocks.1"})
    assert converted_names(exclude="sparse|dense")[0] == {"blocks.0", "blocks.1", "shared"}
    assert converted_names(include=lambda name: name.endswith("0"), exclude="xyz")[0] == {"blocks.0"}
    # a reused layer is selected by any of its names and excluded by any
    assert converted_names(include="shared_again")[0] == {"shared"}
    assert converted_names(exclude="shared_again")[0] == everything - {"shared"}
    # filter_fn(module, name), torchao's convention: called with each nn.Linear and each of its names
    calls = []

    def wide_inputs(module, name):
        calls.append((type(module), name))
        return module.in_features == 40

    assert converted_names(filter_fn=wide_inputs)[0] == {"half_sparse", "blocks.0", "blocks.1", "shared"}
    assert others <= {name for _, name in calls} <= others | {"shared_again"}
    assert {kind for kind, _ in calls} == {nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear}
    assert converted_names(filter_fn=lambda module, name: name == "shared_again")[0] == {"shared"}
    assert converted_names(include="blocks", filter_fn=lambda module, name: name != "blocks.1")[0] == {"blocks.0"}


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # nn.Linear(0, 3) itself
def test_sparsify_rejects_bad_arguments_skips_empty_layers_and_the_root():
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(nn.Sequential(), min_sparsity=1.5)
    with pytest.raises(TypeError, match="include"):
        sparsify(nn.Sequential(), include=3)
    with pytest.raises(TypeError, match="filter_fn"):
        sparsify(nn.Sequential(), filter_fn="blocks")
    with pytest.raises(TypeError, match="report must be None or a SparsifyReport"):
        sparsify(nn.Sequential(), report=[])
    report = SparsifyReport()
    assert "not run" in str(report)
    sparsify(nn.Sequential(nn.Linear(0, 3)), min_sparsity=0.0, progress=False, verbose=False, report=report)
    assert [layer.kind for layer in report.skipped] == ["empty"]
    root = nn.Linear(3, 3)
    sparsify(root, min_sparsity=0.0, progress=False, verbose=False, report=report)  # the report is refilled
    assert [layer.kind for layer in report.skipped] == ["root"] and not report.converted
    with pytest.raises(TypeError, match="to_linear"):
        densify(MackoLinear(torch.eye(3)))


def test_sparsify_keeps_dtype_and_skips_float64(gen):
    model = nn.Sequential(nn.Linear(8, 8, dtype=torch.bfloat16), nn.Linear(8, 8, dtype=torch.float64))
    report = SparsifyReport()
    sparsify(model, min_sparsity=0.0, progress=False, verbose=False, report=report)
    assert [layer.name for layer in report.converted] == ["0"]
    assert model[0].values.dtype == torch.bfloat16
    assert [(layer.name, layer.kind) for layer in report.skipped] == [("1", "dtype")]


# ----------------------------------------------------------------------
# Gradients


def test_gradient_wrt_input_and_bias(device, dtype, gen):
    layer, weight, bias = pruned_layer(29, 45, dtype, gen, device)
    x = random_tensor((2, 3, 45), dtype, gen, device).requires_grad_()
    upstream = random_tensor((2, 3, 29), dtype, gen, device)
    (layer(x) * upstream).sum().backward()

    x64 = x.detach().double().cpu().requires_grad_()
    w64, b64 = weight.double().cpu(), bias.double().cpu().requires_grad_()
    (F.linear(x64, w64, b64) * upstream.double().cpu()).sum().backward()
    # dL/dx = upstream @ W in the layer's dtype: rounding of each output plus sums' error.
    scale = upstream.double().cpu().abs() @ w64.abs()
    bound = 2 * OUTPUT_EPS[dtype] * (x64.grad.abs() + scale) + 1e-30
    assert x.grad.dtype == dtype and ((x.grad.double().cpu() - x64.grad).abs() <= bound).all()
    # dL/db = upstream summed over the 6 batch positions, in the layer's dtype.
    bias_scale = upstream.double().cpu().abs().sum(dim=(0, 1))
    assert ((layer.bias.grad.double().cpu() - b64.grad).abs() <= 8 * OUTPUT_EPS[dtype] * bias_scale).all()
    assert layer.values.grad is None


def test_gradient_wrt_values_is_refused(gen):
    layer, _, _ = pruned_layer(5, 9, torch.float32, gen, "cpu")
    layer.values.requires_grad_(True)
    y = layer(torch.ones(9))
    with pytest.raises(NotImplementedError, match="no gradient with respect to the matrix's values"):
        y.sum().backward()


# ----------------------------------------------------------------------
# torch.compile, inference mode, CUDA graphs


def small_sparse_model(dtype, device, gen):
    model = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32), nn.LayerNorm(32), nn.Linear(32, 16))
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.weight.mul_(torch.rand(module.weight.shape, generator=gen) < 0.5)
    model = model.to(device=device, dtype=dtype).eval()
    report = SparsifyReport()
    sparsify(model, progress=False, verbose=False, report=report)
    assert len(report.converted) == 3
    return model


def test_inference_mode(gen):
    model = small_sparse_model(torch.float32, "cpu", gen)
    x = random_tensor((4, 48), torch.float32, gen, "cpu")
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():
        y = model(x)
    assert y.is_inference() and torch.equal(y, expected)


def test_torch_compile_fullgraph_cpu(gen):
    torch._dynamo.reset()
    model = small_sparse_model(torch.float32, "cpu", gen)
    compiled = torch.compile(model, fullgraph=True)
    for shape in [(48,), (5, 48), (2, 3, 48)]:
        x = random_tensor(shape, torch.float32, gen, "cpu")
        with torch.no_grad():
            expected = model(x)
        with torch.no_grad():
            y = compiled(x)
        assert y.shape == expected.shape
        assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
    x = random_tensor((5, 48), torch.float32, gen, "cpu")
    with torch.inference_mode():
        assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    # backward through the compiled graph reaches the input
    x.requires_grad_()
    compiled(x).sum().backward()
    x_eager = x.detach().clone().requires_grad_()
    model(x_eager).sum().backward()
    assert torch.allclose(x.grad, x_eager.grad, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_torch_compile_cuda_graphs_fp16(gen):
    torch._dynamo.reset()
    model = small_sparse_model(torch.float16, "cuda", gen)
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    with torch.inference_mode():
        for step in range(4):  # the first calls record, later ones replay the CUDA graph
            x = random_tensor((8, 48), torch.float16, gen, "cuda")
            expected = model(x)
            y = compiled(x).clone()  # graph outputs are overwritten by the next replay
            assert torch.allclose(y.float(), expected.float(), rtol=2e-3, atol=2e-3), f"step {step}"
