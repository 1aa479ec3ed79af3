"""macko_spmv.save and load: a converted model to a safetensors file and back
into its dense architecture (on the meta device or not), and the errors of a
file that does not fit the model. The real MiniLM round trip is in
test_minilm.py."""

import pytest
import torch
from torch import nn

import macko_spmv
from conftest import requires_cuda
from macko_spmv import MackoLinear
from test_nn import Tower

CONVERTED = {"half_sparse", "blocks.0", "shared"}  # Tower's layers at min_sparsity=0.4


def converted_tower(gen, dtype=torch.float32):
    model = Tower(gen, dtype)
    macko_spmv.sparsify(model, min_sparsity=0.4, progress=False, verbose=False)
    assert {name for name, m in model.named_modules() if isinstance(m, MackoLinear)} >= CONVERTED
    return model


def meta_tower(dtype=torch.float32):
    with torch.device("meta"):
        return Tower(torch.Generator().manual_seed(1), dtype)


def all_tensors(model):
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def assert_same_model(target, model, tokens):
    assert set(target.state_dict()) == set(model.state_dict())
    for key, tensor in model.state_dict().items():
        loaded = target.state_dict()[key]
        assert loaded.dtype == tensor.dtype and torch.equal(loaded.cpu(), tensor.cpu()), key
    for name in CONVERTED | {"shared_again"}:
        assert isinstance(target.get_submodule(name), MackoLinear), name
    assert target.shared_again is target.shared  # a module used twice stays one module
    assert target.head.weight is target.embed.weight  # tied weights stay tied
    assert not any(tensor.is_meta for _, tensor in all_tensors(target))
    with torch.no_grad():
        loaded, saved = (m(tokens.to(m.embed.weight.device)).cpu() for m in (target, model))
    assert torch.equal(loaded, saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_into_the_dense_architecture_on_the_meta_device(tmp_path, dtype, gen):
    model = converted_tower(gen, dtype)
    path = tmp_path / "model.safetensors"
    macko_spmv.save(model, path)
    target = meta_tower()  # float32 on meta: the file's dtypes win
    assert macko_spmv.load(target, path) is target
    assert_same_model(target, model, torch.randint(0, 11, (3, 5), generator=gen))
    assert all(tensor.device.type == "cpu" for _, tensor in all_tensors(target))


def test_round_trip_into_a_dense_or_converted_model_with_weights(tmp_path, gen):
    model = converted_tower(gen)
    path = tmp_path / "model.safetensors"
    macko_spmv.save(model, str(path))
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    dense = Tower(torch.Generator().manual_seed(2))  # other weights, all dense
    assert_same_model(macko_spmv.load(dense, path), model, tokens)
    other = Tower(torch.Generator().manual_seed(3))
    with torch.no_grad():
        other.blocks[0].weight[:, :5] = 1.0  # fewer zeros, still above min_sparsity
    macko_spmv.sparsify(other, min_sparsity=0.4, progress=False, verbose=False)
    assert other.blocks[0].values.shape != model.blocks[0].values.shape  # MACKO arrays of other lengths
    assert_same_model(macko_spmv.load(other, path), model, tokens)


@requires_cuda
def test_load_onto_a_device(tmp_path, gen):
    model = converted_tower(gen, torch.float16)
    path = tmp_path / "model.safetensors"
    macko_spmv.save(model.to("cuda"), path)  # saved from the GPU
    target = macko_spmv.load(meta_tower(), path, device="cuda")
    assert all(tensor.device.type == "cuda" for _, tensor in all_tensors(target))
    assert_same_model(target, model, torch.randint(0, 11, (3, 5), generator=gen))
    on_gpu = Tower(torch.Generator().manual_seed(2)).to("cuda")
    macko_spmv.load(on_gpu, path)  # device=None: where the model's tensors are
    assert all(tensor.device.type == "cuda" for _, tensor in all_tensors(on_gpu))


class WithPositions(nn.Module):
    """A layer with a non-persistent buffer, as transformers' position ids."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)
        self.register_buffer("positions", torch.arange(16.0).expand(3, -1), persistent=False)

    def forward(self, x):
        return self.proj(x + self.positions)


def test_non_persistent_buffers_are_kept_for_a_meta_model(tmp_path, gen):
    model = WithPositions()
    with torch.no_grad():
        model.proj.weight.mul_(torch.rand(8, 16, generator=gen) < 0.5)
    macko_spmv.sparsify(model, progress=False, verbose=False)
    assert "positions" not in model.state_dict()
    macko_spmv.save(model, tmp_path / "model.safetensors")
    with torch.device("meta"):
        target = WithPositions()
    macko_spmv.load(target, tmp_path / "model.safetensors")
    assert torch.equal(target.positions, model.positions) and "positions" not in target.state_dict()
    x = torch.randn(3, 16, generator=gen)
    with torch.no_grad():
        assert torch.equal(target(x), model(x))


def test_tied_tensors_are_stored_once(tmp_path, gen):
    from safetensors import safe_open

    model = converted_tower(gen)
    macko_spmv.save(model, tmp_path / "model.safetensors")
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "embed.weight" in keys and "head.weight" not in keys
    assert "shared.values" in keys and "shared_again.values" not in keys


# ----------------------------------------------------------------------
# A file that does not fit the model: ValueError naming the first mismatched
# key, and the model left as it was.


@pytest.fixture
def saved(tmp_path, gen):
    path = tmp_path / "model.safetensors"
    macko_spmv.save(converted_tower(gen), path)
    return path


def assert_untouched(target):
    assert all(tensor.is_meta for _, tensor in all_tensors(target))
    assert not any(isinstance(m, MackoLinear) for m in target.modules())


def test_linear_of_another_shape(saved):
    target = meta_tower()
    with torch.device("meta"):
        target.blocks[0] = nn.Linear(40, 41)
        target.embed = nn.Embedding(12, 24)  # earlier in the model: named first
    with pytest.raises(ValueError, match=r"embed\.weight has shape \(11, 24\) in .* but \(12, 24\) in the model"):
        macko_spmv.load(target, saved)
    with torch.device("meta"):
        target.embed = nn.Embedding(11, 24)
    with pytest.raises(ValueError, match=r"stores blocks\.0 as a MACKO weight of shape \(40, 40\), but the "
                                         r"model's blocks\.0\.weight is \(41, 40\)"):
        macko_spmv.load(target, saved)
    assert_untouched(target)


def test_macko_layer_where_the_model_has_no_linear(saved):
    target = meta_tower()
    with torch.device("meta"):
        target.half_sparse = nn.Conv1d(40, 40, 1)
    with pytest.raises(ValueError, match="stores half_sparse as a MACKO linear layer, but the model's half_sparse "
                                         "is a Conv1d"):
        macko_spmv.load(target, saved)
    assert_untouched(target)


def test_keys_missing_on_either_side(saved):
    target = meta_tower()
    with torch.device("meta"):
        target.extra = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"the model's extra\.weight is not in .*strict=False"):
        macko_spmv.load(target, saved)
    # strict=False leaves it, but a tensor without data cannot stay on meta.
    with pytest.raises(ValueError, match=r"extra\.weight is on the meta device and .* holds no data for it"):
        macko_spmv.load(target, saved, strict=False)
    assert_untouched(target)
    target.extra = nn.Linear(3, 3)  # with data: strict=False loads the rest
    macko_spmv.load(target, saved, strict=False)
    assert isinstance(target.blocks[0], MackoLinear)

    target = meta_tower()
    del target.blocks[0]
    with pytest.raises(ValueError, match=r"holds blocks\.1\.bias, which has no place in the model"):
        macko_spmv.load(target, saved)  # blocks.1 is now blocks.0: the first mismatch in the model's order
    target = meta_tower()
    del target.half_sparse
    with pytest.raises(ValueError, match=r"holds half_sparse\.bias, which has no place in the model \(the file "
                                         r"stores half_sparse as a MACKO layer\)"):
        macko_spmv.load(target, saved)


def test_files_not_written_by_save(tmp_path, saved, gen):
    from safetensors.torch import load_file, save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"embed.weight": torch.zeros(11, 24)}, plain)
    with pytest.raises(ValueError, match="was not written by macko_spmv.save .*load_state_dict"):
        macko_spmv.load(meta_tower(), plain)

    from safetensors import safe_open

    with safe_open(saved, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(saved)
    tensors["blocks.0.row_indices"] = tensors["blocks.0.row_indices"].flip(0).contiguous()
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata=metadata)
    target = meta_tower()
    with pytest.raises(ValueError, match=r"invalid MACKO arrays for blocks\.0 in .*row_indices"):
        macko_spmv.load(target, broken)
    assert_untouched(target)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        macko_spmv.save({"a": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        macko_spmv.load({"a": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"weight is on the meta device: it has no data to save"):
        macko_spmv.save(meta_tower(), tmp_path / "x.safetensors")


# ----------------------------------------------------------------------
# A transformers model built from its config on the meta device


def test_transformers_model_from_a_config_on_the_meta_device(tmp_path, gen):
    """A small Llama (random weights, half of each linear weight zeroed):
    tied input and output embeddings, and rotary frequencies in
    non-persistent buffers, which a meta-built model lacks until loaded."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(torch.rand(module.weight.shape, generator=gen) < 0.5)
    report = macko_spmv.SparsifyReport()
    macko_spmv.sparsify(model, min_sparsity=0.3, progress=False, verbose=False, report=report)
    assert len(report.converted) == 14 and [layer.kind for layer in report.skipped] == ["tied"]  # lm_head
    tokens = torch.randint(0, 96, (2, 7), generator=gen)
    with torch.no_grad():
        expected = model(tokens).logits
    macko_spmv.save(model, tmp_path / "llama.safetensors")

    with torch.device("meta"):
        target = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert target.model.rotary_emb.inv_freq.is_meta
    macko_spmv.load(target, tmp_path / "llama.safetensors")
    assert sum(isinstance(m, MackoLinear) for m in target.modules()) == 14
    assert target.lm_head.weight is target.model.embed_tokens.weight
    assert not any(tensor.is_meta for _, tensor in all_tensors(target))
    with torch.no_grad():
        assert torch.equal(target(tokens).logits, expected)
