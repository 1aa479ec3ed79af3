"""Layers and model conversion: MackoLinear, sparsify, densify.

    import macko_spmv
    report = macko_spmv.SparsifyReport()
    model = macko_spmv.sparsify(model, min_sparsity=0.4, report=report)   # in place
    print(report.weight_bytes_before, report.weight_bytes_after)
    macko_spmv.densify(model)                                             # and back

MackoLinear is an inference layer: y = W x + b with W stored in the MACKO
format. Gradients flow to the input and to the bias; the stored values of W
are buffers and take no gradient (see macko_spmv.ops).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import nn

from . import ops
from .matrix import QUANTIZED_DTYPES, VALUE_DTYPES, MackoMatrix, compress, decompress, scales_overflow

__all__ = ["MackoLinear", "DenseWeightInfo", "sparsify", "densify", "SparsifyReport", "ConvertedLayer",
           "SkippedLayer"]

# The compressed arrays, in the order of the raw ops' arguments.
_ARRAY_NAMES = ("values", "deltas", "row_indices")
# The per-row scales of 8-bit values: a buffer of quantized layers only.
_SCALES_NAME = "scales"

# What a DenseWeightInfo may do without data: views of itself (``.data``,
# ``.detach()``), which give another DenseWeightInfo.
_DATALESS_OPS = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)


class DenseWeightInfo(torch.Tensor):
    """What ``MackoLinear.weight`` returns: a tensor that has the dense
    weight's shape [out_features, in_features], dtype and device, and no
    data. It costs nothing to make, so code that inspects ``.weight`` (as
    transformers does: ``.weight.dtype``, ``.weight.device``,
    ``.weight.shape``) stays cheap; any computation with it (``x @ w.T``,
    ``w.float()``, ``w.sum()``, ``torch.equal``) raises TypeError naming
    ``MackoLinear.dense_weight()``, which decompresses the matrix.
    """

    @staticmethod
    def __new__(cls, shape, dtype, device):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)

    # Calls reach __torch_dispatch__ as the aten ops they run, and metadata
    # (shape, dtype, device, dim, numel) is answered without a call.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func in _DATALESS_OPS:
            return cls(args[0].shape, args[0].dtype, args[0].device)
        raise _no_values(func.__name__)

    def __repr__(self):
        return (f"DenseWeightInfo(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}; no data: "
                "MackoLinear.dense_weight() decompresses the weight)")


def _no_values(what):
    return TypeError(
        f"MackoLinear.weight has only the dense weight's shape, dtype and device, no values, so it cannot be "
        f"used in {what}: call the layer's dense_weight() for the dense matrix (it decompresses the whole "
        f"weight), or use the layer itself (y = layer(x))"
    )


def _refuse(name):
    def refuse(self, *args, **kwargs):
        raise _no_values(name)

    refuse.__name__ = name
    return refuse


# torch.Tensor's operators turn a TypeError from the op into NotImplemented
# (so that Python tries the other operand), which would hide the message
# above behind "unsupported operand type(s)": they raise it themselves.
for _name in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift",
              "rshift"):
    for _dunder in (f"__{_name}__", f"__r{_name}__", f"__i{_name}__"):
        setattr(DenseWeightInfo, _dunder, _refuse(_dunder))
for _dunder in ("__neg__", "__pos__", "__abs__", "__invert__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__",
                "__float__", "__int__", "__index__", "__array__"):
    setattr(DenseWeightInfo, _dunder, _refuse(_dunder))


class MackoLinear(nn.Module):
    """A linear layer y = x W^T + b whose weight W is stored in the MACKO format.

    Args:
      weight: the weight W, out_features x in_features: either a dense 2-D
        tensor [out_features, in_features] (float16, bfloat16 or float32, any
        device the extension supports), compressed here on its own device
        (zeros are dropped), or a MackoMatrix of that shape, used as is.
      bias: None, or a tensor [out_features] with W's dtype and device; the
        layer keeps a copy as an nn.Parameter, trainable unless bias is a
        frozen (requires_grad=False) Parameter.
      value_dtype: for a dense weight, as compress's: None (values in W's
        dtype) or torch.int8 / torch.float8_e4m3fn (8-bit values with one
        scale per output row in W's dtype). Not with a MackoMatrix, whose
        values are used as they are.

    Buffers (in the state dict):
      values:      [n_padded], W's dtype (or int8 / float8_e4m3fn): the
                   stored entries.
      deltas:      [n_padded / 2] uint8: packed 4-bit column gaps.
      row_indices: [out_features + 1] int32 (int64 for huge matrices).
      dense_shape: [2] int64, (out_features, in_features): kept so that a
                   checkpoint says which dense shape its arrays encode.
      scales:      8-bit values only (absent otherwise): [out_features] in
                   W's dtype, the rows' scales.

    The layer's dtype is W's (the activation dtype, also with 8-bit values).
    The forward pass takes x [..., in_features] in that dtype and on W's
    device and returns [..., out_features]. ``dense_weight()`` decompresses
    W; ``weight`` is a DenseWeightInfo that answers ``.shape``, ``.dtype``
    and ``.device`` as nn.Linear's weight does, without decompressing, and
    refuses to compute. Module conversions behave as for
    nn.Linear: ``.half()``, ``.bfloat16()``, ``.float()`` and ``.to(dtype)``
    convert ``values`` (16/32-bit) or ``scales`` (8-bit values, which stay
    as they are) and ``bias`` (the integer arrays stay as they are);
    a cast to any other floating dtype (``.double()``) raises TypeError.
    Loading a state dict accepts arrays of another length than this layer's,
    so a layer built from any weight of the right shape can receive any
    checkpoint of that shape, with 8-bit values or without (the layer takes
    the checkpoint's kind of values and keeps its own activation dtype).
    """

    def __init__(self, weight: Union[torch.Tensor, MackoMatrix], bias: Optional[torch.Tensor] = None,
                 value_dtype: Optional[torch.dtype] = None):
        super().__init__()
        if isinstance(weight, MackoMatrix):
            if value_dtype is not None:
                raise TypeError("value_dtype applies to a dense weight; a MackoMatrix is used with its own values")
            matrix = weight
        elif isinstance(weight, torch.Tensor):
            if weight.dim() != 2:
                raise ValueError(
                    f"weight must be a 2-D matrix [out_features, in_features], got shape {tuple(weight.shape)}"
                )
            with torch.no_grad():
                matrix = compress(weight.detach(), value_dtype=value_dtype)
        else:
            raise TypeError(f"weight must be a torch.Tensor or a MackoMatrix, got {type(weight).__name__}")

        self.out_features = matrix.rows
        self.in_features = matrix.cols
        for name, array in zip(_ARRAY_NAMES, matrix[:3]):
            self.register_buffer(name, array)
        if matrix.scales is not None:
            self.register_buffer(_SCALES_NAME, matrix.scales)
        self.register_buffer(
            "dense_shape",
            torch.tensor([matrix.rows, matrix.cols], dtype=torch.int64, device=matrix.device),
        )

        if bias is None:
            self.register_parameter("bias", None)  # so that forward finds it in _parameters, as nn.Linear does
        else:
            if not isinstance(bias, torch.Tensor):
                raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(
                    f"bias must have shape [out_features] = [{self.out_features}], got {tuple(bias.shape)}"
                )
            if bias.dtype != matrix.dtype or bias.device != matrix.device:
                raise TypeError(
                    f"bias must have the weight's dtype and device ({matrix.dtype}, {matrix.device}), "
                    f"got ({bias.dtype}, {bias.device})"
                )
            # A Parameter passes on whether it is frozen; a plain tensor
            # becomes a trainable bias, as nn.Linear's is.
            trainable = bias.requires_grad if isinstance(bias, nn.Parameter) else True
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=trainable)

    @classmethod
    def from_linear(cls, linear: nn.Linear, value_dtype: Optional[torch.dtype] = None) -> "MackoLinear":
        """A MackoLinear with the linear layer's weight (compressed) and bias.

        The new layer owns copies: changing ``linear`` afterwards does not
        change it. The weight is compressed on its own device and in its own
        dtype (float16, bfloat16 or float32), with ``value_dtype`` as in
        compress: None, torch.int8 or torch.float8_e4m3fn (8-bit values, one
        scale per output row; the layer's dtype stays the weight's).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, value_dtype=value_dtype)

    @property
    def _activation_dtype(self) -> torch.dtype:
        """The dtype of x, y, the bias and the dense weight."""
        scales = self._buffers.get(_SCALES_NAME)
        return self._buffers["values"].dtype if scales is None else scales.dtype

    # ------------------------------------------------------------------
    # Forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b.

        Args:
          x: [..., in_features] (at least 1-D), W's dtype and device.

        Returns:
          [..., out_features], W's dtype; products summed in float32.
        """
        if x.dim() == 0:
            raise ValueError(f"x must be [..., in_features = {self.in_features}], got a scalar")
        # The raw op takes [cols] or [batch, cols]; fold any leading dims
        # into one batch. Calling the op on the buffers (not a MackoMatrix)
        # keeps the graph free of Python tuple subclasses for torch.compile.
        # The op adds the bias to its fp32 sums (no pass of its own). The
        # arrays are read from the module's dicts: Module.__getattr__ costs
        # ~0.8 us an attribute, which a small layer's op (~5 us) notices.
        x_2d = x.flatten(0, -2) if x.dim() > 2 else x
        buffers = self._buffers
        y = ops.multiply(buffers["values"], buffers["deltas"], buffers["row_indices"], self.out_features,
                         self.in_features, x_2d, self._parameters["bias"], buffers.get(_SCALES_NAME))
        if x.dim() > 2:
            y = y.unflatten(0, x.shape[:-1])
        return y

    # ------------------------------------------------------------------
    # Inspection and conversion back

    @property
    def matrix(self) -> MackoMatrix:
        """The weight as a MackoMatrix sharing this layer's buffers."""
        return MackoMatrix(
            self.values, self.deltas, self.row_indices, self.out_features, self.in_features,
            self._buffers.get(_SCALES_NAME), validate=False
        )

    def dense_weight(self) -> torch.Tensor:
        """The dense weight [out_features, in_features] in the layer's dtype
        and on its device, decompressed anew on every call (it costs a dense
        matrix: for inspection and conversion back, not for the forward)."""
        return decompress(self.matrix)

    @property
    def weight(self) -> DenseWeightInfo:
        """The dense weight's shape [out_features, in_features], dtype and
        device, as nn.Linear's ``weight`` answers them, without its values
        (a DenseWeightInfo; computing with it raises TypeError). The values:
        ``dense_weight()``."""
        return DenseWeightInfo((self.out_features, self.in_features), self._activation_dtype, self.values.device)

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed weight's arrays, scales included (the bias excluded)."""
        return self.matrix.nbytes

    @property
    def value_dtype(self) -> torch.dtype:
        """The stored values' dtype (int8 or float8_e4m3fn for 8-bit values)."""
        return self.values.dtype

    @property
    def density(self) -> float:
        """Nonzeros of the weight over its elements."""
        return self.matrix.density

    @property
    def stored_fraction(self) -> float:
        """Stored entries (padding zeros included) over the weight's elements."""
        return self.matrix.stored_fraction

    def to_linear(self) -> nn.Linear:
        """An nn.Linear with the dense weight and a copy of the bias, in this
        layer's dtype and on its device."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta", dtype=self._activation_dtype
        )
        # Built on the meta device so that no throw-away initialisation runs;
        # the real tensors are put in place here.
        linear.weight = nn.Parameter(self.dense_weight())
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=self.bias.requires_grad)
        return linear

    def extra_repr(self) -> str:
        # On the meta device the arrays have no contents to count.
        counts = "" if self.values.is_meta else (
            f"density={self.density:.3f}, stored_fraction={self.stored_fraction:.3f}, ")
        values = "" if _SCALES_NAME not in self._buffers else f"value_dtype={self.value_dtype}, "
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{values}{counts}nbytes={self.nbytes}"
        )

    # ------------------------------------------------------------------
    # nn.Module hooks: conversions and loading

    def _apply(self, fn, recurse=True):
        # Module.half()/.float()/.to(dtype) cast only floating-point tensors,
        # so they reach `values` (or, with 8-bit values, `scales`) and `bias`
        # and leave the uint8/int arrays alone, as the format needs. Two
        # conversions would break the layer: an activation dtype the kernels
        # lack (.double()), and a cast of every tensor whatever its dtype
        # (Module.type). Try the conversion on empty tensors first and
        # refuse before anything has been converted.
        device = self.values.device
        value_probe = fn(torch.empty(0, dtype=self._activation_dtype, device=device))
        if isinstance(value_probe, torch.Tensor) and value_probe.dtype not in VALUE_DTYPES:
            raise TypeError(
                f"MackoLinear computes in float16, bfloat16 or float32; it cannot be converted to "
                f"{value_probe.dtype}"
            )
        index_probe = fn(torch.empty(0, dtype=torch.uint8, device=device))
        if isinstance(index_probe, torch.Tensor) and index_probe.dtype != torch.uint8:
            raise TypeError(
                f"this conversion would cast MackoLinear's integer arrays (deltas, row_indices) to "
                f"{index_probe.dtype}; convert with .half(), .bfloat16(), .float() or .to(dtype) instead"
            )
        values = self._buffers["values"]
        if values.dtype not in QUANTIZED_DTYPES:
            return super()._apply(fn, recurse)
        scales = self._buffers[_SCALES_NAME]
        if isinstance(value_probe, torch.Tensor) and value_probe.dtype != scales.dtype:
            converted = fn(scales)
            if scales_overflow(converted, values.dtype):
                raise ValueError(f"MackoLinear's scales overflow {converted.dtype} (largest scale "
                                 f"{float(scales.max())}, times {ops.QUANTIZED_DTYPES[values.dtype]} for its values): "
                                 "its 8-bit weight cannot be converted to that dtype")
        # float8 values are floating-point tensors, which a dtype cast would
        # convert: they go through fn as raw bytes (moved, never cast), the
        # activation dtype being the scales'.
        self._buffers["values"] = values.view(torch.uint8)
        try:
            return super()._apply(fn, recurse)
        finally:
            self._buffers["values"] = self._buffers["values"].view(values.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The array lengths depend on the weight's zeros, so a checkpoint's
        # arrays rarely have this layer's lengths. Check that the incoming
        # arrays encode a matrix of this layer's shape, then resize the
        # buffers to them and let nn.Module copy as usual (which also casts
        # values, or the scales of 8-bit values, to this layer's dtype, as
        # nn.Linear's load does). A checkpoint with 8-bit values (a `scales`
        # entry) makes the layer one with 8-bit values of the checkpoint's
        # dtype, one without makes it a 16/32-bit layer: either way the
        # layer's activation dtype stays.
        keys = {name: prefix + name for name in (*_ARRAY_NAMES, "dense_shape")}
        if all(key in state_dict for key in keys.values()):
            incoming = {name: state_dict[key] for name, key in keys.items()}
            incoming_scales = state_dict.get(prefix + _SCALES_NAME)
            checkpoint_shape = tuple(int(size) for size in incoming["dense_shape"].tolist())
            if checkpoint_shape != (self.out_features, self.in_features):
                error_msgs.append(
                    f"size mismatch for {prefix}dense_shape: the checkpoint holds a "
                    f"{checkpoint_shape} MACKO weight, the layer in the current model is "
                    f"({self.out_features}, {self.in_features})."
                )
                return
            try:
                ops.validate(incoming["values"], incoming["deltas"], incoming["row_indices"],
                             self.out_features, self.in_features, incoming_scales)
            except (ValueError, TypeError, RuntimeError) as error:
                error_msgs.append(f"invalid MACKO arrays under {prefix or 'the root'} in the checkpoint: {error}")
                return
            activation = self._activation_dtype
            device = self.values.device
            if incoming_scales is None:
                self._buffers.pop(_SCALES_NAME, None)
            elif _SCALES_NAME not in self._buffers:
                self.register_buffer(_SCALES_NAME, torch.empty(0, dtype=activation, device=device))
            for name in (*_ARRAY_NAMES, _SCALES_NAME):
                if name not in self._buffers:
                    continue
                current = self._buffers[name]
                new = incoming_scales if name == _SCALES_NAME else incoming[name]
                # Row pointers take the checkpoint's width (int32 or int64):
                # it depends on the number of stored entries; 8-bit values
                # their dtype; 16/32-bit values and scales the layer's dtype.
                if name == "row_indices" or (name == "values" and incoming_scales is not None):
                    dtype = new.dtype
                elif name in ("values", _SCALES_NAME):
                    dtype = activation
                else:
                    dtype = current.dtype
                if current.shape != new.shape or current.dtype != dtype:
                    setattr(self, name, torch.empty(new.shape, dtype=dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


# ----------------------------------------------------------------------
# Model conversion

NameFilter = Union[None, str, "re.Pattern[str]", Callable[[str], bool]]
ModuleFilter = Optional[Callable[[nn.Module, str], bool]]


@dataclass(frozen=True)
class ConvertedLayer:
    """An nn.Linear that sparsify replaced.

    name: qualified module name; shape: (out_features, in_features);
    sparsity: fraction of zeros in its weight; dense_bytes: the dense
    weight's bytes; macko_bytes: the compressed arrays' bytes.
    """

    name: str
    shape: tuple[int, int]
    dtype: torch.dtype
    sparsity: float
    dense_bytes: int
    macko_bytes: int


@dataclass(frozen=True)
class SkippedLayer:
    """An nn.Linear that sparsify (or prune: see PruneReport) left as it was, and why.

    kind is one of "filtered" (include/exclude/filter_fn), "sparsity" (below
    min_sparsity), "empty" (no elements), "dtype", "device", "tied" (weight
    shared with another module), "subclass" (a subclass of nn.Linear whose
    forward may differ), "root" (the model itself is the layer); reason
    says it in words.
    """

    name: str
    kind: str
    reason: str


@dataclass
class SparsifyReport:
    """What sparsify did: the converted layers and the skipped ones.

    Make an empty one and pass it as sparsify's ``report`` argument, which
    fills it in::

        report = SparsifyReport()
        sparsify(model, report=report)

    weight_bytes_before / weight_bytes_after are the bytes of the converted
    layers' weights, dense before and compressed after (biases excluded:
    they do not change).
    """

    min_sparsity: Optional[float] = None
    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)

    @property
    def weight_bytes_before(self) -> int:
        return sum(layer.dense_bytes for layer in self.converted)

    @property
    def weight_bytes_after(self) -> int:
        return sum(layer.macko_bytes for layer in self.converted)

    def __str__(self) -> str:
        if self.min_sparsity is None:
            return "sparsify: not run (pass this report to sparsify(model, report=...))"
        lines = [
            f"sparsify: converted {len(self.converted)} nn.Linear layer(s) to MackoLinear, "
            f"skipped {len(self.skipped)} (min_sparsity={self.min_sparsity:g})"
        ]
        if self.converted:
            before, after = self.weight_bytes_before, self.weight_bytes_after
            lines.append(
                f"  weights of the converted layers: {_format_bytes(before)} dense -> {_format_bytes(after)} "
                f"MACKO ({after / before:.1%} of dense)"
            )
        lines += _skipped_summary(self.skipped)
        return "\n".join(lines)


def _skipped_summary(skipped: list) -> list:
    """One line per kind of SkippedLayer: how many, and one example."""
    counts = {}
    for layer in skipped:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
    lines = []
    for kind, count in counts.items():
        example = next(layer for layer in skipped if layer.kind == kind)
        more = f" (and {count - 1} more)" if count > 1 else ""
        lines.append(f"  skipped {count} [{kind}]: e.g. {example.name or '<model>'}: {example.reason}{more}")
    return lines


def _format_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _name_matcher(pattern: NameFilter, argument: str) -> Callable[[str], bool]:
    if pattern is None:
        return lambda name: True
    if isinstance(pattern, str):
        pattern = re.compile(pattern)
    if isinstance(pattern, re.Pattern):
        return lambda name: pattern.search(name) is not None
    if callable(pattern):
        return lambda name: bool(pattern(name))
    raise TypeError(f"{argument} must be None, a regular expression or a callable, got {type(pattern).__name__}")


def _module_aliases(model: nn.Module, module_type) -> dict:
    """{id(module): (module, [every qualified name it has])} for the
    modules of the given type; a module reused at several places in the
    model has several names, all of which must be replaced."""
    aliases = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, module_type):
            aliases.setdefault(id(module), (module, []))[1].append(name)
    return aliases


def _parameter_names(model: nn.Module) -> dict:
    """{id(parameter): [every qualified name it has]} for the model's parameters."""
    names = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return names


def _weight_shared_with(layer: nn.Module, names: list, parameter_names: dict) -> list:
    """The names under which the layer's weight is reachable from outside the
    layer (its names listed in ``names``): a tied weight, such as an output
    projection that shares its matrix with an embedding."""
    own_names = {f"{name}.weight" if name else "weight" for name in names}
    return [name for name in parameter_names.get(id(layer.weight), []) if name not in own_names]


def _replace(model: nn.Module, name: str, new_module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new_module)


def sparsify(
    model: nn.Module,
    min_sparsity: float = 0.3,
    include: NameFilter = None,
    exclude: NameFilter = None,
    filter_fn: ModuleFilter = None,
    progress: bool = True,
    verbose: bool = True,
    report: Optional[SparsifyReport] = None,
    value_dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """Replaces, in place, the model's sparse nn.Linear layers with MackoLinear.

    A layer is converted when it is exactly an nn.Linear (subclasses may
    have another forward and are skipped), its weight is float16, bfloat16
    or float32 on a real device, is not shared with another module (tied
    weights would be stored twice), it is selected by ``include``,
    ``exclude`` and ``filter_fn``, and the fraction of its weight's elements
    equal to zero is at least ``min_sparsity``. Weights are compressed where
    they are, in their dtype; outputs then equal those of the dense layers
    up to the order of summation (sums in float32).

    Args:
      model: the nn.Module to convert (modified in place).
      min_sparsity: float in [0, 1]; the least fraction of zeros a weight
        must have. The MACKO format saves memory over dense fp16 from about
        20% zeros on (2.5 bytes per stored entry against 2 per element).
      include: None (every layer), a regular expression searched in the
        qualified name (``re.search``; anchor it with ^...$ for a whole
        name), or a callable name -> bool.
      exclude: like include; matching layers are not converted.
      filter_fn: None, or a callable (module, qualified name) -> bool, as
        torchao's ``quantize_`` takes; layers for which it returns False are
        not converted. It is called for nn.Linear layers only.
      progress: show a tqdm progress bar over the candidate layers.
      verbose: print the report's summary when done.
      report: None, or a SparsifyReport that is filled in (its previous
        contents replaced) with the converted and skipped layers and the
        weights' bytes before and after.
      value_dtype: None (values in each weight's dtype), or torch.int8 or
        torch.float8_e4m3fn: 8-bit values with one scale per output row
        (see compress; the layers keep their dtype). A weight with NaN or
        Inf then raises ValueError, leaving the layers converted before it
        converted.

    Returns:
      model, converted in place (the same object).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be None or a callable (module, name) -> bool, got {type(filter_fn).__name__}")
    if report is not None and not isinstance(report, SparsifyReport):
        raise TypeError(f"report must be None or a SparsifyReport, got {type(report).__name__}")
    included = _name_matcher(include, "include")
    excluded = _name_matcher(exclude, "exclude") if exclude is not None else (lambda name: False)
    if report is None:
        report = SparsifyReport()
    report.min_sparsity = min_sparsity
    report.converted.clear()
    report.skipped.clear()

    def selected(layer, names):
        return (any(included(n) for n in names) and not any(excluded(n) for n in names)
                and (filter_fn is None or any(filter_fn(layer, n) for n in names)))

    parameter_names = _parameter_names(model)

    candidates = []  # (layer, names) that pass every check but the sparsity
    for layer, names in _module_aliases(model, nn.Linear).values():
        name = names[0]
        skip = None
        if "" in names:
            skip = ("root", "the model itself is this nn.Linear; convert it with MackoLinear.from_linear")
        elif not selected(layer, names):
            skip = ("filtered", "not selected by include/exclude/filter_fn")
        elif type(layer) is not nn.Linear:
            skip = ("subclass", f"{type(layer).__name__} subclasses nn.Linear; its forward may differ")
        elif layer.weight.dtype not in VALUE_DTYPES:
            skip = ("dtype", f"weight dtype {layer.weight.dtype} is not float16, bfloat16 or float32")
        elif layer.weight.is_meta:
            skip = ("device", "weight is on the meta device (no data to compress)")
        else:
            shared = _weight_shared_with(layer, names, parameter_names)
            if shared:
                skip = ("tied", f"weight is shared with {shared[0]}; converting would store it twice")
        if skip:
            report.skipped.append(SkippedLayer(name, *skip))
        else:
            candidates.append((layer, names))

    from tqdm.auto import tqdm  # a dependency of the package; imported only when used

    with torch.no_grad():
        for layer, names in tqdm(candidates, desc="sparsify", unit="layer", disable=not progress):
            weight = layer.weight
            elements = weight.numel()
            zeros = elements - int(torch.count_nonzero(weight)) if elements else 0
            sparsity = zeros / elements if elements else 0.0
            if elements == 0:
                report.skipped.append(SkippedLayer(names[0], "empty", "weight has no elements"))
                continue
            if sparsity < min_sparsity:
                reason = f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity:g}"
                report.skipped.append(SkippedLayer(names[0], "sparsity", reason))
                continue
            macko_layer = MackoLinear.from_linear(layer, value_dtype=value_dtype)
            for name in names:
                _replace(model, name, macko_layer)
            report.converted.append(
                ConvertedLayer(
                    name=names[0],
                    shape=(layer.out_features, layer.in_features),
                    dtype=weight.dtype,
                    sparsity=sparsity,
                    dense_bytes=elements * weight.element_size(),
                    macko_bytes=macko_layer.nbytes,
                )
            )
    if verbose:
        print(report)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replaces, in place, every MackoLinear in the model with the equal
    nn.Linear (dense weight, same dtype and device, bias copied).

    Args:
      model: the nn.Module to convert; a MackoLinear itself cannot be
        replaced in place: use its to_linear().

    Returns:
      model, for chaining.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for layer, names in _module_aliases(model, MackoLinear).values():
        if "" in names:
            raise TypeError("the model itself is a MackoLinear; use model.to_linear() instead")
        linear = layer.to_linear()
        for name in names:
            _replace(model, name, linear)
    return model
