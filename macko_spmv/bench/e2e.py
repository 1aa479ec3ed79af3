"""End-to-end generation benchmark: a Llama-2-7B-shaped model, pruned,
converted with sparsify, prefilled and decoded as a user of generate waits
for it.

Run it as ``python -m macko_spmv e2e``; ``--help`` lists the options. Needs
``transformers`` (and matplotlib for the plots). The method:

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
  for each density d (``--densities``, default 0.5 and 0.1), the same
  weights have every linear layer of the decoder blocks (q, k, v, o, gate,
  up, down projections; not lm_head or the embeddings) pruned per output
  row to its round(d * in_features) entries largest in magnitude (Wanda's
  unstructured per-row layout, scored by the weights themselves since there
  are no activations) and are then converted with ``sparsify``. A pruned
  model kept dense would cost what "dense" costs (cuBLAS does not skip
  zeros), so it is not timed; ``--check`` compares its logits with the
  MACKO model's. ``--values`` (default "same") picks what the converted
  layers store, one variant per density and value type: "same" (values
  in ``--dtype``; variant "macko", label macko-d<density>), int8 or
  float8_e4m3fn (sparsify's ``value_dtype``: 8-bit values with one scale
  per output row, activations still in ``--dtype``; variant
  "macko-<values>", label macko-d<density>-<values>).
- Memory: one model lives on the device at a time. Each variant builds its
  model afresh from the seed, prunes it in place, converts it (the dense
  weights of a layer are freed as sparsify replaces it), measures, and is
  then released: model, KV caches, compiled code and CUDA graph pools
  (``torch._dynamo.reset``), then ``gc.collect`` and
  ``torch.cuda.empty_cache``. The memory still allocated when a variant
  starts is written to the CSV, so a leak would show.
- Scenarios: batch 1 with each prompt length of ``--prompt-lens`` (default
  128, 512 and 2048 tokens), and every other batch size of ``--batches``
  (default 8) with the shortest prompt; each generates ``--new-tokens``
  (default 128) tokens per sequence. Prompts are random tokens. A scenario
  runs ``--warmup-runs`` untimed generations and then ``--runs`` timed
  ones; the CSV keeps the median run (and the fastest and slowest).
- A generation: the prompt is prefilled eagerly (as transformers does for
  static caches), then each new token comes from one call of a decode step
  (model forward + greedy argmax) compiled with
  ``torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)``,
  i.e. replayed as a CUDA graph, through a transformers ``StaticCache``;
  as generate does, the prefill computes the logits of the last position
  only (``logits_to_keep=1``, where the model takes it).
  Every phase is timed with the wall clock between two device
  synchronisations. prefill_ms (time to first token) covers the prefill
  and the first token's argmax; decode_ms the new tokens' decode steps;
  total_ms both: what a user waits for the prompt and its new tokens.
  tokens_per_s = batch x new tokens / decode time (the whole batch's
  rate), ms_per_token = decode time / new tokens (one step).
- Caches: one decode step and one StaticCache per batch size, sized for its
  longest prompt + new tokens + 1 (cache_len), so that each batch size is
  compiled once per variant (compile_s: the first step, compile and CUDA
  graph recording included); the attention of every decode step spans the
  whole cache, so a short prompt decodes a little slower than in a cache
  sized for it. ``--cache-per-prompt`` gives every prompt length a cache
  of its own size (and a compile of its own).
- Memory columns: ``peak_decode_bytes`` is torch.cuda.max_memory_allocated
  from after the conversion through compile, warm-up and the timed runs
  (weights, KV caches, activations, CUDA graph pools); ``peak_variant_bytes``
  also covers building and converting (for a sparse variant that includes
  the dense model it came from), but not the dense copy that ``--check``
  makes of an 8-bit variant (the peak is read before that copy is made and
  the statistics are reset once it is freed). ``weight_bytes`` is the bytes
  of the model's parameters and buffers; ``decoder_linear_bytes`` those of
  the decoder linear layers' weights (compressed, for MACKO: scales
  included).

``--check`` compares logits at every position of ``--check-prompts``
random prompts of ``--check-prompt-len`` tokens: (1) the MACKO model's full
forward (eager) against the pruned model's before conversion, and (2) the
timed decode path (the batch-1 compiled step, token by token through the
static cache, teacher-forced) against the same reference; for "dense" only
(2), against its own eager forward. With 8-bit values the quantization
changes the weights, so the reference is the model with the dequantized
weights instead: after conversion (and the MACKO model's logits) the
model is densified (its nn.Linear layers then hold decompress's weights
exactly, no requantizing), the reference logits computed, and the
MackoLinear modules put back. The error is max|a - b| / max|a| over
all logits; the limits are 1e-4 in float32 and 1e-2 in float16/bfloat16.
``--profile`` records ``--profile-steps`` batch-1 decode steps, then one
batch-1 prefill of each prompt length, with torch.profiler, and writes
the share of GPU time in MACKO multiply kernels, MACKO decompress kernels
(the dense route's slabs, 8-bit values' dequantized temporary), attention,
dense matmuls, other kernels and idle gaps to ``profile-<variant>.txt``
(the traces as ``profile-<variant>.json`` and
``profile-<variant>-prefill<L>.json``) in the output folder; the CSV's
profile columns are the decode steps'.
Results go to ``results.csv`` (a row per variant and scenario, a variant's
rows written as it finishes) and ``meta.json``; the plots and
``summary.md`` are drawn from the saved CSV only (``--plot-only DIR``).
"""

import argparse
import dataclasses
import gc
import inspect
import json
import math
import os
import re
import statistics
import sys

import torch
from torch import nn

import macko_spmv
from macko_spmv.nn import _replace

from . import plots, records, spmv, tables
from .matrices import derived_seed, seeded_generator
from .timing import synchronize, wall_clock

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
    "tiny": dict(LLAMA2_7B, vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
}
COMMON_CONFIG = dict(rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=False, hidden_act="silu")

# The linear layers of the decoder blocks, by qualified name in LlamaForCausalLM.
DECODER_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
LINEARS_PER_LAYER = 7

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_DENSITIES = (0.5, 0.1)
DEFAULT_PROMPT_LENS = (128, 512, 2048)
DEFAULT_BATCHES = (1, 8)
DEFAULT_NEW_TOKENS = 128
# Largest max|a - b| / max|a| allowed between the MACKO model's logits and the
# pruned dense model's.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}

MEMORY_APPROACH = (
    "one model on the device at a time: every variant is built afresh on the device from the seed "
    "(per-parameter generators), pruned in place and converted with sparsify (each dense layer is freed as "
    "it is replaced); after measuring, the model, KV caches, compiled code and CUDA graph pools "
    "(torch._dynamo.reset) are released, then gc.collect() and torch.cuda.empty_cache(). "
    "allocated_at_start_bytes records what was still allocated when each variant began."
)


def make_config(name):
    """The transformers LlamaConfig of a named configuration (see CONFIGS)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    from transformers import LlamaConfig

    return LlamaConfig(**CONFIGS[name], **COMMON_CONFIG)


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
                generator = seeded_generator(derived_seed(seed, name), parameter.device)
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


def convert(model, progress=False, value_dtype=None):
    """sparsify restricted to the decoder linear layers, every one of them
    whatever its sparsity, with sparsify's ``value_dtype`` (None, or
    torch.int8 / torch.float8_e4m3fn for 8-bit values); checks that each was
    converted. Returns the bytes of the converted layers' compressed weights."""
    names = decoder_linear_names(model)
    macko_spmv.sparsify(model, min_sparsity=0.0, include=DECODER_LINEAR, progress=progress, verbose=False,
                        value_dtype=value_dtype)  # fmt: skip
    layers = [model.get_submodule(name) for name in names]
    missed = [name for name, layer in zip(names, layers) if not isinstance(layer, macko_spmv.MackoLinear)]
    if missed:
        raise RuntimeError(f"sparsify left {len(missed)} of {len(names)} decoder linear layers dense, e.g. {missed[0]}")
    return sum(layer.nbytes for layer in layers)


def model_bytes(model):
    """Bytes of the model's parameters and buffers (each tensor once)."""
    tensors = {}
    for tensor in (*model.parameters(), *model.buffers()):
        tensors[id(tensor)] = tensor
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def random_tokens(batch, length, vocab_size, device, seed, *key):
    """[batch, length] int64 token ids, uniform over the vocabulary, seeded
    by ``key``."""
    generator = seeded_generator(derived_seed(seed, *key))
    return torch.randint(0, vocab_size, (batch, length), generator=generator).to(device)


# --------------------------------------------------------------------------
# Decoding with a static KV cache


def make_static_cache(config, batch, max_cache_len, device, dtype):
    """A transformers StaticCache for ``batch`` sequences, built with the
    arguments this transformers version's constructor takes (newer ones size
    themselves on the first update, older ones need the batch size, device
    and dtype)."""
    from transformers import StaticCache

    accepted = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": max_cache_len}
    for name, value in (("max_batch_size", batch), ("batch_size", batch), ("device", device), ("dtype", dtype)):
        if name in accepted:
            kwargs[name] = value
    return StaticCache(**kwargs)


def _mark_step():
    # Tells CUDA graph trees that a new decode step begins, so the previous
    # step's outputs may be overwritten (they are copied before that).
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if mark is not None:
        mark()


class Decoder:
    """Greedy decoding of a LlamaForCausalLM for ``batch`` sequences of equal
    length with a static KV cache of ``max_cache_len`` entries, the decode
    step optionally compiled (the prefill always runs eagerly, as
    transformers recommends for static caches).

    Calls the model with the keyword arguments this transformers version
    takes: the cache as ``cache`` (transformers >= 5.2x) or
    ``past_key_values``; explicit ``cache_position`` / ``position_ids`` only
    where forward still takes ``cache_position`` (4.x), newer static caches
    count their positions themselves.
    """

    def __init__(self, model, max_cache_len, batch=1, compile=True, compile_mode="reduce-overhead",
                 compile_backend="inductor"):
        self.model = model
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.batch = batch
        self.max_cache_len = max_cache_len
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.explicit_positions = "cache_position" in parameters
        # As generate does: the prefill computes the logits of the last
        # position only, where forward can be told so.
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.cache = make_static_cache(model.config, batch, max_cache_len, self.device, self.dtype)
        self.compiled = bool(compile)
        if compile:
            options = {"mode": compile_mode} if compile_backend == "inductor" and compile_mode else {}
            # dynamic=False: every batch size and cache gets a graph of its
            # own shapes, rather than one with symbolic sizes after the second.
            self.step = torch.compile(self._step, fullgraph=True, dynamic=False, backend=compile_backend, **options)
        else:
            self.step = self._step

    def _forward(self, tokens, positions, **extra):
        kwargs = {self.cache_argument: self.cache, "use_cache": True, **extra}
        if self.explicit_positions:
            kwargs["cache_position"] = positions
            kwargs["position_ids"] = positions.unsqueeze(0)
        return self.model(input_ids=tokens, **kwargs).logits

    def _step(self, token, position):
        """One decode step: tokens [batch, 1] at ``position`` [1] -> (next
        tokens [batch, 1], logits [batch, vocab])."""
        logits = self._forward(token, position)[:, -1]
        return logits.argmax(dim=-1, keepdim=True), logits

    def prefill(self, prompt):
        """Empties the cache and runs the prompts [batch, L] eagerly; returns
        (logits [batch, L or 1, vocab]: the last position's at least, first
        new tokens [batch, 1], next position [1])."""
        count, length = prompt.shape
        if count != self.batch:
            raise ValueError(f"this decoder takes {self.batch} prompts at a time, got {count}")
        if length < 1 or length >= self.max_cache_len:
            raise ValueError(f"the prompt must have 1 to {self.max_cache_len - 1} tokens, got {length}")
        self.cache.reset()
        positions = torch.arange(length, device=self.device)
        with torch.no_grad():
            logits = self._forward(prompt, positions, **self.last_logits_only)
        token = logits[:, -1].argmax(dim=-1, keepdim=True)
        return logits, token, positions[-1:] + 1

    def decode(self, token, position, steps, out=None):
        """``steps`` decode steps from ``token`` [batch, 1] at ``position``;
        returns the new tokens [batch, steps] (written to ``out`` when given)."""
        if int(position[0]) + steps > self.max_cache_len:
            raise ValueError(f"{steps} steps from position {int(position[0])} overflow the cache "
                             f"({self.max_cache_len})")
        if out is None:
            out = torch.empty((self.batch, steps), dtype=torch.long, device=self.device)
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
        """Prefill, then ``new_tokens`` decode steps. Returns (tokens
        [batch, 1 + new_tokens], decode seconds, prefill seconds); the
        prefill's seconds include the first token's argmax."""
        out = torch.empty((self.batch, new_tokens + 1), dtype=torch.long, device=self.device)
        (_, token, position), prefill_s = wall_clock(self.device, self.prefill, prompt)
        out[:, :1] = token
        _, decode_s = wall_clock(self.device, self.decode, token, position, new_tokens, out=out[:, 1:])
        return out, decode_s, prefill_s

    def teacher_forced_logits(self, tokens):
        """Logits [L, vocab] (float32) at every position of ``tokens`` [1, L]
        computed the way decoding computes them: the first token prefilled,
        every later one fed through the decode step with the static cache.
        A batch-1 decoder only."""
        if self.batch != 1:
            raise ValueError("teacher_forced_logits needs a decoder of batch 1")
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
    return [random_tokens(1, length, config.vocab_size, device, seed, "check", index) for index in range(count)]


def dequantized_reference_logits(model, prompts):
    """The check's reference for a model converted with 8-bit values, whose
    quantization changed the weights: the full-forward logits of each prompt
    with every MackoLinear replaced by an nn.Linear of the weight it
    multiplies (densify: exactly decompress's dequantized weight; nothing
    is quantized again). The same MackoLinear modules are then put back in
    place, and the dense copies are freed on return."""
    macko_layers = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
                    if isinstance(module, macko_spmv.MackoLinear)]  # fmt: skip
    macko_spmv.densify(model)
    try:
        return [full_forward_logits(model, prompt) for prompt in prompts]
    finally:
        for name, module in macko_layers:
            _replace(model, name, module)


@dataclasses.dataclass
class CheckResult:
    """Logits of the MACKO model against those of the same pruned weights
    kept dense (dequantized, for 8-bit values); errors are max|a - b| /
    max|a| (NaN where not measured)."""

    density: float
    forward_error: float  # MACKO full forward (eager) vs dense pruned full forward
    decode_error: float  # the decode path (static cache, compiled step if compiled) vs the same reference
    tolerance: float

    @property
    def max_error(self):
        return tables.finite_max(self.forward_error, self.decode_error)

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
# Profiling decode steps and prefills

KERNEL_CATEGORIES = (
    # (category, regular expression searched in the kernel name), first match wins
    ("macko multiply", re.compile(r"multiply_kernel")),
    # The dense route's slabs and the dequantized temporary of 8-bit values.
    ("macko decompress", re.compile(r"decompress_rows_kernel|dequantize_kernel")),
    ("attention", re.compile(r"attention|attn|flash|fmha|sdpa|softmax", re.IGNORECASE)),
    # nvjet: cuBLAS's GEMM kernels on Hopper (nvjet_sm90_...).
    ("dense matmul", re.compile(r"gemm|gemv|cublas|cutlass|xmma|nvjet|matmul|splitk|dot_kernel|\bmm_", re.IGNORECASE)),
)
GPU_EVENT_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
# Host-side events: operators (nested: an op's time includes its callees')
# and CUDA runtime and driver calls (launches, allocations, syncs).
HOST_EVENT_CATEGORIES = {"cpu_op", "cuda_runtime", "cuda_driver"}


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
    count and the kernels with the most time; and top_host_ops, the host
    operators and CUDA runtime calls with the most time (a prefill is bound
    by them when the GPU idles: which op's host time a layer call costs)."""
    activity = []
    host = {}
    for event in trace_events:
        if event.get("ph") != "X":
            continue
        category = str(event.get("cat", "")).lower()
        if category in GPU_EVENT_CATEGORIES:
            start, duration = float(event["ts"]), float(event.get("dur", 0.0))
            activity.append((start, start + duration, event.get("name", "?")))
        elif category in HOST_EVENT_CATEGORIES:
            total, count = host.get(event.get("name", "?"), (0.0, 0))
            host[event.get("name", "?")] = (total + float(event.get("dur", 0.0)), count + 1)
    categories = {name: 0.0 for name, _ in KERNEL_CATEGORIES}
    categories["other kernels"] = 0.0
    top_host = sorted(((total, count, name) for name, (total, count) in host.items()), reverse=True)[:20]
    result = {"kernels": len(activity), "window_us": 0.0, "busy_us": 0.0, "idle_us": 0.0,
              "categories_us": categories, "top_kernels": [], "top_host_ops": top_host}  # fmt: skip
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


def profile_gpu(work, device, trace_path):
    """Runs ``work()`` under torch.profiler (host and, on a GPU, kernels),
    writes the Chrome trace to ``trace_path`` and returns kernel_breakdown."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with profile(activities=activities) as profiler:
        work()
        synchronize(device)
    profiler.export_chrome_trace(trace_path)
    with open(trace_path) as trace_file:
        trace = json.load(trace_file)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return kernel_breakdown(events)


def profile_decode(decoder, prompt, steps, trace_path):
    """Records ``steps`` decode steps (after an unrecorded prefill of
    ``prompt``); returns kernel_breakdown (profile_gpu)."""
    _, token, position = decoder.prefill(prompt)
    return profile_gpu(lambda: decoder.decode(token, position, steps), decoder.device, trace_path)


def profile_prefill(decoder, prompt, trace_path):
    """Records one prefill of ``prompt`` [batch, L] (eager, as timed);
    returns kernel_breakdown (profile_gpu)."""
    return profile_gpu(lambda: decoder.prefill(prompt), decoder.device, trace_path)


def format_profile(breakdown, steps, title, step_ms=None, unit="decode step"):
    """The profile as text for profile-<variant>.txt: ``steps`` repetitions
    of ``unit`` ("decode step", or e.g. "prefill of 512 tokens"); step_ms,
    the timed median of one (no profiler), if known."""
    lines = [title, ""]
    if not breakdown["kernels"]:
        lines.append("No GPU activity was recorded (a CPU run, or the profiler saw no kernels).")
        return "\n".join(lines) + "\n"
    window_ms = breakdown["window_us"] / 1e3
    lines.append(f"{steps} x {unit}; window from the first GPU activity's start to the last one's end: "
                 f"{window_ms:.3f} ms ({window_ms / steps:.3f} ms each)")  # fmt: skip
    if step_ms is not None:
        lines.append(f"median time of one {unit} in the timed runs (no profiler): {step_ms:.3f} ms")
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
    if breakdown.get("top_host_ops"):
        lines += ["", "host operators and CUDA runtime calls with the most time (total ms, calls, us a call, name; "
                  "an operator's time includes the operators it calls):"]  # fmt: skip
        for total, count, name in breakdown["top_host_ops"]:
            lines.append(f"  {total / 1e3:9.4f} {count:6d} {total / count:9.1f}  {name[:120]}")
    lines += ["", "Categories by kernel name: " + "; ".join(f"{name}: /{pattern.pattern}/" for name, pattern in
                                                          KERNEL_CATEGORIES) + "; anything else (memcpy, memset "
              "included) is 'other kernels'. Idle gaps = window minus the union of all GPU activity: launch and "
              "host time between and inside steps."]  # fmt: skip
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# One variant

PROFILE_COLUMNS = {
    "macko multiply": "profile_macko_frac",
    "macko decompress": "profile_macko_decompress_frac",
    "attention": "profile_attention_frac",
    "dense matmul": "profile_dense_mm_frac",
    "other kernels": "profile_other_frac",
    "idle": "profile_idle_frac",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """"dense" (density 1, unpruned nn.Linear) or "macko" at a density, its
    values stored as ``values`` says (a key of spmv.VALUE_DTYPES: "same",
    the model's dtype, or 8-bit "int8" / "float8_e4m3fn")."""

    kind: str
    density: float
    values: str = "same"

    @property
    def name(self):
        """The CSV's variant column: dense, macko, macko-int8, ..."""
        return tables.e2e_variant_name(self.kind, self.values)

    @property
    def label(self):
        """The name with the density, for file names: dense, macko-d0.5, macko-d0.5-int8, ..."""
        return "dense" if self.kind == "dense" else tables.e2e_variant_name(f"{self.kind}-d{self.density:g}",
                                                                            self.values)  # fmt: skip

    @property
    def value_dtype(self):
        return spmv.VALUE_DTYPES[self.values]


def scenarios(batches, prompt_lens):
    """(batch, prompt length) pairs: batch 1 with every prompt length, every
    other batch size with the shortest."""
    shortest = min(prompt_lens)
    out = [(1, length) for length in prompt_lens] if 1 in batches else []
    return out + [(batch, shortest) for batch in batches if batch != 1]


def cache_lengths(plan, new_tokens, per_prompt):
    """{(batch, prompt length): cache entries}: each batch size's longest
    prompt + new tokens + 1 (one cache and one compile per batch size), or
    with ``per_prompt`` each prompt's own length + new tokens + 1."""
    longest = {}
    for batch, length in plan:
        longest[batch] = max(longest.get(batch, 0), length)
    return {(batch, length): (length if per_prompt else longest[batch]) + new_tokens + 1 for batch, length in plan}


def median_and_range(values):
    return statistics.median(values), min(values), max(values)


def first_step(args, model, config, device, batch, cache_len):
    """(a Decoder for ``batch`` sequences with a cache of ``cache_len``,
    seconds of its first decode step: compile and CUDA graph recording)."""
    decoder = Decoder(model, cache_len, batch, compile=args.compile, compile_mode=args.compile_mode,
                      compile_backend=args.compile_backend)  # fmt: skip
    _, token, position = decoder.prefill(random_tokens(batch, 1, config.vocab_size, device, args.seed, "first step"))
    _, seconds = wall_clock(device, decoder.decode, token, position, 1)
    return decoder, seconds


def run_variant(args, variant, config, device, dtype, env, out_dir, stage=lambda text: None):
    """Builds, (prunes and converts,) checks, times every scenario and
    profiles one variant; returns its CSV rows, one per scenario. Everything
    it allocated is released on return: the measuring happens in a frame of
    its own, so that no local name there (a decoder, a loop variable) still
    holds the model when the memory is given back and the next variant's
    allocated_at_start_bytes is read."""
    try:
        return _measure_variant(args, variant, config, device, dtype, env, out_dir, stage)
    finally:
        stage("release")
        release_memory(device)


def _measure_variant(args, variant, config, device, dtype, env, out_dir, stage):
    nan = math.nan
    common = {**env, "config": args.config, "dtype": args.dtype, "variant": variant.name,
              "density": variant.density, "pruned": int(variant.kind != "dense"), "new_tokens": args.new_tokens,
              "runs": args.runs, "compile": (args.compile_mode if args.compile_backend == "inductor"
                                             else args.compile_backend) if args.compile else "none"}  # fmt: skip
    on_gpu = device.type == "cuda"
    if on_gpu:
        common["allocated_at_start_bytes"] = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    tolerance = args.check_tolerance if args.check_tolerance is not None else TOLERANCES[dtype]

    stage("build")
    model, common["build_s"] = wall_clock(device, build_model, config, device, dtype, args.seed)
    check_tokens = (check_prompts(config, args.check_prompts, args.check_prompt_len, device, args.seed)
                    if args.check else [])  # fmt: skip
    references = []
    peak_before_check_copy = 0  # see "reference logits" below
    if variant.kind == "dense":
        common.update(prune_s=0.0, conversion_s=0.0, converted_layers=0)
        if args.check:
            references = [full_forward_logits(model, prompt) for prompt in check_tokens]
        common["decoder_linear_bytes"] = sum(
            model.get_submodule(name).weight.nbytes for name in decoder_linear_names(model))
    else:
        stage("prune")
        pruned_layers, common["prune_s"] = wall_clock(device, prune_decoder_, model, variant.density)
        if args.check and variant.value_dtype is None:
            stage("reference logits")  # the pruned weights are what the conversion stores
            references = [full_forward_logits(model, prompt) for prompt in check_tokens]
        stage("convert")
        common["decoder_linear_bytes"], common["conversion_s"] = wall_clock(device, convert, model, False,
                                                                            variant.value_dtype)  # fmt: skip
        common["converted_layers"] = pruned_layers  # convert raises unless it converted every one
        if args.check:
            stage("check forward")
            macko_logits = [full_forward_logits(model, prompt) for prompt in check_tokens]
            if variant.value_dtype is not None:
                stage("reference logits")
                # The dense copy of the weights is the check's, not the
                # variant's: its memory is kept out of peak_variant_bytes.
                if on_gpu:
                    peak_before_check_copy = torch.cuda.max_memory_allocated(device)
                references = dequantized_reference_logits(model, check_tokens)
                if on_gpu:
                    torch.cuda.reset_peak_memory_stats(device)
            common["check_forward_err"] = max(relative_error(ref, logits)
                                              for ref, logits in zip(references, macko_logits))  # fmt: skip
    common["weight_bytes"] = model_bytes(model)
    if on_gpu:
        common["peak_variant_bytes"] = max(peak_before_check_copy, torch.cuda.max_memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)

    plan = scenarios(args.batches, args.prompt_lens)
    caches = cache_lengths(plan, args.new_tokens, args.cache_per_prompt)
    decoders, compile_seconds = {}, {}
    rows = []
    for batch, prompt_len in plan:
        cache_len = caches[(batch, prompt_len)]
        if (batch, cache_len) not in decoders:
            stage(f"{'compile' if args.compile else 'first step'}, batch {batch}, cache {cache_len}")
            decoders[(batch, cache_len)], compile_seconds[(batch, cache_len)] = first_step(
                args, model, config, device, batch, cache_len)
        decoder = decoders[(batch, cache_len)]
        prompt = random_tokens(batch, prompt_len, config.vocab_size, device, args.seed, "prompt", batch, prompt_len)
        name = f"batch {batch}, prompt {prompt_len}"
        stage(f"warm-up, {name}")
        _, warmup_s = wall_clock(device, lambda: [decoder.generate(prompt, args.new_tokens)
                                                  for _ in range(args.warmup_runs)])  # fmt: skip
        decode_times, prefill_times, generated = [], [], None
        for run in range(args.runs):
            stage(f"{name}: run {run + 1}/{args.runs}")
            tokens, decode_s, prefill_s = decoder.generate(prompt, args.new_tokens)
            decode_times.append(decode_s)
            prefill_times.append(prefill_s)
            if generated is None:
                generated = tokens.cpu()
            elif not torch.equal(generated, tokens.cpu()):
                print(f"warning: {variant.label}, {name}: run {run + 1} generated other tokens than run 1",
                      file=sys.stderr)  # fmt: skip
        rates = [batch * args.new_tokens / seconds for seconds in decode_times]
        prefill_ms, prefill_min, prefill_max = median_and_range([1e3 * seconds for seconds in prefill_times])
        rate, rate_min, rate_max = median_and_range(rates)
        decode_ms = 1e3 * statistics.median(decode_times)
        rows.append({
            **common, "batch": batch, "prompt_len": prompt_len, "cache_len": cache_len,
            "prefill_ms": prefill_ms, "prefill_ms_min": prefill_min, "prefill_ms_max": prefill_max,
            "decode_ms": decode_ms, "tokens_per_s": rate, "tokens_per_s_min": rate_min, "tokens_per_s_max": rate_max,
            "ms_per_token": decode_ms / args.new_tokens,
            "total_ms": 1e3 * statistics.median(p + d for p, d in zip(prefill_times, decode_times)),
            "compile_s": compile_seconds[(batch, cache_len)], "warmup_s": warmup_s,
        })  # fmt: skip
    variant_facts = {}
    if on_gpu:
        variant_facts["peak_decode_bytes"] = torch.cuda.max_memory_allocated(device)
        variant_facts["peak_variant_bytes"] = max(common["peak_variant_bytes"], variant_facts["peak_decode_bytes"])

    single = next((decoder for (batch, _), decoder in decoders.items() if batch == 1), None)
    if args.check:
        stage("check decode")
        # The timed batch-1 decode step, if its cache holds a check prompt.
        checker = single if single is not None and single.max_cache_len > args.check_prompt_len else Decoder(
            model, args.check_prompt_len + 1, 1, compile=args.compile, compile_mode=args.compile_mode,
            compile_backend=args.compile_backend)  # fmt: skip
        variant_facts["check_decode_err"] = relative_error(references[0],
                                                           checker.teacher_forced_logits(check_tokens[0]))
        result = CheckResult(variant.density, common.get("check_forward_err", nan),
                             variant_facts["check_decode_err"], tolerance)  # fmt: skip
        variant_facts.update(check_tolerance=tolerance, check_passed=int(result.passed))
        del checker
    if args.profile:
        stage("profile")
        profiler_decoder = single or next(iter(decoders.values()))
        steps = min(args.profile_steps, args.new_tokens)
        prompt = random_tokens(profiler_decoder.batch, min(args.prompt_lens), config.vocab_size, device, args.seed,
                               "profile")  # fmt: skip
        trace_path = os.path.join(out_dir, f"profile-{variant.label}.json")
        breakdown = profile_decode(profiler_decoder, prompt, steps, trace_path)
        for category, share in breakdown_fractions(breakdown).items():
            variant_facts[PROFILE_COLUMNS[category]] = share
        step_ms = next((row["ms_per_token"] for row in rows if row["batch"] == profiler_decoder.batch), None)
        title = (f"Profile of {variant.label} ({args.config}, {args.dtype}, batch {profiler_decoder.batch}, "
                 f"{env['gpu']}, compile: {common['compile']}, torch {env['torch']}, transformers "
                 f"{env['transformers']}, {env['date']})")  # fmt: skip
        sections = [format_profile(breakdown, steps, title, step_ms)]
        # Each prompt length's prefill (eager, batch 1 as timed): where the
        # time to first token goes.
        for length in args.prompt_lens:
            prefill_decoder = next((decoder for (batch, _), decoder in decoders.items()
                                    if batch == 1 and decoder.max_cache_len > length), None)  # fmt: skip
            if prefill_decoder is None:
                continue
            prompt = random_tokens(prefill_decoder.batch, length, config.vocab_size, device, args.seed, "profile",
                                   length)  # fmt: skip
            prefill = profile_prefill(prefill_decoder, prompt,
                                      os.path.join(out_dir, f"profile-{variant.label}-prefill{length}.json"))
            prefill_ms = next((row["prefill_ms"] for row in rows
                               if row["batch"] == prefill_decoder.batch and row["prompt_len"] == length), None)
            sections.append(format_profile(prefill, 1, f"Prefill of {variant.label}, batch {prefill_decoder.batch}, "
                                           f"{length} tokens", prefill_ms, unit=f"prefill of {length} tokens"))
        with open(os.path.join(out_dir, f"profile-{variant.label}.txt"), "w") as text_file:
            text_file.write("\n".join(sections))

    return [{**row, **variant_facts} for row in rows]


# --------------------------------------------------------------------------
# Command line


parse_densities = records.comma_list(float, lambda d: 0.0 < d <= 1.0, "densities must lie in (0, 1]")
parse_positive_ints = records.comma_list(int, lambda n: n >= 1, "values must be whole numbers >= 1")
positive_int = records.positive_int


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m macko_spmv e2e",
        description="Time to first token, decode tokens/s, total generation time, memory and conversion time of "
        "a Llama-2-7B-shaped model (random weights), dense and pruned + converted to MACKO, with a static KV "
        "cache under torch.compile.",
    )
    parser.add_argument("--config", choices=list(CONFIGS), default="llama2-7b",
                        help="model shapes: llama2-7b (default), llama2-7b-4layers (quick GPU check), tiny (CPU/CI)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default when available) or cpu (smoke tests)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="weights and activations (default float16 on cuda, float32 on cpu)")
    parser.add_argument("--densities", type=parse_densities, default=list(DEFAULT_DENSITIES),
                        help="comma-separated fractions of weights kept per row (default 0.5,0.1)")
    parser.add_argument("--values", type=spmv.parse_values, default=["same"],
                        help="comma-separated values the MACKO layers store, a variant each per density: same (in "
                        "--dtype; variant macko), int8, float8_e4m3fn (8-bit values with a scale per output row, "
                        "sparsify's value_dtype; variant macko-<values>) (default: same)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense (unpruned) variant")
    parser.add_argument("--prompt-lens", type=parse_positive_ints, default=list(DEFAULT_PROMPT_LENS),
                        help="comma-separated prompt lengths in tokens, each at batch 1 (default 128,512,2048)")
    parser.add_argument("--batches", type=parse_positive_ints, default=list(DEFAULT_BATCHES),
                        help="comma-separated batch sizes; those other than 1 run with the shortest prompt "
                        "(default 1,8)")
    parser.add_argument("--new-tokens", type=positive_int, default=DEFAULT_NEW_TOKENS,
                        help=f"tokens generated per sequence (default {DEFAULT_NEW_TOKENS})")
    parser.add_argument("--cache-per-prompt", action="store_true",
                        help="a static cache (and a compile) per prompt length instead of one per batch size")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="timed generations per scenario; the median is kept (default 3)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="untimed generations per scenario (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="decode eagerly (no torch.compile, no CUDA graphs)")
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode (default reduce-overhead: CUDA graphs)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor; 'eager' traces without code generation)")
    parser.add_argument("--check", action="store_true",
                        help="compare logits of the MACKO model and the dense pruned model (with 8-bit values: "
                        "the dense model of the dequantized weights) (and of the decode path)")
    parser.add_argument("--check-prompts", type=positive_int, default=2, help="random prompts for --check")
    parser.add_argument("--check-prompt-len", type=positive_int, default=32, help="tokens per --check prompt")
    parser.add_argument("--check-tolerance", type=float, default=None,
                        help="largest max|a-b|/max|a| allowed (default 1e-4 float32, 1e-2 float16/bfloat16)")
    parser.add_argument("--profile", action="store_true",
                        help="profile batch-1 decode steps and prefills with torch.profiler; writes "
                             "profile-<variant>.txt/.json")
    parser.add_argument("--profile-steps", type=positive_int, default=5, help="decode steps to profile")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/e2e-<gpu>-<date>)")
    parser.add_argument("--append", action="store_true",
                        help="add rows to an existing results.csv in --out (split a sweep over several commands)")
    parser.add_argument("--no-plot", action="store_true", help="no PNGs (the CSV and summary.md only)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--plot-only", metavar="DIR", default=None,
                        help="only redraw the plots and summary.md from DIR/results.csv")
    return parser  # fmt: skip


def environment(device):
    import transformers

    return {**records.environment(device), "transformers": transformers.__version__}


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.plot_only:
        for path in plots.plot_e2e(args.plot_only):
            print(path)
        return 0
    if args.warmup_runs < 0:
        raise SystemExit("--warmup-runs must be >= 0")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("the e2e benchmark needs transformers: pip install macko-spmv[bench]") from None

    device = records.select_device(args.device, "pass --device cpu --config tiny for a smoke test")
    args.dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    config = make_config(args.config)
    longest = max(length for _, length in scenarios(args.batches, args.prompt_lens)) + args.new_tokens + 1
    if longest > config.max_position_embeddings:
        raise SystemExit(f"prompt + new tokens + 1 = {longest} exceeds {args.config}'s "
                         f"{config.max_position_embeddings} positions")  # fmt: skip

    env = environment(device)
    out_dir = args.out or records.default_out_dir("e2e-", env)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    variants = ([] if args.no_dense else [Variant("dense", 1.0)]) + [
        Variant("macko", density, values) for density in args.densities for values in args.values]
    if not variants:
        raise SystemExit("nothing to run: --no-dense and no densities")

    meta = records.read_meta(out_dir) if args.append else {}
    command = records.equivalent_command("e2e", argv)
    for key, value in {**env, **records.run_facts(device), "command": command}.items():
        meta.setdefault(key, value)
    meta.setdefault("commands", []).append(command)
    meta.setdefault("process_argv", []).append(sys.argv)
    meta.setdefault("settings", []).append({
        "config": args.config, "llama_config": {key: getattr(config, key) for key in (*CONFIGS[args.config],
                                                                                         *COMMON_CONFIG)},
        "dtype": args.dtype, "variants": [variant.label for variant in variants], "runs": args.runs,
        "warmup_runs": args.warmup_runs, "new_tokens": args.new_tokens, "prompt_lens": args.prompt_lens,
        "batches": args.batches, "scenarios": scenarios(args.batches, args.prompt_lens),
        "cache_per_prompt": args.cache_per_prompt, "seed": args.seed, "compile": args.compile,
        "compile_mode": args.compile_mode, "compile_backend": args.compile_backend, "check": args.check,
        "profile": args.profile, "values": args.values,
    })  # fmt: skip
    for key in ("gpu", "torch", "transformers"):
        if meta[key] != env[key]:
            print(f"warning: appending a run with {key} {env[key]!r} to results made with {meta[key]!r}",
                  file=sys.stderr)  # fmt: skip
    meta["memory"] = MEMORY_APPROACH
    meta["method"] = (__doc__ or "").partition("The method:")[2].strip()
    records.write_json(meta_path, meta)

    print(f"device: {env['gpu']}; torch {env['torch']}, CUDA {env['cuda']}, transformers {env['transformers']}; "
          f"{args.config} {args.dtype}; variants: {', '.join(v.label for v in variants)}; scenarios (batch, prompt): "
          f"{scenarios(args.batches, args.prompt_lens)}", file=sys.stderr)  # fmt: skip
    from tqdm import tqdm

    failed = []
    with tables.ResultsWriter(os.path.join(out_dir, "results.csv"), tables.E2E_COLUMNS, append=args.append) as writer:
        with tqdm(variants, desc="e2e", unit="variant", disable=not args.progress) as bar:
            for variant in bar:
                def stage(text, variant=variant):
                    bar.set_postfix_str(f"{variant.label}: {text}")

                rows = run_variant(args, variant, config, device, dtype, env, out_dir, stage)
                for row in rows:
                    writer.write(row)
                if args.check and not rows[0]["check_passed"]:
                    failed.append(variant.label)
                    bar.write(f"CHECK FAILED: {variant.label}: forward error {rows[0].get('check_forward_err')}, "
                              f"decode error {rows[0]['check_decode_err']} > tolerance "
                              f"{rows[0]['check_tolerance']:g}")  # fmt: skip

    plots.finish_run(out_dir, meta, "e2e", draw=not args.no_plot)
    if failed:
        print(f"the logits check failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
