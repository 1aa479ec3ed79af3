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
  sparsegpt: layer after layer in the order the model runs them, choose
             the entries to drop from W_ij^2 / [H^-1]_jj (H = X^T X of the
             layer's inputs, as the partly pruned model computes them) and
             update the kept entries of the row to make up for each dropped
             one, so that X W^T changes least (Frantar and Alistarh,
             "SparseGPT: Massive Language Models Can Be Accurately Pruned
             in One-Shot", 2023). Costs one run of ``calibration`` per layer.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .nn import SkippedLayer, _module_aliases, _parameter_names, _skipped_summary, _weight_shared_with

__all__ = ["prune", "PruneReport", "PrunedLayer", "METHODS", "keep_largest_per_row_", "sparsegpt_prune_"]

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED_METHODS = ("wanda", "sparsegpt")

# Scores and masks are built for this many weight elements at a time, so
# that the scratch beside the model stays small (about 100 MiB at most:
# float32 scores, int64 indices of the kept entries, a boolean mask).
_CHUNK_ELEMENTS = 1 << 23

# SparseGPT: columns are pruned in blocks of this many, each block's entries
# to drop chosen from the weights as the earlier blocks left them; the
# damping added to H's diagonal, relative to its mean (as the paper's code).
_SPARSEGPT_BLOCK = 128
_SPARSEGPT_DAMPING = 0.01


@dataclass(frozen=True)
class PrunedLayer:
    """An nn.Linear that prune selected.

    name: qualified module name; shape: (out_features, in_features);
    kept_per_row: the entries each row kept, round(density * in_features);
    density: the fraction of the weight's elements nonzero afterwards (at
    most kept_per_row / in_features: lower where a row already held zeros);
    calibration_inputs: the input vectors (tokens) whose statistics the
    scores used, 0 for magnitude pruning (for sparsegpt: in the layer's
    own run of the calibration).
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
    magnitude and wanda leave the kept entries, the biases and every other
    parameter as they are; sparsegpt also updates the kept entries of each
    weight. Scores are computed in float32 for float16, bfloat16 and
    float32 weights alike, on the weight's device (CPU or GPU), in blocks
    of rows so that the scratch memory stays near 100 MiB (sparsegpt: a
    float32 copy of one weight and three float32 [in_features,
    in_features] matrices).

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
      method: "magnitude" (keep the largest |W_ij|; no calibration),
        "wanda" (keep the largest |W_ij| * ||X_j||_2, X_j being input
        feature j over the calibration inputs; needs ``calibration``) or
        "sparsegpt" (drop by W_ij^2 / [H^-1]_jj and update the kept
        entries, one layer at a time; needs ``calibration``): see the
        module's description.
      calibration: for "wanda" and "sparsegpt", a callable taking the model
        and running it on sample inputs, e.g. ``lambda m: m(input_ids)`` or
        ``lambda m: [m(**batch) for batch in batches]``; its return value
        is ignored. It runs under torch.no_grad(), in the model's current
        mode (call model.eval() first so that dropout does not enter the
        statistics): once for "wanda", 1 + the number of selected layers
        times for "sparsegpt" (once to learn the order in which the layers
        run, then once per layer, on the model as pruned so far). While it
        runs, forward pre-hooks on the selected layers gather statistics of
        their inputs (no activations are stored): for "wanda" each input's
        per-feature sums of squares, one float32 vector [in_features] per
        layer; for "sparsegpt" the one layer's float32 H = X^T X
        [in_features, in_features]. The hooks are removed afterwards, also
        when calibration raises. Every selected layer must receive at least
        one input. Must be None for "magnitude".
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
      ValueError: density outside (0, 1]; an unknown method; "wanda" or
        "sparsegpt" without calibration, or "magnitude" with one; a
        selected layer that received no input, or non-finite inputs, during
        calibration (for "wanda" nothing is pruned then; for "sparsegpt"
        the layers before it stay pruned).
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
    if method in CALIBRATED_METHODS and calibration is None:
        raise ValueError(
            f"method={method!r} needs calibration: a callable that runs the model on sample inputs, "
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
    pruned = {}  # index in layers -> PrunedLayer, reported in the order of named_modules()

    def record(index, keep, calibration_inputs):
        layer, names = layers[index]
        weight = layer.weight
        pruned[index] = PrunedLayer(
            name=names[0],
            shape=(weight.shape[0], weight.shape[1]),
            dtype=weight.dtype,
            kept_per_row=keep,
            density=int(torch.count_nonzero(weight)) / weight.numel(),
            calibration_inputs=calibration_inputs,
        )

    from tqdm.auto import tqdm  # a dependency of the package; imported only when used

    bar = tqdm(total=len(layers), desc=f"prune ({method})", unit="layer", disable=not progress)
    try:
        with torch.no_grad():
            if method == "sparsegpt":
                _sparsegpt(model, layers, density, calibration, record, bar)
            else:
                if method == "wanda":
                    sums_of_squares, input_counts = _input_sums_of_squares(model, layers, calibration)
                else:
                    sums_of_squares, input_counts = [None] * len(layers), [0] * len(layers)
                for index, (layer, _) in enumerate(layers):
                    keep = round(density * layer.in_features)
                    norms = None  # magnitude: |W| alone
                    if sums_of_squares[index] is not None:  # wanda: |W_ij| * ||X_j||
                        norms = sums_of_squares[index].to(layer.weight.device).sqrt_()
                    keep_largest_per_row_(layer.weight, keep, norms)
                    record(index, keep, input_counts[index])
                    bar.update()
    finally:
        bar.close()
        report.pruned.extend(pruned[index] for index in sorted(pruned))
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
    if _keeps_all_or_none_(weight, keep):
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


def _keeps_all_or_none_(weight: torch.Tensor, keep: int) -> bool:
    """Handles keep >= cols (nothing to do) and keep <= 0 (all zeros) in
    place; False when there is a real choice to make."""
    if keep >= weight.shape[1]:
        return True
    if keep <= 0:
        with torch.no_grad():
            weight.zero_()
        return True
    return False


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


def _run_calibration(model: nn.Module, calibration, layers: list, on_input) -> None:
    """Runs calibration(model) under torch.no_grad() with a forward pre-hook
    on each of ``layers`` ([(layer, names)]) that calls on_input(index,
    vectors), vectors being the layer's input as [count, in_features]
    (detached, in the input's dtype). The hooks are removed afterwards,
    also when calibration raises."""

    def make_hook(index, in_features):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            on_input(index, x.detach().reshape(-1, in_features))

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


def _check_inputs_received(layers: list, counts: list) -> None:
    silent = [names[0] or "<model>" for (layer, names), count in zip(layers, counts) if count == 0]
    if silent:
        more = f" (and {len(silent) - 3} more)" if len(silent) > 3 else ""
        raise ValueError(
            f"{len(silent)} selected layer(s) received no input while calibration ran: {', '.join(silent[:3])}{more}; "
            "make calibration run the model on sample inputs, or leave these layers out with filter_fn"
        )


def _check_finite(statistic: torch.Tensor, names: list) -> None:
    if not bool(torch.isfinite(statistic).all()):
        raise ValueError(
            f"layer {names[0] or '<model>'} received inf or NaN inputs during calibration (or their squares "
            "overflow float32); check the calibration data"
        )


def _input_sums_of_squares(model: nn.Module, layers: list, calibration) -> tuple[list, list]:
    """Runs calibration(model) once with hooks on the layers and returns
    ([float32 tensor [in_features] per layer]: the sum over every input
    vector of its squared entries, [input vectors seen per layer])."""
    sums = [None] * len(layers)
    counts = [0] * len(layers)

    def on_input(index, vectors):
        # The norm in float32 without a float32 copy of the activations.
        squares = torch.linalg.vector_norm(vectors, dim=0, dtype=torch.float32).square_()
        sums[index] = squares if sums[index] is None else sums[index].add_(squares.to(sums[index].device))
        counts[index] += vectors.shape[0]

    _run_calibration(model, calibration, layers, on_input)
    _check_inputs_received(layers, counts)
    for (_, names), squares in zip(layers, sums):
        _check_finite(squares, names)
    return sums, counts


def _sparsegpt(model: nn.Module, layers: list, density: float, calibration, record, bar) -> None:
    """SparseGPT over the layers, one at a time in the order of their first
    call during calibration: each layer's H comes from a run of calibration
    on the model with the layers before it already pruned."""
    counts = [0] * len(layers)
    order = []

    def on_first_input(index, vectors):
        if counts[index] == 0:
            order.append(index)
        counts[index] += vectors.shape[0]

    _run_calibration(model, calibration, layers, on_first_input)
    _check_inputs_received(layers, counts)

    for index in order:
        layer, names = layers[index]
        weight = layer.weight
        hessian = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float32, device=weight.device)
        seen = [0]

        def on_input(_, vectors):
            vectors = vectors.to(device=hessian.device, dtype=torch.float32)
            hessian.addmm_(vectors.T, vectors)
            seen[0] += vectors.shape[0]

        _run_calibration(model, calibration, [layers[index]], on_input)
        _check_inputs_received([layers[index]], seen)
        _check_finite(hessian, names)
        hessian /= seen[0]
        keep = round(density * layer.in_features)
        try:
            sparsegpt_prune_(weight, hessian, keep)
        except torch.linalg.LinAlgError as error:
            raise ValueError(
                f"sparsegpt: H = X^T X of layer {names[0] or '<model>'} is not positive definite even with "
                f"{_SPARSEGPT_DAMPING:g} damping ({error}); calibrate on more, or more varied, inputs"
            ) from None
        del hessian
        record(index, keep, seen[0])
        bar.update()


def sparsegpt_prune_(weight: torch.Tensor, hessian: torch.Tensor, keep: int) -> None:
    """Prunes ``weight`` in place to ``keep`` entries per row, SparseGPT's way.

    Args:
      weight: [rows, cols] floating point, any device; modified in place.
      hessian: float32 [cols, cols] on weight's device, H = X^T X (any
        positive scale) of the layer's inputs X [tokens, cols]; overwritten.
      keep: int in [0, cols], the entries each row keeps.

    The algorithm: columns that never saw a nonzero input (H_jj = 0) get
    H_jj = 1 and are dropped first; H gets 1% of its mean diagonal added
    to its diagonal; U is the upper Cholesky factor of H^-1 (U^T U = H^-1,
    so that U_jj^2 = [H_F^-1]_jj for F the columns j and after). Columns go
    in blocks of _SPARSEGPT_BLOCK; each row drops, in the block ending at
    column e, round(p * e / cols) - round(p * s / cols) entries (p = cols -
    keep, s the block's first column: exactly p in all), those of least
    W_ij^2 / U_jj^2 in the weights as the earlier blocks left them. Then
    column by column, j in order: each row's error e_i = (W_ij - Q_ij) /
    U_jj (Q_ij = 0 where dropped, W_ij where kept) is taken out of the
    columns from j on, W[:, j:] -= e U[j, j:], which keeps X W^T as close
    as column j's freezing allows. Works in float32, writes back in
    weight's dtype.
    """
    rows, cols = weight.shape
    if _keeps_all_or_none_(weight, keep):
        return
    work = weight.detach().float().clone()
    dead = hessian.diagonal() == 0
    hessian.diagonal()[dead] = 1.0
    hessian.diagonal().add_(_SPARSEGPT_DAMPING * hessian.diagonal().mean())
    factor = torch.linalg.cholesky(hessian)
    inverse = torch.cholesky_inverse(factor)
    del factor
    upper = torch.linalg.cholesky(inverse, upper=True)
    del inverse
    dropped_total = cols - keep
    for start in range(0, cols, _SPARSEGPT_BLOCK):
        end = min(start + _SPARSEGPT_BLOCK, cols)
        block = work[:, start:end].clone()
        block_upper = upper[start:end, start:end]
        diagonal = block_upper.diagonal()
        drop_count = round(dropped_total * end / cols) - round(dropped_total * start / cols)
        scores = block.square() / diagonal.square()
        scores[:, dead[start:end]] = -1.0  # below every real score
        drop = torch.zeros(block.shape, dtype=torch.bool, device=block.device)
        if drop_count > 0:
            drop.scatter_(1, scores.topk(drop_count, dim=1, largest=False, sorted=False).indices, True)
        errors = torch.zeros_like(block)
        for column in range(end - start):
            values = block[:, column]
            frozen = values.masked_fill(drop[:, column], 0.0)
            error = (values - frozen) / diagonal[column]
            block[:, column:].sub_(error.unsqueeze(1) * block_upper[column, column:].unsqueeze(0))
            block[:, column] = frozen
            errors[:, column] = error
        work[:, start:end] = block
        work[:, end:].sub_(errors @ upper[start:end, end:])
    weight.copy_(work)
