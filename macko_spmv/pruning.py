"""Unstructured pruning of a model's linear layers, one output row at a time.

    import macko_spmv
    macko_spmv.prune(model, 0.5, method="wanda", calibration=lambda m: m(input_ids))
    macko_spmv.sparsify(model, min_sparsity=0.5)      # then store the zeros in MACKO form

Every selected nn.Linear keeps ``round(density * in_features)`` entries in
each row of its weight and has the others set to zero, in place. Rows are
pruned independently (a per-output comparison group, as Wanda does), so
every row of a layer ends up with the same number of nonzeros.

Methods (scores computed in float32 whatever the weight's dtype):
  magnitude: keep the largest |W_ij|.
  wanda:     keep the largest |W_ij| * ||X_j||_2, where ||X_j|| is the norm
             of input feature j over every input the layer received while
             ``calibration`` ran (Sun et al., "A Simple and Effective
             Pruning Approach for Large Language Models", 2023).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .nn import SkippedLayer, _module_aliases, _parameter_names, _skipped_summary, _weight_shared_with

__all__ = ["prune", "PruneReport", "PrunedLayer", "METHODS"]

METHODS = ("magnitude", "wanda")

# Scores and masks are built for this many weight elements at a time, so
# that the scratch beside the model stays small (about 100 MiB at most:
# float32 scores, int64 indices of the kept entries, a boolean mask).
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class PrunedLayer:
    """An nn.Linear that prune selected.

    name: qualified module name; shape: (out_features, in_features);
    kept_per_row: the entries each row kept, round(density * in_features);
    density: the fraction of the weight's elements nonzero afterwards (at
    most kept_per_row / in_features: lower where a row already held zeros);
    calibration_inputs: the input vectors (tokens) whose statistics the
    scores used, 0 for magnitude pruning.
    """

    name: str
    shape: tuple[int, int]
    dtype: torch.dtype
    kept_per_row: int
    density: float
    calibration_inputs: int


@dataclass
class PruneReport:
    """What prune did, filled in by ``prune(..., report=PruneReport())``.

    method and density are the arguments prune was called with; pruned
    lists the pruned layers, skipped the nn.Linear layers left untouched
    and why (SkippedLayer.kind "filtered" by filter_fn, "dtype" for a
    non-floating weight, "device" for a weight on the meta device, "tied"
    for a weight shared with another module, "empty" for no elements).
    """

    method: str = ""
    density: float = float("nan")
    pruned: list[PrunedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)

    @property
    def achieved_density(self) -> float:
        """Nonzeros over elements, over all pruned layers' weights together
        (NaN when no layer was pruned)."""
        elements = sum(layer.shape[0] * layer.shape[1] for layer in self.pruned)
        if not elements:
            return float("nan")
        return sum(layer.density * layer.shape[0] * layer.shape[1] for layer in self.pruned) / elements

    def __str__(self) -> str:
        lines = [
            f"prune ({self.method}, density {self.density:g}): pruned {len(self.pruned)} nn.Linear layer(s), "
            f"skipped {len(self.skipped)}; achieved density {self.achieved_density:.4f}"
        ]
        return "\n".join(lines + _skipped_summary(self.skipped))


def prune(
    model: nn.Module,
    density: float,
    method: str = "magnitude",
    calibration: Optional[Callable[[nn.Module], object]] = None,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    *,
    progress: bool = True,
    verbose: bool = True,
    report: Optional[PruneReport] = None,
) -> nn.Module:
    """Prunes, in place, the weights of the model's nn.Linear layers, row by row.

    Every selected layer's weight [out_features, in_features] keeps exactly
    ``round(density * in_features)`` entries in each row (Python's round:
    halves go to the even count) and has the rest set to zero; ties in the
    score are broken by ``torch.topk``, so the count is exact even then.
    Biases and every other parameter are left as they are. Scores are
    computed in float32 for float16, bfloat16 and float32 weights alike, on
    the weight's device (CPU or GPU), in blocks of rows so that the scratch
    memory stays near 100 MiB.

    A layer is selected when it is an nn.Linear (subclasses included), its
    weight is floating point, holds data (not the meta device), is not
    shared with another module (pruning a tied weight would prune, say, the
    embedding it is tied to as well), and ``filter_fn`` accepts it. A layer
    reused at several places in the model is pruned once.

    Args:
      model: the nn.Module whose linear layers to prune (modified in place;
        it may itself be an nn.Linear).
      density: float in (0, 1]: the fraction of each row's entries to keep
        (0.3 keeps 30%, i.e. 70% sparsity). 1 keeps every entry.
      method: "magnitude" (keep the largest |W_ij|; no calibration) or
        "wanda" (keep the largest |W_ij| * ||X_j||_2, X_j being input
        feature j over the calibration inputs; needs ``calibration``).
      calibration: for "wanda", a callable taking the model and running it
        on sample inputs, e.g. ``lambda m: m(input_ids)`` or
        ``lambda m: [m(**batch) for batch in batches]``; its return value
        is ignored. It runs once, under torch.no_grad(), in the model's
        current mode (call model.eval() first so that dropout does not
        enter the statistics). While it runs, forward pre-hooks on the
        selected layers add each input's per-feature sums of squares to one
        float32 vector [in_features] per layer (no activations are stored);
        the hooks are removed afterwards, also when calibration raises.
        Every selected layer must receive at least one input. Must be None
        for "magnitude".
      filter_fn: None (every linear layer), or a callable
        ``filter_fn(module, name) -> bool`` called with the nn.Linear and
        its qualified name (as in ``model.named_modules()``; "" for the
        model itself); a layer is pruned only if it returns True for every
        name the layer has. Rejected layers are reported as "filtered".
      progress: show a tqdm progress bar over the layers being pruned.
      verbose: print the report's summary when done.
      report: None, or a PruneReport that prune clears and fills with the
        method, the requested density, the pruned layers (achieved density
        each) and the skipped ones with the reason.

    Returns:
      model, pruned in place, for chaining.

    Raises:
      TypeError: model is not an nn.Module; density is not a real number;
        calibration or filter_fn is not callable; report is not a
        PruneReport.
      ValueError: density outside (0, 1]; an unknown method; "wanda"
        without calibration, or "magnitude" with one; a selected layer that
        received no input, or non-finite inputs, during calibration
        (nothing is pruned then).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a real number in (0, 1], got {type(density).__name__}")
    density = float(density)
    if not 0.0 < density <= 1.0:  # NaN fails this too
        raise ValueError(f"density must be in (0, 1] (the fraction of each row's entries to keep), got {density}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if calibration is not None and not callable(calibration):
        raise TypeError(f"calibration must be a callable taking the model, got {type(calibration).__name__}")
    if method == "wanda" and calibration is None:
        raise ValueError(
            "method='wanda' needs calibration: a callable that runs the model on sample inputs, "
            "e.g. calibration=lambda m: m(input_ids)"
        )
    if method == "magnitude" and calibration is not None:
        raise ValueError("method='magnitude' uses no calibration data; pass calibration=None")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be None or a callable (module, name) -> bool, got {type(filter_fn).__name__}")
    if report is None:
        report = PruneReport()
    elif not isinstance(report, PruneReport):
        raise TypeError(f"report must be None or a PruneReport, got {type(report).__name__}")
    report.method, report.density = method, density
    report.pruned.clear()
    report.skipped.clear()

    layers = _select_layers(model, filter_fn, report)
    if method == "wanda":
        sums_of_squares, input_counts = _input_sums_of_squares(model, layers, calibration)
    else:
        sums_of_squares, input_counts = [None] * len(layers), [0] * len(layers)

    from tqdm.auto import tqdm  # a dependency of the package; imported only when used

    with torch.no_grad():
        bar = tqdm(zip(layers, sums_of_squares, input_counts), total=len(layers), desc=f"prune ({method})",
                   unit="layer", disable=not progress)  # fmt: skip
        for (layer, names), sum_of_squares, input_count in bar:
            weight = layer.weight
            keep = round(density * weight.shape[1])
            column_scale = None if sum_of_squares is None else sum_of_squares.to(weight.device).sqrt_()
            keep_largest_per_row_(weight, keep, column_scale)
            report.pruned.append(PrunedLayer(
                name=names[0],
                shape=(weight.shape[0], weight.shape[1]),
                dtype=weight.dtype,
                kept_per_row=keep,
                density=int(torch.count_nonzero(weight)) / weight.numel(),
                calibration_inputs=input_count,
            ))  # fmt: skip
    if verbose:
        print(report)
    return model


def keep_largest_per_row_(weight: torch.Tensor, keep: int, column_scale: Optional[torch.Tensor] = None) -> None:
    """Zeroes, in place, all but ``keep`` entries in every row of ``weight``:
    those of the largest score |weight_ij| * column_scale_j (|weight_ij|
    when column_scale is None), ties broken by torch.topk.

    Args:
      weight: [rows, cols] floating point, any device; modified in place.
      keep: int in [0, cols], the entries each row keeps.
      column_scale: None or a float32 tensor [cols] on weight's device,
        non-negative.
    """
    rows, cols = weight.shape
    if keep >= cols:
        return
    if keep <= 0:
        weight.zero_()
        return
    block_rows = max(1, _CHUNK_ELEMENTS // cols)
    with torch.no_grad():
        for first in range(0, rows, block_rows):
            block = weight[first : first + block_rows]
            scores = block.abs().float()
            if column_scale is not None:
                scores.mul_(column_scale)
            kept = scores.topk(keep, dim=1, sorted=False).indices
            del scores
            mask = torch.zeros(block.shape, dtype=torch.bool, device=block.device).scatter_(1, kept, True)
            block.masked_fill_(~mask, 0)


def _select_layers(model: nn.Module, filter_fn, report: PruneReport) -> list:
    """[(layer, names)] of the nn.Linear layers to prune, in the order of
    model.named_modules(); the others go to report.skipped."""
    parameter_names = _parameter_names(model)
    selected = []
    for layer, names in _module_aliases(model, nn.Linear).values():
        weight = layer.weight
        skip = None
        if filter_fn is not None and not all(filter_fn(layer, name) for name in names):
            skip = ("filtered", "rejected by filter_fn")
        elif not weight.is_floating_point():
            skip = ("dtype", f"weight dtype {weight.dtype} is not floating point")
        elif weight.is_meta:
            skip = ("device", "weight is on the meta device (no data to prune)")
        elif weight.numel() == 0:
            skip = ("empty", "weight has no elements")
        else:
            shared = _weight_shared_with(layer, names, parameter_names)
            if shared:
                skip = ("tied", f"weight is shared with {shared[0]}; pruning it would prune that module too")
        if skip:
            report.skipped.append(SkippedLayer(names[0], *skip))
        else:
            selected.append((layer, names))
    return selected


def _input_sums_of_squares(model: nn.Module, layers: list, calibration) -> tuple[list, list]:
    """Runs calibration(model) with forward pre-hooks on the layers and
    returns ([float32 tensor [in_features] per layer]: the sum over every
    input vector of its squared entries, [input vectors seen per layer])."""
    sums = [None] * len(layers)
    counts = [0] * len(layers)

    def make_hook(index, in_features):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            vectors = x.detach().reshape(-1, in_features)
            # The norm in float32 without a float32 copy of the activations.
            squares = torch.linalg.vector_norm(vectors, dim=0, dtype=torch.float32).square_()
            sums[index] = squares if sums[index] is None else sums[index].add_(squares.to(sums[index].device))
            counts[index] += vectors.shape[0]

        return hook

    handles = []
    try:
        for index, (layer, _) in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(make_hook(index, layer.in_features), with_kwargs=True))
        with torch.no_grad():
            calibration(model)
    finally:
        for handle in handles:
            handle.remove()

    silent = [names[0] or "<model>" for (layer, names), count in zip(layers, counts) if count == 0]
    if silent:
        more = f" (and {len(silent) - 3} more)" if len(silent) > 3 else ""
        raise ValueError(
            f"{len(silent)} selected layer(s) received no input while calibration ran: {', '.join(silent[:3])}{more}; "
            "make calibration run the model on sample inputs, or leave these layers out with filter_fn"
        )
    for (layer, names), squares in zip(layers, sums):
        if not bool(torch.isfinite(squares).all()):
            raise ValueError(
                f"layer {names[0] or '<model>'} received inf or NaN inputs during calibration (or their squares "
                "overflow float32); check the calibration data"
            )
    return sums, counts
