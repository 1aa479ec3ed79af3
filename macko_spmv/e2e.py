"""End-to-end decoding benchmark: a Llama-2-7B-shaped model, pruned, converted
with sparsify, and decoded token by token as a serving user would.

Run it as ``python -m macko_spmv e2e`` (or ``python benchmarks/e2e_llm.py``);
``--help`` lists the options. Needs ``transformers`` (and matplotlib for the
plots). The method:

- The model is a transformers ``LlamaForCausalLM`` built from a
  ``LlamaConfig`` with Llama-2-7B's shapes (``--config``), with random
  weights: nothing is downloaded. It is built on the meta device, cast to
  ``--dtype`` there, materialised on the target device with ``to_empty`` and
  filled in place: every parameter from its own generator seeded from
  ``--seed`` and the parameter's name (linear and embedding weights normal
  with std ``initializer_range`` = 0.02, RMSNorm weights one). Any variant's
  weights can so be made again on the device in about a second, without a
  copy of the dense model anywhere.
- Variants: "dense" is the original, unpruned model (nn.Linear, cuBLAS);
  for each density d, the same weights have every linear layer of the
  decoder blocks (q, k, v, o, gate, up, down projections; not lm_head or the
  embeddings) pruned per output row to its round(d * in_features) entries
  largest in magnitude (Wanda's unstructured per-row layout, scored by the
  weights themselves since there are no activations) and are then converted
  with ``sparsify``. A pruned model kept dense would cost what "dense" costs
  (cuBLAS does not skip zeros), so it is not timed; ``--check`` compares its
  logits with the MACKO model's.
- Memory: one model lives on the device at a time. Each variant builds its
  model afresh from the seed, prunes it in place, converts it (the dense
  weights of a layer are freed as sparsify replaces it), measures, and is
  then released: model, KV cache, compiled code and CUDA graph pools
  (``torch._dynamo.reset``), then ``gc.collect`` and
  ``torch.cuda.empty_cache``. The memory still allocated when a variant
  starts is written to the CSV, so a leak would show.
- Decoding: batch 1, a prompt of ``--prompt-len`` random tokens, a
  transformers ``StaticCache`` of prompt + new tokens + 1 entries. The
  prompt is prefilled eagerly; each new token then comes from one call of a
  decode step (model forward + greedy argmax) compiled with
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``, i.e. replayed
  as a CUDA graph. After a first call (compile, timed as ``compile_s``) and
  ``--warmup-runs`` untimed generations, each of ``--runs`` generations of
  ``--new-tokens`` tokens is timed with the wall clock between two device
  synchronisations (prefill excluded); tokens/s is new tokens over that
  time, and the CSV keeps the median run (ms_per_token = 1000 / tokens/s).
- Memory columns: ``peak_decode_bytes`` is torch.cuda.max_memory_allocated
  from after the conversion through compile, warm-up and the timed runs
  (weights, KV cache, activations, CUDA graph pools); ``peak_variant_bytes``
  also covers building and converting (for a sparse variant that includes
  the dense model it came from). ``weight_bytes`` is the bytes of the
  model's parameters and buffers.

``--check`` compares logits at every position of a few random prompts:
(1) the MACKO model's full forward (eager) against the pruned model's
before conversion, and (2) the timed decode path (the compiled step, token
by token through the static cache, teacher-forced) against the same
reference; for "dense" only (2), against its own eager forward. The error is
max|a - b| / max|a| over all logits; the limits are 1e-4 in float32 and
1e-2 in float16/bfloat16. ``--profile`` records ``--profile-steps`` decode
steps with torch.profiler and writes the share of GPU time in MACKO multiply
kernels, attention, dense matmuls, other kernels and idle gaps to
``profile-<variant>.txt`` (and the trace as JSON) in the output folder.
Results go to ``results.csv`` (a row per variant, written as each one
finishes) and ``meta.json``; the plots and ``summary.md`` are drawn from the
saved CSV only (``--plot-only DIR``).
"""

import argparse
import csv
import dataclasses
import datetime
import gc
import inspect
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import zlib
import torch
from torch import nn

import macko_spmv

from .bench import cpu_name, nvidia_driver_version, read_meta, set_caption, slug, unique, write_json

# --------------------------------------------------------------------------
# Model configurations

LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)
CONFIGS = {
    "llama2-7b": LLAMA2_7B,
    # The same layers, four of them: a quick check of the whole path on a GPU.
    "llama2-7b-4layers": {**LLAMA2_7B, "num_hidden_layers": 4},
    # For CPU tests and CI.
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    ),
}
COMMON_CONFIG = dict(rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=False, hidden_act="silu")

# The linear layers of the decoder blocks, by qualified name in LlamaForCausalLM.
DECODER_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
LINEARS_PER_LAYER = 7

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_DENSITIES = (0.7, 0.5, 0.3, 0.1)
# Largest max|a - b| / max|a| allowed between the MACKO model's logits and the
# pruned dense model's.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}

MEMORY_APPROACH = (
    "one model on the device at a time: every variant is built afresh on the device from the seed "
    "(per-parameter generators), pruned in place and converted with sparsify (each dense layer is freed as "
    "it is replaced); after measuring, the model, KV cache, compiled code and CUDA graph pools "
    "(torch._dynamo.reset) are released, then gc.collect() and torch.cuda.empty_cache(). "
    "allocated_at_start_bytes records what was still allocated when each variant began."
)


def make_config(name):
    """The transformers LlamaConfig of a named configuration (see CONFIGS)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    from transformers import LlamaConfig

    return LlamaConfig(**CONFIGS[name], **COMMON_CONFIG)


def tensor_seed(seed, *key):
    """A seed for one tensor, from the run's seed and the tensor's name: the
    same tensor gets the same numbers whatever else is built."""
    return (seed * 1_000_003 + zlib.crc32(repr(key).encode())) % (2**63)


def build_model(config, device, dtype, seed):
    """A LlamaForCausalLM with seeded random weights, made directly on
    ``device`` in ``dtype`` (no initialisation on the CPU first), in eval
    mode with gradients off."""
    from transformers import LlamaForCausalLM

    device = torch.device(device)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype)  # on the meta device: costs nothing
    model.to_empty(device=device)
    initialize_(model, seed)
    model.eval().requires_grad_(False)
    return model


def initialize_(model, seed):
    """Fills every tensor of a model that to_empty left uninitialised:
    weight matrices normal(0, initializer_range) from per-name generators,
    RMSNorm weights one, and the rotary embeddings' buffers, recomputed by
    building those modules anew on the device."""
    std = model.config.initializer_range
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                generator = torch.Generator(device=parameter.device).manual_seed(tensor_seed(seed, name))
                parameter.normal_(0.0, std, generator=generator)
            elif parameter.dim() == 1 and name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                raise ValueError(f"build_model does not know how to initialise parameter {name} "
                                 f"{tuple(parameter.shape)}")
    device = next(model.parameters()).device
    rotary_names = []
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            with torch.device(device):
                fresh = type(module)(config=model.config)
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child_name, fresh)
            rotary_names.append(name + ".")
    for name, _ in model.named_buffers():
        if not any(name.startswith(prefix) for prefix in rotary_names):
            raise ValueError(f"build_model does not know how to initialise buffer {name}")


def decoder_linear_names(model):
    """Qualified names of the decoder blocks' nn.Linear layers."""
    return [name for name, module in model.named_modules()
            if DECODER_LINEAR.search(name) and isinstance(module, nn.Linear)]  # fmt: skip


def prune_decoder_(model, density):
    """Prunes every decoder linear layer of ``model`` in place, keeping the
    round(density * in_features) entries of largest magnitude in each row
    (macko_spmv.prune); returns how many layers were pruned."""
    report = macko_spmv.PruneReport()
    macko_spmv.prune(model, density, filter_fn=lambda module, name: DECODER_LINEAR.search(name) is not None,
                     progress=False, verbose=False, report=report)  # fmt: skip
    return len(report.pruned)


def convert(model, progress=False):
    """sparsify restricted to the decoder linear layers, every one of them
    whatever its sparsity; checks that each was converted."""
    expected = len(decoder_linear_names(model))
    report = macko_spmv.SparsifyReport()
    macko_spmv.sparsify(model, min_sparsity=0.0, include=DECODER_LINEAR, progress=progress, verbose=False,
                        report=report)
    if len(report.converted) != expected:
        reasons = "; ".join(f"{layer.name}: {layer.reason}" for layer in report.skipped
                            if DECODER_LINEAR.search(layer.name))  # fmt: skip
        raise RuntimeError(f"sparsify converted {len(report.converted)} of {expected} decoder linear layers: {reasons}")
    return report


def model_bytes(model):
    """Bytes of the model's parameters and buffers (each tensor once)."""
    tensors = {}
    for tensor in (*model.parameters(), *model.buffers()):
        tensors[id(tensor)] = tensor
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def random_tokens(length, vocab_size, device, seed, *key):
    """[1, length] int64 token ids, uniform over the vocabulary, seeded."""
    generator = torch.Generator().manual_seed(tensor_seed(seed, *key))
    return torch.randint(0, vocab_size, (1, length), generator=generator).to(device)


# --------------------------------------------------------------------------
# Decoding with a static KV cache


def make_static_cache(config, max_cache_len, device, dtype):
    """A transformers StaticCache for batch 1, built with the arguments this
    transformers version's constructor takes (newer ones size themselves
    on the first update, older ones need the batch size, device and dtype)."""
    from transformers import StaticCache

    accepted = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": max_cache_len}
    for name, value in (("max_batch_size", 1), ("batch_size", 1), ("device", device), ("dtype", dtype)):
        if name in accepted:
            kwargs[name] = value
    return StaticCache(**kwargs)


def _mark_step():
    # Tells CUDA graph trees that a new decode step begins, so the previous
    # step's outputs may be overwritten (they are copied before that).
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if mark is not None:
        mark()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Decoder:
    """Greedy decoding of a LlamaForCausalLM with a static KV cache, the
    decode step optionally compiled (the prefill always runs eagerly, as
    transformers recommends for static caches).

    Calls the model with the keyword arguments this transformers version
    takes: the cache as ``cache`` (transformers >= 5.2x) or
    ``past_key_values``; explicit ``cache_position`` / ``position_ids`` only
    where forward still takes ``cache_position`` (4.x), newer static caches
    count their positions themselves.
    """

    def __init__(self, model, max_cache_len, compile=True, compile_mode="reduce-overhead", compile_backend="inductor"):
        self.model = model
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_cache_len = max_cache_len
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.explicit_positions = "cache_position" in parameters
        self.cache = make_static_cache(model.config, max_cache_len, self.device, self.dtype)
        self.compiled = bool(compile)
        if compile:
            options = {"mode": compile_mode} if compile_backend == "inductor" and compile_mode else {}
            self.step = torch.compile(self._step, fullgraph=True, backend=compile_backend, **options)
        else:
            self.step = self._step

    def _forward(self, tokens, positions):
        kwargs = {self.cache_argument: self.cache, "use_cache": True}
        if self.explicit_positions:
            kwargs["cache_position"] = positions
            kwargs["position_ids"] = positions.unsqueeze(0)
        return self.model(input_ids=tokens, **kwargs).logits

    def _step(self, token, position):
        """One decode step: token [1, 1] at ``position`` [1] -> (next token
        [1, 1], logits [1, vocab])."""
        logits = self._forward(token, position)[:, -1]
        return logits.argmax(dim=-1, keepdim=True), logits

    def prefill(self, prompt):
        """Empties the cache and runs the prompt [1, L] eagerly; returns
        (logits [1, L, vocab], first new token [1, 1], next position [1])."""
        length = prompt.shape[1]
        if length < 1 or length >= self.max_cache_len:
            raise ValueError(f"the prompt must have 1 to {self.max_cache_len - 1} tokens, got {length}")
        self.cache.reset()
        positions = torch.arange(length, device=self.device)
        with torch.no_grad():
            logits = self._forward(prompt, positions)
        token = logits[:, -1].argmax(dim=-1, keepdim=True)
        return logits, token, positions[-1:] + 1

    def decode(self, token, position, steps, out=None):
        """``steps`` decode steps from ``token`` at ``position``; returns the
        new tokens [1, steps] (written to ``out`` when given)."""
        if int(position[0]) + steps > self.max_cache_len:
            raise ValueError(f"{steps} steps from position {int(position[0])} overflow the cache "
                             f"({self.max_cache_len})")
        if out is None:
            out = torch.empty((1, steps), dtype=torch.long, device=self.device)
        with torch.no_grad():
            for index in range(steps):
                _mark_step()
                token, _ = self.step(token, position)
                token = token.clone()  # the graph's output buffer is reused by the next replay
                out[:, index : index + 1] = token
                if self.explicit_positions:
                    position = position + 1
        return out

    def generate(self, prompt, new_tokens):
        """Prefill, then ``new_tokens`` timed decode steps. Returns (tokens
        [1, 1 + new_tokens], decode seconds, prefill seconds)."""
        out = torch.empty((1, new_tokens + 1), dtype=torch.long, device=self.device)
        synchronize(self.device)
        start = time.perf_counter()
        _, token, position = self.prefill(prompt)
        out[:, :1] = token
        synchronize(self.device)
        prefilled = time.perf_counter()
        self.decode(token, position, new_tokens, out=out[:, 1:])
        synchronize(self.device)
        done = time.perf_counter()
        return out, done - prefilled, prefilled - start

    def teacher_forced_logits(self, tokens):
        """Logits [L, vocab] (float32) at every position of ``tokens`` [1, L]
        computed the way decoding computes them: the first token prefilled,
        every later one fed through the decode step with the static cache."""
        logits, _, position = self.prefill(tokens[:, :1])
        rows = [logits[0, -1].float()]
        with torch.no_grad():
            for index in range(1, tokens.shape[1]):
                _mark_step()
                _, step_logits = self.step(tokens[:, index : index + 1].clone(), position)
                rows.append(step_logits[0].float())  # a copy, before the next replay overwrites it
                if self.explicit_positions:
                    position = position + 1
        return torch.stack(rows)


# --------------------------------------------------------------------------
# Correctness


def relative_error(reference, other):
    """max|reference - other| / max|reference| (inf where either has NaN/Inf
    or the shapes differ)."""
    if reference.shape != other.shape:
        return math.inf
    reference, other = reference.double(), other.double()
    difference = float((reference - other).abs().max()) if reference.numel() else 0.0
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    if not (math.isfinite(difference) and math.isfinite(scale)):
        return math.inf
    if scale == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference / scale


def full_forward_logits(model, tokens):
    """Logits [L, vocab] (float32) of one causal forward over tokens [1, L], no cache."""
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits[0].float()


def check_prompts(config, count, length, device, seed):
    return [random_tokens(length, config.vocab_size, device, seed, "check", index) for index in range(count)]


@dataclasses.dataclass
class CheckResult:
    """Logits of the MACKO model against those of the same pruned weights
    kept dense; errors are max|a - b| / max|a| (NaN where not measured)."""

    density: float
    forward_error: float  # MACKO full forward (eager) vs dense pruned full forward
    decode_error: float  # the decode path (static cache, compiled step if compiled) vs the same reference
    tolerance: float

    @property
    def max_error(self):
        errors = [error for error in (self.forward_error, self.decode_error) if not math.isnan(error)]
        return max(errors) if errors else math.nan

    @property
    def passed(self):
        return not math.isnan(self.max_error) and self.max_error <= self.tolerance


def check_logits(config="tiny", density=0.5, *, device="cpu", dtype=torch.float32, prompts=2, prompt_len=16,
                 seed=0, compile=False, compile_mode="reduce-overhead", compile_backend="inductor", tolerance=None):
    """Builds a model (``config``: a name in CONFIGS or a LlamaConfig),
    prunes its decoder linear layers to ``density``, keeps the dense pruned
    model's logits for ``prompts`` random prompts of ``prompt_len`` tokens,
    converts with sparsify and compares: the MACKO model's full forward, and
    its decode path (teacher-forced, through a static cache; the step
    compiled when ``compile``). Returns a CheckResult; the model is freed."""
    device, config = torch.device(device), make_config(config) if isinstance(config, str) else config
    tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
    model = build_model(config, device, dtype, seed)
    prune_decoder_(model, density)
    tokens = check_prompts(config, prompts, prompt_len, device, seed)
    references = [full_forward_logits(model, prompt) for prompt in tokens]
    convert(model)
    forward_error = max(relative_error(ref, full_forward_logits(model, prompt))
                        for ref, prompt in zip(references, tokens))  # fmt: skip
    decoder = Decoder(model, prompt_len + 1, compile=compile, compile_mode=compile_mode,
                      compile_backend=compile_backend)  # fmt: skip
    decode_error = relative_error(references[0], decoder.teacher_forced_logits(tokens[0]))
    del decoder, model, references
    release_memory(device)
    return CheckResult(density, forward_error, decode_error, tolerance)


def release_memory(device):
    """Drops compiled code and CUDA graph pools, collects garbage and gives
    cached blocks back to the driver."""
    torch._dynamo.reset()
    if device.type == "cuda":
        try:
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()
        except ImportError:  # pragma: no cover - older torch
            pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------
# Profiling one decode step

KERNEL_CATEGORIES = (
    # (category, regular expression searched in the kernel name), first match wins
    ("macko multiply", re.compile(r"multiply_kernel")),
    ("attention", re.compile(r"attention|attn|flash|fmha|sdpa|softmax", re.IGNORECASE)),
    ("dense matmul", re.compile(r"gemm|gemv|cublas|cutlass|xmma|matmul|splitk|dot_kernel|\bmm_", re.IGNORECASE)),
)
GPU_EVENT_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def kernel_category(name):
    for category, pattern in KERNEL_CATEGORIES:
        if pattern.search(name):
            return category
    return "other kernels"


def kernel_breakdown(trace_events):
    """Where the GPU time went, from a Chrome trace's events (torch.profiler's
    export_chrome_trace): the window from the first GPU activity's start to
    the last one's end, split into the time in each kernel category and the
    idle gaps (the window minus the union of all GPU activity). Returns a
    dict with window_us, busy_us, idle_us, per-category microseconds, kernel
    count and the kernels with the most time."""
    activity = []
    for event in trace_events:
        if event.get("ph") == "X" and str(event.get("cat", "")).lower() in GPU_EVENT_CATEGORIES:
            start, duration = float(event["ts"]), float(event.get("dur", 0.0))
            activity.append((start, start + duration, event.get("name", "?")))
    categories = {name: 0.0 for name, _ in KERNEL_CATEGORIES}
    categories["other kernels"] = 0.0
    result = {"kernels": len(activity), "window_us": 0.0, "busy_us": 0.0, "idle_us": 0.0,
              "categories_us": categories, "top_kernels": []}  # fmt: skip
    if not activity:
        return result
    activity.sort()
    busy, current_start, current_end = 0.0, activity[0][0], activity[0][1]
    by_name = {}
    for start, end, name in activity:
        categories[kernel_category(name)] += end - start
        total, count = by_name.get(name, (0.0, 0))
        by_name[name] = (total + end - start, count + 1)
        if start > current_end:
            busy += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    busy += current_end - current_start
    window = max(end for _, end, _ in activity) - activity[0][0]
    result.update(window_us=window, busy_us=busy, idle_us=max(window - busy, 0.0))
    ranked = sorted(((total, count, name) for name, (total, count) in by_name.items()), reverse=True)
    result["top_kernels"] = ranked[:15]
    return result


def breakdown_fractions(breakdown):
    """{category: share of the window} plus "idle"; empty without kernels."""
    window = breakdown["window_us"]
    if not window:
        return {}
    shares = {name: value / window for name, value in breakdown["categories_us"].items()}
    shares["idle"] = breakdown["idle_us"] / window
    return shares


def profile_decode(decoder, prompt, steps, trace_path):
    """Records ``steps`` decode steps (after a prefill) with torch.profiler,
    writes the Chrome trace to ``trace_path`` and returns kernel_breakdown."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if decoder.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    _, token, position = decoder.prefill(prompt)
    synchronize(decoder.device)
    with profile(activities=activities) as profiler:
        decoder.decode(token, position, steps)
        synchronize(decoder.device)
    profiler.export_chrome_trace(trace_path)
    with open(trace_path) as trace_file:
        trace = json.load(trace_file)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return kernel_breakdown(events)


def format_profile(breakdown, steps, title, step_ms=None):
    """The profile as text for profile-<variant>.txt."""
    lines = [title, ""]
    if not breakdown["kernels"]:
        lines.append("No GPU activity was recorded (a CPU run, or the profiler saw no kernels).")
        return "\n".join(lines) + "\n"
    window_ms = breakdown["window_us"] / 1e3
    lines.append(f"{steps} decode step(s); window from the first GPU activity's start to the last one's end: "
                 f"{window_ms:.3f} ms ({window_ms / steps:.3f} ms per step)")  # fmt: skip
    if step_ms is not None:
        lines.append(f"median decode time per token in the timed runs (no profiler): {step_ms:.3f} ms")
    lines.append(f"GPU activities: {breakdown['kernels']} ({breakdown['kernels'] / steps:.0f} per step); "
                 f"busy {breakdown['busy_us'] / 1e3:.3f} ms")  # fmt: skip
    lines += ["", "share of the window:"]
    for name, value in breakdown["categories_us"].items():
        lines.append(f"  {name:<16} {value / breakdown['window_us']:7.1%}  {value / 1e3 / steps:9.4f} ms/step")
    idle = breakdown["idle_us"]
    lines.append(f"  {'idle gaps':<16} {idle / breakdown['window_us']:7.1%}  {idle / 1e3 / steps:9.4f} ms/step")
    lines += ["", "kernels with the most time (total ms, count, name):"]
    for total, count, name in breakdown["top_kernels"]:
        lines.append(f"  {total / 1e3:9.4f} {count:6d}  {name[:150]}")
    lines += ["", "Categories by kernel name: " + "; ".join(f"{name}: /{pattern.pattern}/" for name, pattern in
                                                          KERNEL_CATEGORIES) + "; anything else (memcpy, memset "
              "included) is 'other kernels'. Idle gaps = window minus the union of all GPU activity: launch and "
              "host time between and inside steps."]  # fmt: skip
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# One variant


CSV_COLUMNS = (
    "gpu", "torch", "cuda", "transformers", "date", "config", "dtype", "variant", "density", "pruned",
    "batch", "prompt_len", "new_tokens", "runs", "compile", "tokens_per_s", "tokens_per_s_min",
    "tokens_per_s_max", "ms_per_token", "prefill_ms", "weight_bytes", "decoder_linear_bytes",
    "converted_layers", "peak_decode_bytes", "peak_variant_bytes", "allocated_at_start_bytes",
    "build_s", "prune_s", "conversion_s", "compile_s", "warmup_s", "check_forward_err",
    "check_decode_err", "check_tolerance", "check_passed", "profile_macko_frac",
    "profile_attention_frac", "profile_dense_mm_frac", "profile_other_frac", "profile_idle_frac",
)  # fmt: skip

PROFILE_COLUMNS = {
    "macko multiply": "profile_macko_frac",
    "attention": "profile_attention_frac",
    "dense matmul": "profile_dense_mm_frac",
    "other kernels": "profile_other_frac",
    "idle": "profile_idle_frac",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """"dense" (density 1, unpruned nn.Linear) or "macko" at a density."""

    kind: str
    density: float

    @property
    def label(self):
        return "dense" if self.kind == "dense" else f"macko-d{self.density:g}"


def timed(device, function, *args, **kwargs):
    """(function's result, seconds), the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize(device)
    return result, time.perf_counter() - start


def run_variant(args, variant, config, device, dtype, env, out_dir, stage=lambda text: None):
    """Builds, (prunes and converts,) checks, times and profiles one variant;
    returns its CSV row. Everything it allocated is released on return."""
    nan = math.nan
    row = {column: "" for column in CSV_COLUMNS}
    row.update(env)
    row.update(config=args.config, dtype=args.dtype, variant=variant.kind, density=variant.density,
               pruned=int(variant.kind != "dense"), batch=1, prompt_len=args.prompt_len,
               new_tokens=args.new_tokens, runs=args.runs,
               compile=(args.compile_mode if args.compile_backend == "inductor" else args.compile_backend)
               if args.compile else "none")  # fmt: skip
    on_gpu = device.type == "cuda"
    if on_gpu:
        row["allocated_at_start_bytes"] = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    tolerance = args.check_tolerance if args.check_tolerance is not None else TOLERANCES[dtype]

    stage("build")
    model, row["build_s"] = timed(device, build_model, config, device, dtype, args.seed)
    check_tokens = check_prompts(config, args.check_prompts, args.prompt_len, device, args.seed) if args.check else []
    references = []
    if variant.kind == "dense":
        row.update(prune_s=0.0, conversion_s=0.0, converted_layers=0)
        if args.check:
            references = [full_forward_logits(model, prompt) for prompt in check_tokens]
        row["decoder_linear_bytes"] = sum(
            model.get_submodule(name).weight.nbytes for name in decoder_linear_names(model))
    else:
        stage("prune")
        _, row["prune_s"] = timed(device, prune_decoder_, model, variant.density)
        if args.check:
            stage("reference logits")
            references = [full_forward_logits(model, prompt) for prompt in check_tokens]
        stage("convert")
        report, row["conversion_s"] = timed(device, convert, model, False)
        row["converted_layers"] = len(report.converted)
        row["decoder_linear_bytes"] = report.weight_bytes_after
        del report
        if args.check:
            stage("check forward")
            row["check_forward_err"] = max(relative_error(ref, full_forward_logits(model, prompt))
                                           for ref, prompt in zip(references, check_tokens))  # fmt: skip
    row["weight_bytes"] = model_bytes(model)
    if on_gpu:
        row["peak_variant_bytes"] = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    prompt = random_tokens(args.prompt_len, config.vocab_size, device, args.seed, "prompt")
    decoder = Decoder(model, args.prompt_len + args.new_tokens + 1, compile=args.compile,
                      compile_mode=args.compile_mode, compile_backend=args.compile_backend)  # fmt: skip
    stage("compile" if args.compile else "first step")
    _, token, position = decoder.prefill(prompt)
    _, row["compile_s"] = timed(device, decoder.decode, token, position, 1)
    stage("warm-up")
    _, row["warmup_s"] = timed(device, lambda: [decoder.generate(prompt, args.new_tokens)
                                                for _ in range(args.warmup_runs)])  # fmt: skip
    decode_times, prefill_times, generated = [], [], None
    for run in range(args.runs):
        stage(f"run {run + 1}/{args.runs}")
        tokens, decode_s, prefill_s = decoder.generate(prompt, args.new_tokens)
        decode_times.append(decode_s)
        prefill_times.append(prefill_s)
        if generated is None:
            generated = tokens.cpu()
        elif not torch.equal(generated, tokens.cpu()):
            print(f"warning: {variant.label}: run {run + 1} generated other tokens than run 1", file=sys.stderr)
    rates = [args.new_tokens / seconds for seconds in decode_times]
    median_rate = statistics.median(rates)
    row.update(tokens_per_s=median_rate, tokens_per_s_min=min(rates), tokens_per_s_max=max(rates),
               ms_per_token=1e3 / median_rate, prefill_ms=1e3 * statistics.median(prefill_times))  # fmt: skip
    if on_gpu:
        row["peak_decode_bytes"] = torch.cuda.max_memory_allocated(device)
        row["peak_variant_bytes"] = max(row["peak_variant_bytes"], row["peak_decode_bytes"])

    if args.check:
        stage("check decode")
        row["check_decode_err"] = relative_error(references[0], decoder.teacher_forced_logits(check_tokens[0]))
        result = CheckResult(variant.density, row["check_forward_err"] if row["check_forward_err"] != "" else nan,
                             row["check_decode_err"], tolerance)  # fmt: skip
        row.update(check_tolerance=tolerance, check_passed=int(result.passed))
    if args.profile:
        stage("profile")
        steps = min(args.profile_steps, args.new_tokens)
        trace_path = os.path.join(out_dir, f"profile-{variant.label}.json")
        breakdown = profile_decode(decoder, prompt, steps, trace_path)
        for category, share in breakdown_fractions(breakdown).items():
            row[PROFILE_COLUMNS[category]] = share
        title = (f"Profile of {variant.label} ({args.config}, {args.dtype}, {env['gpu']}, compile: {row['compile']}, "
                 f"torch {env['torch']}, transformers {env['transformers']}, {env['date']})")  # fmt: skip
        with open(os.path.join(out_dir, f"profile-{variant.label}.txt"), "w") as text_file:
            text_file.write(format_profile(breakdown, steps, title, row["ms_per_token"]))

    stage("release")
    del decoder, model, references, check_tokens
    release_memory(device)
    return row


# --------------------------------------------------------------------------
# Command line


def parse_densities(text):
    try:
        densities = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"densities are comma-separated numbers, got {text!r}") from None
    if not densities or not all(0.0 < density <= 1.0 for density in densities):
        raise argparse.ArgumentTypeError(f"densities must lie in (0, 1], got {text!r}")
    return densities


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m macko_spmv e2e",
        description="Decode tokens/s, memory and conversion time of a Llama-2-7B-shaped model (random weights), "
        "dense and pruned + converted to MACKO at several densities, with a static KV cache under torch.compile.",
    )
    parser.add_argument("--config", choices=list(CONFIGS), default="llama2-7b",
                        help="model shapes: llama2-7b (default), llama2-7b-4layers (quick GPU check), tiny (CPU/CI)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default when available) or cpu (smoke tests)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="weights and activations (default float16 on cuda, float32 on cpu)")
    parser.add_argument("--densities", type=parse_densities, default=list(DEFAULT_DENSITIES),
                        help="comma-separated fractions of weights kept per row (default 0.7,0.5,0.3,0.1)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense (unpruned) variant")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="timed generations per variant; the median is kept (default 3)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="untimed generations after compiling (default 1)")
    parser.add_argument("--new-tokens", type=positive_int, default=128, help="tokens decoded per generation")
    parser.add_argument("--prompt-len", type=positive_int, default=32, help="random prompt tokens (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="decode eagerly (no torch.compile, no CUDA graphs)")
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode (default reduce-overhead: CUDA graphs)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor; 'eager' traces without code generation)")
    parser.add_argument("--check", action="store_true",
                        help="compare logits of the MACKO model and the dense pruned model (and of the decode path)")
    parser.add_argument("--check-prompts", type=positive_int, default=2, help="random prompts for --check")
    parser.add_argument("--check-tolerance", type=float, default=None,
                        help="largest max|a-b|/max|a| allowed (default 1e-4 float32, 1e-2 float16/bfloat16)")
    parser.add_argument("--profile", action="store_true",
                        help="profile decode steps with torch.profiler; writes profile-<variant>.txt/.json")
    parser.add_argument("--profile-steps", type=positive_int, default=5, help="decode steps to profile")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/e2e-<gpu>-<date>)")
    parser.add_argument("--append", action="store_true",
                        help="add rows to an existing results.csv in --out (split a sweep over several commands)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--plot-only", metavar="DIR", default=None,
                        help="only redraw the plots and summary.md from DIR/results.csv")
    return parser


def environment(device):
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    }


def equivalent_command(argv):
    return shlex.join(["python", "-m", "macko_spmv", "e2e", *argv])




def csv_value(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.plot_only:
        for path in plot(args.plot_only):
            print(path)
        return 0
    if args.warmup_runs < 0:
        raise SystemExit("--warmup-runs must be >= 0")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("the e2e benchmark needs transformers: pip install transformers") from None

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device is available; pass --device cpu --config tiny for a smoke test")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SystemExit(f"--device must be cuda or cpu, got {args.device!r}")
    args.dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)

    env = environment(device)
    out_dir = args.out or os.path.join("benchmarks", "results", f"e2e-{slug(env['gpu'])}-{env['date']}")
    os.makedirs(out_dir, exist_ok=True)
    csv_path, meta_path = os.path.join(out_dir, "results.csv"), os.path.join(out_dir, "meta.json")
    config = make_config(args.config)

    variants = ([] if args.no_dense else [Variant("dense", 1.0)]) + [Variant("macko", d) for d in args.densities]
    if not variants:
        raise SystemExit("nothing to run: --no-dense and no densities")

    meta = read_meta(out_dir) if args.append else {}
    command = equivalent_command(argv)
    meta.update({
        key: meta.get(key, value) for key, value in {
            "gpu": env["gpu"], "device": str(device), "torch": env["torch"], "cuda": env["cuda"],
            "transformers": env["transformers"], "driver": nvidia_driver_version() if device.type == "cuda" else None,
            "macko_spmv": macko_spmv.__version__, "macko_spmv_build": macko_spmv.ops.build_info(),
            "python": platform.python_version(), "date": env["date"],
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
        }.items()
    })  # fmt: skip
    meta.setdefault("commands", []).append(command)
    meta.setdefault("process_argv", []).append(sys.argv)
    meta.setdefault("settings", []).append({
        "config": args.config, "llama_config": {key: getattr(config, key) for key in (*CONFIGS[args.config],
                                                                                         *COMMON_CONFIG)},
        "dtype": args.dtype, "variants": [variant.label for variant in variants], "runs": args.runs,
        "warmup_runs": args.warmup_runs, "new_tokens": args.new_tokens, "prompt_len": args.prompt_len,
        "batch": 1, "seed": args.seed, "compile": args.compile, "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend, "check": args.check, "profile": args.profile,
    })  # fmt: skip
    for key in ("gpu", "torch", "transformers"):
        if meta[key] != env[key]:
            print(f"warning: appending a run with {key} {env[key]!r} to results made with {meta[key]!r}",
                  file=sys.stderr)  # fmt: skip
    meta["memory"] = MEMORY_APPROACH
    meta["method"] = (__doc__ or "").partition("The method:")[2].strip()
    write_json(meta_path, meta)

    print(f"device: {env['gpu']}; torch {env['torch']}, CUDA {env['cuda']}, transformers {env['transformers']}; "
          f"{args.config} {args.dtype}; variants: {', '.join(v.label for v in variants)}", file=sys.stderr)  # fmt: skip
    from tqdm import tqdm

    appending = args.append and os.path.exists(csv_path)
    if appending:
        with open(csv_path, newline="") as existing:
            header = next(csv.reader(existing), None)
        if header != list(CSV_COLUMNS):
            raise SystemExit(f"{csv_path} has other columns than this version writes; use another --out")
    rows, failed = [], []
    with open(csv_path, "a" if appending else "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS)
        if not appending:
            writer.writeheader()
        with tqdm(variants, desc="e2e", unit="variant", disable=not args.progress) as bar:
            for variant in bar:
                def stage(text, variant=variant):
                    bar.set_postfix_str(f"{variant.label}: {text}")

                row = run_variant(args, variant, config, device, dtype, env, out_dir, stage)
                writer.writerow({key: csv_value(value) for key, value in row.items()})
                csv_file.flush()
                rows.append(row)
                if args.check and not row["check_passed"]:
                    failed.append(variant.label)
                    bar.write(f"CHECK FAILED: {variant.label}: forward error {row['check_forward_err']}, decode error "
                              f"{row['check_decode_err']} > tolerance {row['check_tolerance']:g}")  # fmt: skip

    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(meta_path, meta)
    print(format_table(read_results(out_dir)))
    if not args.no_plot:
        plot(out_dir)
    print(f"results in {out_dir}", file=sys.stderr)
    if failed:
        print(f"the logits check failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------
# Reporting: everything below reads the saved CSV, never the live numbers.

TEXT_COLUMNS = {"gpu", "torch", "cuda", "transformers", "date", "config", "dtype", "variant", "compile"}


def read_results(results_dir):
    """The rows of DIR/results.csv, numbers as floats (NaN where empty)."""
    rows = []
    with open(os.path.join(results_dir, "results.csv"), newline="") as csv_file:
        for record in csv.DictReader(csv_file):
            row = {}
            for column, text in record.items():
                if column in TEXT_COLUMNS:
                    row[column] = text
                else:
                    row[column] = float(text) if text not in ("", None) else math.nan
            rows.append(row)
    return rows




def group_key(row):
    """Rows measured alike (same model, dtype, decode settings) share a key;
    a variant's speedup is over the dense row with its key."""
    return (row["gpu"], row["config"], row["dtype"], row["compile"], row["prompt_len"], row["new_tokens"])


def with_speedups(results):
    """The rows with speedup = tokens/s over the dense row of their group."""
    dense = {group_key(row): row["tokens_per_s"] for row in results if row["variant"] == "dense"}
    out = []
    for row in results:
        base = dense.get(group_key(row), math.nan)
        out.append({**row, "speedup": row["tokens_per_s"] / base if base and math.isfinite(base) else math.nan})
    return out


def finite_max(*values):
    """The largest non-NaN value (NaN when all are NaN)."""
    values = [value for value in values if not math.isnan(value)]
    return max(values) if values else math.nan


def gib(value):
    return value / 2**30 if math.isfinite(value) else math.nan


TABLE_COLUMNS = (
    # (heading, function of a row, format)
    ("config", lambda row: row["config"], ""),
    ("dtype", lambda row: row["dtype"], ""),
    ("variant", lambda row: row["variant"], ""),
    ("density", lambda row: row["density"], "g"),
    ("tok/s", lambda row: row["tokens_per_s"], ".1f"),
    ("ms/tok", lambda row: row["ms_per_token"], ".2f"),
    ("vs dense", lambda row: row["speedup"], ".2f"),
    ("peak GiB", lambda row: gib(row["peak_decode_bytes"]), ".2f"),
    ("weights GiB", lambda row: gib(row["weight_bytes"]), ".2f"),
    ("convert s", lambda row: row["conversion_s"], ".2f"),
    ("compile s", lambda row: row["compile_s"], ".1f"),
    ("check err", lambda row: finite_max(row["check_forward_err"], row["check_decode_err"]), ".2e"),
)  # fmt: skip


def table_cells(row):
    cells = []
    for _, value_of, spec in TABLE_COLUMNS:
        value = value_of(row)
        cells.append(value if isinstance(value, str) else ("n/a" if not math.isfinite(value) else format(value, spec)))
    return cells


def format_table(results):
    """The rows (from read_results) as an aligned plain-text table."""
    headings = [heading for heading, _, _ in TABLE_COLUMNS]
    lines = [table_cells(row) for row in with_speedups(results)]
    widths = [max(len(cell) for cell in column) for column in zip(headings, *lines)]
    render = lambda cells: "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))  # noqa: E731
    return "\n".join([render(headings), render(["-" * width for width in widths]), *map(render, lines)])


def write_summary(results_dir):
    """DIR/summary.md: the table with the command, GPU, versions and date."""
    results = read_results(results_dir)
    meta = read_meta(results_dir)
    first = results[0] if results else {}

    def fact(key):
        return meta.get(key) or first.get(key, "?")

    lines = [f"## End-to-end decoding on {fact('gpu')}", ""]
    for command in meta.get("commands", []):
        lines.append(f"- Command: `{command}`")
    driver = f", driver {meta['driver']}" if meta.get("driver") else ""
    lines += [
        f"- GPU: {fact('gpu')}{driver}",
        f"- torch {fact('torch')}, CUDA {fact('cuda')}, transformers {fact('transformers')}",
        f"- Date: {fact('date')}",
        "- Batch 1, greedy decoding with a static KV cache; tokens/s is the median of the timed runs (prefill "
        "excluded); peak = torch.cuda.max_memory_allocated during compile, warm-up and timed decoding; "
        "dense = the unpruned model; macko = decoder linear layers pruned per row to the density and converted "
        "with sparsify (lm_head and embeddings dense).",
        "",
    ]
    headings = [heading for heading, _, _ in TABLE_COLUMNS]
    lines.append("| " + " | ".join(headings) + " |")
    lines.append("| " + " | ".join("---" for _ in headings) + " |")
    for row in with_speedups(results):
        lines.append("| " + " | ".join(table_cells(row)) + " |")
    path = os.path.join(results_dir, "summary.md")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def plot(results_dir):
    """Draws e2e_tokens_per_s.png (tokens/s against density) and
    e2e_memory.png (peak memory and weight bytes against density) from
    DIR/results.csv, and writes DIR/summary.md. Returns the paths written;
    without matplotlib only summary.md."""
    written = [write_summary(results_dir)]
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install macko-spmv[bench]); skipping the plots", file=sys.stderr)
        return written
    results = with_speedups(read_results(results_dir))
    if not results:
        return written
    groups = unique(group_key(row) for row in results)
    colors = {group: f"C{index % 10}" for index, group in enumerate(groups)}

    def label(group):
        _, config, dtype, compile_mode, _, _ = group
        return f"{config} {dtype}, compile: {compile_mode}"

    def caption(figure):
        first = results[0]
        set_caption(figure, f"{first['gpu']}, torch {first['torch']}, CUDA {first['cuda']}, transformers "
                            f"{first['transformers']}, {first['date']}; batch 1, static KV cache, "
                            f"{first['new_tokens']:.0f} new tokens", fontsize=8)  # fmt: skip

    def new_figure():
        figure = Figure(figsize=(7, 5), layout="constrained")
        FigureCanvasAgg(figure)  # renders to PNG without a display or pyplot's global state
        return figure, figure.subplots()

    def save(figure, name):
        path = os.path.join(results_dir, name)
        figure.savefig(path, dpi=120)
        written.append(path)

    figure, axis = new_figure()
    for group in groups:
        rows = [row for row in results if group_key(row) == group]
        sparse = sorted((row["density"], row["tokens_per_s"]) for row in rows if row["variant"] == "macko")
        if sparse:
            axis.plot(*zip(*sparse), "o-", color=colors[group], label=f"MACKO, {label(group)}")
            for density, rate in sparse:
                speedup = next((row["speedup"] for row in rows
                                if row["variant"] == "macko" and row["density"] == density), math.nan)  # fmt: skip
                if math.isfinite(speedup):
                    axis.annotate(f"{speedup:.2f}x", (density, rate), textcoords="offset points", xytext=(4, 6),
                                  fontsize=7, color=colors[group])  # fmt: skip
        for row in rows:
            if row["variant"] == "dense":
                axis.axhline(row["tokens_per_s"], color=colors[group], linestyle="--",
                             label=f"dense (unpruned), {label(group)}")  # fmt: skip
    axis.set_xlim(0, 1.02)
    axis.set_xlabel("density (fraction of decoder linear weights kept)")
    axis.set_ylabel("decode tokens/s (median)")
    axis.set_title("Decode throughput against density")
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    caption(figure)
    save(figure, "e2e_tokens_per_s.png")

    figure, axis = new_figure()
    for group in groups:
        rows = [row for row in results if group_key(row) == group]
        for column, style, what in (("peak_decode_bytes", "o-", "peak"), ("weight_bytes", "s:", "weights")):
            sparse = sorted((row["density"], gib(row[column])) for row in rows
                            if row["variant"] == "macko" and math.isfinite(row[column]))  # fmt: skip
            if sparse:
                axis.plot(*zip(*sparse), style, color=colors[group], label=f"MACKO {what}, {label(group)}")
            for row in rows:
                if row["variant"] == "dense" and math.isfinite(row[column]):
                    axis.axhline(gib(row[column]), color=colors[group], linestyle="--" if what == "peak" else ":",
                                 alpha=0.7, label=f"dense {what}, {label(group)}")  # fmt: skip
    axis.set_xlim(0, 1.02)
    axis.set_xlabel("density (fraction of decoder linear weights kept)")
    axis.set_ylabel("GiB")
    axis.set_title("Peak GPU memory while decoding, and model weights")
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    caption(figure)
    save(figure, "e2e_memory.png")
    return written


if __name__ == "__main__":
    sys.exit(main())
