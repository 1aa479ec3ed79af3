"""The end-to-end benchmark (macko_spmv/bench/e2e.py) on the tiny Llama config.

On the CPU: the seeded model build, per-row magnitude pruning, conversion
of exactly the decoder linear layers, generation with a static KV cache at
batch 1 and above (eager, and traced by dynamo with fullgraph=True), logits
of the MACKO model against the dense pruned model (fp32, <= 1e-4), and a
tiny benchmark run's CSV (a row per variant and scenario: time to first
token, decode tokens/s, total time), meta.json, plots and profile report;
a run with 8-bit values (--values same,int8), its check against the model
of the dequantized weights.
With a GPU: the same check in fp16 (<= 1e-2) with the decode step under
torch.compile(mode="reduce-overhead") (CUDA graphs), and a tiny GPU run
with the profiler.
"""

import csv
import json
import math
import shutil

import pytest
import torch
from torch import nn

import macko_spmv
from conftest import requires_cuda

pytest.importorskip("transformers")
from macko_spmv.bench import e2e, spmv, tables  # noqa: E402

TINY_RUN = [
    "--config", "tiny",
    "--device", "cpu",
    "--densities", "0.5,0.1",
    "--prompt-lens", "5,9",
    "--batches", "1,3",
    "--runs", "2",
    "--new-tokens", "6",
    "--no-compile",
    "--check",
    "--check-prompt-len", "12",
    "--profile",
    "--profile-steps", "2",
    "--no-progress",
]  # fmt: skip
SCENARIOS = [(1, 5), (1, 9), (3, 5)]
# One scenario, with the check, at density 0.5 with values in the model's
# dtype and 8-bit ones.
EIGHT_BIT_RUN = [
    "--config", "tiny",
    "--device", "cpu",
    "--densities", "0.5",
    "--values", "same,int8",
    "--prompt-lens", "5",
    "--batches", "1",
    "--runs", "1",
    "--new-tokens", "3",
    "--no-compile",
    "--check",
    "--check-prompt-len", "8",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    assert e2e.main([*TINY_RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def eight_bit_results_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e-8bit")
    assert e2e.main([*EIGHT_BIT_RUN, "--out", str(out)]) == 0
    return out


def read_csv(path):
    with open(path / "results.csv", newline="") as csv_file:
        return list(csv.DictReader(csv_file))


# ----------------------------------------------------------------------
# Building and pruning


def test_build_model_is_seeded_and_fully_initialised():
    config = e2e.make_config("tiny")
    first = e2e.build_model(config, "cpu", torch.float32, seed=3)
    again = e2e.build_model(config, "cpu", torch.float32, seed=3)
    other = e2e.build_model(config, "cpu", torch.float32, seed=4)
    state, state_again, state_other = first.state_dict(), again.state_dict(), other.state_dict()
    assert state.keys() == state_again.keys()
    for name, tensor in state.items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, state_again[name]), name
        if name.endswith("norm.weight"):
            assert torch.equal(tensor, torch.ones_like(tensor))
        elif tensor.dim() == 2:
            assert not torch.equal(tensor, state_other[name]), name
            assert 0.015 < float(tensor.std()) < 0.025, name
    for name, buffer in first.named_buffers():  # the rotary frequencies, recomputed after to_empty
        assert buffer.dtype == torch.float32 and torch.isfinite(buffer).all() and buffer.abs().max() > 0, name
    assert e2e.model_bytes(first) == sum(t.numel() * t.element_size()
                                         for t in (*first.parameters(), *first.buffers()))  # fmt: skip
    half = e2e.build_model(config, "cpu", torch.float16, seed=3)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert half.model.rotary_emb.inv_freq.dtype == torch.float32


def test_conversion_replaces_exactly_the_decoder_linear_layers():
    config = e2e.make_config("tiny")
    model = e2e.build_model(config, "cpu", torch.float32, seed=0)
    names = e2e.decoder_linear_names(model)
    assert len(names) == e2e.LINEARS_PER_LAYER * config.num_hidden_layers
    assert e2e.prune_decoder_(model, 0.3) == len(names)
    dense_bytes = 0
    for name in names:
        weight = model.get_submodule(name).weight
        dense_bytes += weight.nbytes
        assert (weight != 0).sum(dim=1).tolist() == [round(0.3 * weight.shape[1])] * weight.shape[0]
    converted_bytes = e2e.convert(model)
    assert converted_bytes == sum(model.get_submodule(name).nbytes for name in names) < dense_bytes
    for name in names:
        assert isinstance(model.get_submodule(name), macko_spmv.MackoLinear)
        assert model.get_submodule(name).density == pytest.approx(0.3, abs=0.01)
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.model.embed_tokens, nn.Embedding)


# ----------------------------------------------------------------------
# Correctness and generation


def test_relative_error():
    a = torch.tensor([[1.0, -4.0], [2.0, 0.0]])
    assert e2e.relative_error(a, a) == 0.0
    assert e2e.relative_error(a, a + torch.tensor([[0.0, 0.0], [0.0, 0.02]])) == pytest.approx(0.005)
    assert e2e.relative_error(a, a.flatten()) == math.inf
    assert e2e.relative_error(a, a * math.nan) == math.inf
    assert e2e.relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


@pytest.mark.parametrize("density", [0.7, 0.5, 0.1])
def test_macko_logits_match_the_dense_pruned_model_fp32(density):
    result = e2e.check_logits("tiny", density, device="cpu", dtype=torch.float32, prompts=2, prompt_len=12)
    assert result.tolerance == 1e-4
    assert result.forward_error <= 1e-4 and result.decode_error <= 1e-4, result
    assert result.passed


def test_decode_step_traces_as_one_graph_cpu():
    # dynamo with fullgraph=True and the "eager" backend: the decode step
    # (transformers' Llama with a static cache and MackoLinear layers)
    # traces without graph breaks; inductor's code generation is left to
    # the GPU test (and the slow test below).
    result = e2e.check_logits("tiny", 0.5, device="cpu", dtype=torch.float32, prompts=1, prompt_len=8,
                              compile=True, compile_backend="eager")  # fmt: skip
    assert result.passed, result


def test_a_wrong_model_fails_the_check(monkeypatch):
    # The check must notice a MACKO model that computes something else:
    # here every converted layer drops one stored value.
    original = e2e.convert

    def broken_convert(model, progress=False):
        converted_bytes = original(model, progress)
        for module in model.modules():
            if isinstance(module, macko_spmv.MackoLinear):
                module.values[int(torch.nonzero(module.values)[0])] = 0
        return converted_bytes

    monkeypatch.setattr(e2e, "convert", broken_convert)
    result = e2e.check_logits("tiny", 0.5, device="cpu", dtype=torch.float32, prompts=1, prompt_len=8)
    assert not result.passed and result.forward_error > 1e-4


@pytest.mark.parametrize("batch", [1, 3])
def test_generation_produces_the_dense_pruned_models_tokens(batch):
    config = e2e.make_config("tiny")
    prompt = e2e.random_tokens(batch, 7, config.vocab_size, "cpu", 0, "prompt")
    generated = {}
    for kind in ("dense-pruned", "macko"):
        model = e2e.build_model(config, "cpu", torch.float32, seed=0)
        e2e.prune_decoder_(model, 0.5)
        if kind == "macko":
            e2e.convert(model)
        decoder = e2e.Decoder(model, 7 + 10 + 1, batch, compile=False)
        tokens, decode_s, prefill_s = decoder.generate(prompt, 10)
        assert tokens.shape == (batch, 11) and tokens.dtype == torch.long
        assert 0 <= int(tokens.min()) and int(tokens.max()) < config.vocab_size
        assert decode_s > 0 and prefill_s > 0
        again, _, _ = decoder.generate(prompt, 10)  # the cache is reset by the prefill
        assert torch.equal(tokens, again)
        generated[kind] = tokens
    assert torch.equal(generated["dense-pruned"], generated["macko"])
    if batch > 1:  # every sequence of the batch decodes as it would alone
        model = e2e.build_model(config, "cpu", torch.float32, seed=0)
        e2e.prune_decoder_(model, 0.5)
        alone = e2e.Decoder(model, 7 + 10 + 1, 1, compile=False)
        for index in range(batch):
            tokens, _, _ = alone.generate(prompt[index : index + 1], 10)
            assert torch.equal(tokens[0], generated["dense-pruned"][index])


def test_decoder_refuses_to_overflow_the_cache_or_take_another_batch():
    config = e2e.make_config("tiny")
    model = e2e.build_model(config, "cpu", torch.float32, seed=0)
    decoder = e2e.Decoder(model, 8, compile=False)
    with pytest.raises(ValueError, match="prompt"):
        decoder.prefill(torch.zeros((1, 8), dtype=torch.long))
    with pytest.raises(ValueError, match="1 prompts at a time"):
        decoder.prefill(torch.zeros((2, 4), dtype=torch.long))
    _, token, position = decoder.prefill(torch.zeros((1, 4), dtype=torch.long))
    with pytest.raises(ValueError, match="overflow"):
        decoder.decode(token, position, 5)
    with pytest.raises(ValueError, match="batch 1"):
        e2e.Decoder(model, 8, 2, compile=False).teacher_forced_logits(torch.zeros((1, 4), dtype=torch.long))


def test_scenarios_and_cache_sizes():
    assert e2e.scenarios([1, 8], [128, 512, 2048]) == [(1, 128), (1, 512), (1, 2048), (8, 128)]
    assert e2e.scenarios([8, 16], [512, 128]) == [(8, 128), (16, 128)]
    assert e2e.scenarios([1], [32]) == [(1, 32)]
    plan = e2e.scenarios([1, 8], [128, 512, 2048])
    assert e2e.cache_lengths(plan, 128, per_prompt=False) == {(1, 128): 2177, (1, 512): 2177, (1, 2048): 2177,
                                                              (8, 128): 257}  # fmt: skip
    assert e2e.cache_lengths(plan, 128, per_prompt=True) == {(1, 128): 257, (1, 512): 641, (1, 2048): 2177,
                                                             (8, 128): 257}  # fmt: skip


# ----------------------------------------------------------------------
# The benchmark run and its outputs


def test_csv_has_a_row_per_variant_and_scenario_and_every_column(results_dir):
    rows = read_csv(results_dir)
    assert list(rows[0].keys()) == list(tables.E2E_COLUMNS)
    variants = (("dense", 1.0), ("macko", 0.5), ("macko", 0.1))
    expected = [(variant, density, batch, prompt) for variant, density in variants for batch, prompt in SCENARIOS]
    got = [(row["variant"], float(row["density"]), int(row["batch"]), int(row["prompt_len"])) for row in rows]
    assert got == expected
    for row in rows:
        assert row["config"] == "tiny" and row["dtype"] == "float32" and row["compile"] == "none"
        batch, new_tokens = int(row["batch"]), int(row["new_tokens"])
        assert int(row["cache_len"]) == (9 if batch == 1 else 5) + new_tokens + 1  # one cache per batch size
        rate, decode_ms, prefill_ms, total_ms = (float(row[c]) for c in ("tokens_per_s", "decode_ms", "prefill_ms",
                                                                         "total_ms"))  # fmt: skip
        assert rate > 0 and prefill_ms > 0 and decode_ms > 0
        assert float(row["ms_per_token"]) == pytest.approx(decode_ms / new_tokens, rel=1e-4)
        # medians of the runs: the total's median lies between the parts' extremes
        assert float(row["prefill_ms_min"]) <= prefill_ms <= float(row["prefill_ms_max"])
        assert float(row["tokens_per_s_min"]) <= rate <= float(row["tokens_per_s_max"])
        assert total_ms >= 0.5 * (prefill_ms + decode_ms)
        assert batch * new_tokens / float(row["tokens_per_s_max"]) <= decode_ms / 1e3 * 1.0001
        assert int(row["check_passed"]) == 1 and float(row["check_decode_err"]) <= 1e-4
        assert float(row["weight_bytes"]) > 0
        assert row["peak_decode_bytes"] == ""  # no CUDA memory on the CPU
    dense, sparse = rows[0], [row for row in rows if row["variant"] == "macko"]
    assert int(dense["pruned"]) == 0 and int(dense["converted_layers"]) == 0 and dense["check_forward_err"] == ""
    for row in sparse:
        assert int(row["pruned"]) == 1 and int(row["converted_layers"]) == 14
        assert float(row["check_forward_err"]) <= 1e-4
        assert float(row["conversion_s"]) > 0
        assert float(row["weight_bytes"]) < float(dense["weight_bytes"])
        assert float(row["decoder_linear_bytes"]) < float(dense["decoder_linear_bytes"])
    assert float(sparse[-1]["weight_bytes"]) < float(sparse[0]["weight_bytes"])  # 0.1 below 0.5


def test_speedups_are_over_the_dense_row_of_the_same_scenario(results_dir):
    results = tables.read_e2e_results(results_dir)
    dense = {(row["batch"], row["prompt_len"]): row for row in results if row["variant"] == "dense"}
    for row in results:
        base = dense[(row["batch"], row["prompt_len"])]
        assert row["speedup_tokens"] == pytest.approx(row["tokens_per_s"] / base["tokens_per_s"])
        assert row["speedup_prefill"] == pytest.approx(base["prefill_ms"] / row["prefill_ms"])
        assert row["speedup_total"] == pytest.approx(base["total_ms"] / row["total_ms"])
    table = tables.e2e_report(results)
    for heading in ("TTFT ms", "tok/s", "total ms", "vs dense", "prompt", "batch"):
        assert heading in table


def test_meta_records_how_the_numbers_were_made(results_dir):
    with open(results_dir / "meta.json") as file:
        meta = json.load(file)
    for key in ("gpu", "torch", "cuda", "transformers", "date", "command", "memory", "method"):
        assert meta[key], key
    assert meta["command"].startswith("python -m macko_spmv e2e --config tiny")
    settings = meta["settings"][0]
    assert settings["variants"] == ["dense", "macko-d0.5", "macko-d0.1"]
    assert settings["llama_config"]["hidden_size"] == 64
    assert [tuple(pair) for pair in settings["scenarios"]] == SCENARIOS


def test_plots_summary_and_profile_reports(results_dir, tmp_path):
    pytest.importorskip("matplotlib")
    names = ("e2e_tokens_per_s.png", "e2e_prefill.png", "e2e_total.png", "e2e_memory.png", "summary.md")
    for name in names:
        assert (results_dir / name).stat().st_size > 0, name
    for label in ("dense", "macko-d0.5", "macko-d0.1"):
        text = (results_dir / f"profile-{label}.txt").read_text()
        assert text.startswith(f"Profile of {label}")
    # --plot-only redraws everything from the CSV alone.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(results_dir / "results.csv", copy / "results.csv")
    assert e2e.main(["--plot-only", str(copy)]) == 0
    for name in names:
        assert (copy / name).stat().st_size > 0, name
    summary = (copy / "summary.md").read_text()
    assert "TTFT" in summary and summary.count("| tiny |") == 9


def test_plot_only_reads_the_csv_of_the_older_version(tmp_path):
    """A CSV of one row per variant at batch 1 (the committed results of
    earlier runs) still gives its table and plots."""
    old_columns = [c for c in tables.E2E_COLUMNS if c not in ("cache_len", "prefill_ms_min", "prefill_ms_max",
                                                              "decode_ms", "total_ms")]  # fmt: skip
    with open(tmp_path / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=old_columns)
        writer.writeheader()
        for variant, density, rate in (("dense", 1, 160.0), ("macko", 0.5, 187.0)):
            writer.writerow({**dict.fromkeys(old_columns, ""), "gpu": "GPU", "config": "llama2-7b", "dtype": "float16",
                             "variant": variant, "density": density, "batch": 1, "prompt_len": 32, "new_tokens": 128,
                             "compile": "reduce-overhead", "tokens_per_s": rate, "prefill_ms": 40.0,
                             "weight_bytes": 1e9, "peak_decode_bytes": 2e9})  # fmt: skip
    from macko_spmv.bench import plots

    written = plots.plot_e2e(tmp_path)
    assert any(path.endswith("summary.md") for path in written)
    table = tables.e2e_report(tables.read_e2e_results(tmp_path))
    assert "1.17" in table and "total ms" not in table  # 187 / 160; no total time measured then


def test_append_adds_rows_to_an_earlier_run(results_dir, tmp_path):
    out = tmp_path / "appended"
    shutil.copytree(results_dir, out)
    assert e2e.main(["--config", "tiny", "--device", "cpu", "--densities", "0.3", "--no-dense", "--runs", "1",
                     "--new-tokens", "3", "--prompt-lens", "4", "--batches", "1", "--no-compile", "--no-progress",
                     "--no-plot", "--append", "--out", str(out)]) == 0  # fmt: skip
    rows = read_csv(out)
    assert len(rows) == 3 * len(SCENARIOS) + 1 and rows[-1]["density"] == "0.3"
    with open(out / "meta.json") as file:
        assert len(json.load(file)["commands"]) == 2


def test_variant_names_and_labels():
    variants = (e2e.Variant("dense", 1.0), e2e.Variant("macko", 0.5), e2e.Variant("macko", 0.1, "float8_e4m3fn"))
    assert [(variant.name, variant.label, variant.value_dtype) for variant in variants] == [
        ("dense", "dense", None), ("macko", "macko-d0.5", None),
        ("macko-float8_e4m3fn", "macko-d0.1-float8_e4m3fn", torch.float8_e4m3fn)]  # fmt: skip
    for values in spmv.VALUE_DTYPES:
        assert tables.e2e_variant_values(e2e.Variant("macko", 0.5, values).name) == values
    assert tables.e2e_variant_values("dense") == "same"


def test_dequantized_reference_puts_the_macko_layers_back():
    config = e2e.make_config("tiny")
    model = e2e.build_model(config, "cpu", torch.float32, seed=0)
    e2e.prune_decoder_(model, 0.5)
    e2e.convert(model, value_dtype=torch.int8)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, macko_spmv.MackoLinear)}
    assert len(layers) == e2e.LINEARS_PER_LAYER * config.num_hidden_layers
    prompts = e2e.check_prompts(config, 2, 6, "cpu", 0)
    references = e2e.dequantized_reference_logits(model, prompts)
    assert {name: model.get_submodule(name) for name in layers} == layers  # the same modules, in place
    assert not e2e.decoder_linear_names(model)  # no nn.Linear left in the decoder
    for reference, prompt in zip(references, prompts):
        assert reference.shape == (6, config.vocab_size)
        assert e2e.relative_error(reference, e2e.full_forward_logits(model, prompt)) <= 1e-4


def test_8bit_values_are_checked_against_the_dequantized_model(eight_bit_results_dir):
    rows = read_csv(eight_bit_results_dir)
    assert [(row["variant"], float(row["density"])) for row in rows] == [("dense", 1.0), ("macko", 0.5),
                                                                         ("macko-int8", 0.5)]  # fmt: skip
    dense, macko, int8 = rows
    for row in rows:
        assert int(row["check_passed"]) == 1 and float(row["check_tolerance"]) == 1e-4
        assert float(row["check_decode_err"]) <= 1e-4
    for row in (macko, int8):
        assert float(row["check_forward_err"]) <= 1e-4 and int(row["converted_layers"]) == 14
    assert float(int8["decoder_linear_bytes"]) < float(macko["decoder_linear_bytes"])
    assert float(int8["weight_bytes"]) < float(macko["weight_bytes"]) < float(dense["weight_bytes"])
    with open(eight_bit_results_dir / "meta.json") as file:
        settings = json.load(file)["settings"][0]
    assert settings["values"] == ["same", "int8"]
    assert settings["variants"] == ["dense", "macko-d0.5", "macko-d0.5-int8"]
    results = tables.read_e2e_results(eight_bit_results_dir)
    assert math.isfinite(results[2]["speedup_tokens"]) and math.isfinite(results[2]["speedup_total"])
    assert "macko-int8" in tables.e2e_report(results)
    assert "| macko-int8 |" in (eight_bit_results_dir / "summary.md").read_text()


def test_the_8bit_check_fails_against_the_pruned_weights(monkeypatch, tmp_path):
    """The check above can fail: int8 values are a few 1e-3 off the pruned
    weights' logits in float32, far over the tolerance, so a reference
    taken from the pruned (unquantized) model fails it."""
    config = e2e.make_config("tiny")

    def pruned_model_logits(model, prompts):
        pruned = e2e.build_model(config, "cpu", torch.float32, seed=0)
        e2e.prune_decoder_(pruned, 0.5)
        return [e2e.full_forward_logits(pruned, prompt) for prompt in prompts]

    monkeypatch.setattr(e2e, "dequantized_reference_logits", pruned_model_logits)
    # The later --values wins: the int8 variant alone.
    assert e2e.main([*EIGHT_BIT_RUN, "--values", "int8", "--no-dense", "--no-plot", "--out", str(tmp_path)]) == 1
    (row,) = read_csv(tmp_path)
    assert row["variant"] == "macko-int8" and int(row["check_passed"]) == 0
    assert float(row["check_forward_err"]) > 1e-3 and float(row["check_decode_err"]) > 1e-3


def test_plots_with_8bit_rows(eight_bit_results_dir, tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(eight_bit_results_dir / "results.csv", tmp_path / "results.csv")
    assert e2e.main(["--plot-only", str(tmp_path)]) == 0
    for name in ("e2e_tokens_per_s.png", "e2e_prefill.png", "e2e_total.png", "e2e_memory.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| macko-int8 |" in (tmp_path / "summary.md").read_text()


def test_each_variant_frees_its_model_before_the_next(monkeypatch, tmp_path):
    """No reference to a variant's model outlives run_variant (a decoder
    left in a local name kept the dense model allocated while the sparse
    variants ran, and their peak memory counted it)."""
    import gc
    import weakref

    built = []
    build = e2e.build_model

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    def alive_at_build(*args, **kwargs):
        # No gc.collect() here: a model caught in a reference cycle stays
        # allocated until a collection, which release_memory must have made
        # after the last reference went away.
        assert all(ref() is None for ref in built), "an earlier variant's model is still allocated"
        return recording_build(*args, **kwargs)

    monkeypatch.setattr(e2e, "build_model", alive_at_build)
    assert e2e.main(["--config", "tiny", "--device", "cpu", "--densities", "0.5", "--runs", "1", "--new-tokens", "2",
                     "--prompt-lens", "4", "--batches", "1", "--no-compile", "--no-progress", "--no-plot",
                     "--check", "--check-prompt-len", "6", "--profile", "--profile-steps", "1",
                     "--out", str(tmp_path)]) == 0  # fmt: skip
    gc.collect()
    assert len(built) == 2 and all(ref() is None for ref in built)


def test_kernel_breakdown_splits_the_window():
    events = [
        {"ph": "X", "cat": "kernel", "name": "void macko::multiply_kernel<half>(...)", "ts": 0.0, "dur": 10.0},
        {"ph": "X", "cat": "kernel", "name": "fmha_cutlassF_f16_aligned_64x64_rf_sm80", "ts": 12.0, "dur": 3.0},
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_f16f16_f32", "ts": 15.0, "dur": 4.0},
        {"ph": "X", "cat": "kernel", "name": "nvjet_sm90_hsh_256x8_64x6_2x1_v_bz_TNT", "ts": 19.0, "dur": 1.0},
        {"ph": "X", "cat": "kernel", "name": "triton_red_fused_add_mean_mul_pow_rsqrt_0", "ts": 24.0, "dur": 2.0},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)", "ts": 28.0, "dur": 2.0},
        {"ph": "X", "cat": "kernel", "name": "void macko::cuda::(anonymous namespace)::decompress_rows_kernel<half>",
         "ts": 30.0, "dur": 1.5},
        {"ph": "X", "cat": "kernel", "name": "void macko::cuda::(anonymous namespace)::dequantize_kernel<int8>",
         "ts": 31.5, "dur": 0.5},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 100.0},  # host side: not GPU time
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 200.0, "dur": 50.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 1.0, "dur": 4.0},
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 5.0},  # not a duration event: ignored
    ]
    breakdown = e2e.kernel_breakdown(events)
    assert breakdown["kernels"] == 8
    assert breakdown["window_us"] == pytest.approx(32.0)
    assert breakdown["busy_us"] == pytest.approx(24.0)
    assert breakdown["idle_us"] == pytest.approx(8.0)
    assert breakdown["categories_us"] == {"macko multiply": 10.0, "macko decompress": 2.0, "attention": 3.0,
                                          "dense matmul": 5.0, "other kernels": 4.0}  # fmt: skip
    assert breakdown["top_host_ops"] == [(150.0, 2, "aten::mm"), (4.0, 1, "cudaLaunchKernel")]
    shares = e2e.breakdown_fractions(breakdown)
    assert sum(shares.values()) == pytest.approx(1.0)
    text = e2e.format_profile(breakdown, 1, "Profile of test")
    assert "0.1500      2      75.0  aten::mm" in text
    assert "macko multiply" in text and "idle gaps" in text and "25.0%" in text and "1 x decode step" in text
    prefill = e2e.format_profile(breakdown, 1, "Prefill", 2.5, unit="prefill of 8 tokens")
    assert "1 x prefill of 8 tokens" in prefill
    assert "one prefill of 8 tokens in the timed runs (no profiler): 2.500" in prefill
    assert e2e.kernel_breakdown([])["kernels"] == 0 and e2e.breakdown_fractions(e2e.kernel_breakdown([])) == {}


def test_cli_rejects_bad_arguments():
    for bad in (["--densities", "0"], ["--densities", "1.5"], ["--config", "llama3"], ["--runs", "0"],
                ["--prompt-lens", "0"], ["--batches", "1,x"], ["--values", "int4"],
                ["--config", "tiny", "--prompt-lens", "600"]):  # tiny has 512 positions  # fmt: skip
        with pytest.raises(SystemExit):
            e2e.main([*bad, "--device", "cpu"])


def test_python_dash_m_dispatches_to_e2e(monkeypatch):
    from macko_spmv import __main__ as cli

    seen = []
    monkeypatch.setattr(e2e, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["e2e", "--config", "tiny"]) == 0
    assert seen == [["--config", "tiny"]]


# ----------------------------------------------------------------------
# Compiled decoding


@pytest.mark.slow
def test_inductor_compiled_decode_cpu():
    # Inductor's C++ code generation on the CPU takes half a minute on two cores.
    result = e2e.check_logits("tiny", 0.5, device="cpu", dtype=torch.float32, prompts=1, prompt_len=8, compile=True)
    assert result.passed, result


@requires_cuda
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_macko_logits_match_fp16_gpu_compiled(density):
    result = e2e.check_logits("tiny", density, device="cuda", dtype=torch.float16, prompts=2, prompt_len=12,
                              compile=True)  # fmt: skip
    assert result.tolerance == 1e-2
    assert result.passed, result


@requires_cuda
def test_tiny_gpu_run_with_cuda_graphs_and_profile(tmp_path):
    argv = ["--config", "tiny", "--device", "cuda", "--densities", "0.5", "--runs", "2", "--new-tokens", "8",
            "--prompt-lens", "8,16", "--batches", "1,4", "--check", "--profile", "--profile-steps", "3",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert e2e.main(argv) == 0
    rows = read_csv(tmp_path)
    assert [(row["variant"], int(row["batch"]), int(row["prompt_len"])) for row in rows] == [
        (variant, batch, prompt) for variant in ("dense", "macko") for batch, prompt in ((1, 8), (1, 16), (4, 8))]
    for row in rows:
        assert row["dtype"] == "float16" and row["compile"] == "reduce-overhead"
        assert int(row["check_passed"]) == 1
        assert float(row["peak_decode_bytes"]) > 0 and float(row["tokens_per_s"]) > 0
        assert float(row["total_ms"]) > float(row["prefill_ms"]) > 0
    # The profiler sees the kernels replayed from the CUDA graph, MACKO's among them.
    macko = next(row for row in rows if row["variant"] == "macko")
    profile = (tmp_path / "profile-macko-d0.5.txt").read_text()
    assert float(macko["profile_macko_frac"]) > 0, profile
    assert rows[0]["profile_macko_frac"] in ("", "0")
    # Then a prefill of each prompt length, MACKO's kernels among its own.
    for length in (8, 16):
        assert f"1 x prefill of {length} tokens" in profile, profile
        assert (tmp_path / f"profile-macko-d0.5-prefill{length}.json").exists()
    assert "macko::" in profile.split("1 x prefill of 16 tokens")[1], profile
