"""The raw ops, torch.ops.macko_spmv.*, with their tracing rules.

The schemas, kernels and multiply's autograd rule live in the compiled
extension (csrc/). This module loads it and adds what Python must add:
shape functions ("fake" kernels) so that torch.compile traces through the
ops.
"""

import json

import torch

from ._build_check import check_build

check_build()

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.macko_spmv)
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "macko_spmv's compiled extension (macko_spmv._C) could not be loaded: "
        f"{error}. Build it against the installed torch with "
        "`pip install --no-build-isolation -e .` in the repository, or install "
        "the wheel that matches your torch and CUDA versions."
    ) from error

_ops = torch.ops.macko_spmv

compress = _ops.compress
decompress = _ops.decompress
multiply = _ops.multiply
validate = _ops.validate


def parse_build_info(text):
    """The dict of the extension's build-info JSON (csrc/ops.cpp)."""
    return json.loads(text)


def build_info():
    """Facts compiled into the extension, as a dict:
    torch (str, the version built against), cuda (str, or None without GPU
    kernels), arch (their TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0+PTX", or None),
    openmp (bool: the CPU ops run in parallel)."""
    return parse_build_info(_ops.build_info())


# The fake kernels (shapes for tracing, and the ops on the meta device) run
# the checks of csrc/macko.h with its messages: a traced call or a meta
# tensor must fail where the kernels would.

_VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# 8-bit values (is_quantized_dtype in csrc/macko.h), each with the largest
# magnitude it holds (kInt8Max, kFloat8E4m3Max): a row's scale is its
# largest magnitude over this.
QUANTIZED_DTYPES = {torch.int8: 127, torch.float8_e4m3fn: 448}
_GROUP_ENTRIES = 8  # kGroupEntries in csrc/macko.h


def _check_scales(values, rows, scales):
    """check_scales of csrc/macko.h."""
    quantized = values.dtype in QUANTIZED_DTYPES
    torch._check_value(not quantized or scales is not None,
                       lambda: f"values of dtype {values.dtype} need scales (one per row, in the activation dtype)")
    torch._check_value(quantized or scales is None,
                       lambda: f"scales apply to int8 and float8_e4m3fn values only, got values of dtype {values.dtype}")
    if scales is None:
        return
    torch._check_type(scales.dtype in _VALUE_DTYPES,
                      lambda: f"scales must be float16, bfloat16 or float32, got {scales.dtype}")
    torch._check_value(scales.dim() == 1 and scales.shape[0] == rows,
                       lambda: f"scales must be [rows] = [{rows}], got shape {list(scales.shape)}")
    torch._check_value(scales.device == values.device,
                       lambda: f"scales must be on the values' device {values.device}, got {scales.device}")
    torch._check_value(scales.is_contiguous(), lambda: "scales must be contiguous")


def activation_dtype(values, scales):
    """activation_dtype of csrc/macko.h: the dtype of x, y, the bias and
    the dense matrix (the scales' for 8-bit values, else the values')."""
    return values.dtype if scales is None else scales.dtype


def _check_compressed(values, deltas, row_indices, rows, cols, scales=None):
    """check_compressed of csrc/macko.h."""
    torch._check_value(rows >= 0 and cols >= 0,
                       lambda: f"rows and cols must be non-negative, got rows={rows}, cols={cols}")
    torch._check_type(values.dtype in _VALUE_DTYPES or values.dtype in QUANTIZED_DTYPES,
                      lambda: f"values must be float16, bfloat16, float32, int8 or float8_e4m3fn, got {values.dtype}")
    torch._check_type(deltas.dtype == torch.uint8, lambda: f"deltas must be uint8, got {deltas.dtype}")
    torch._check_type(row_indices.dtype in (torch.int32, torch.int64),
                      lambda: f"row_indices must be int32 or int64, got {row_indices.dtype}")
    torch._check_value(values.dim() == 1 and deltas.dim() == 1 and row_indices.dim() == 1,
                       lambda: "values, deltas and row_indices must be 1-D, got shapes "
                               f"{list(values.shape)}, {list(deltas.shape)}, {list(row_indices.shape)}")
    torch._check_value(values.numel() % _GROUP_ENTRIES == 0,
                       lambda: f"values must hold a multiple of {_GROUP_ENTRIES} entries (the stream is padded "
                               f"to whole groups), got {values.numel()}")
    torch._check_value(deltas.numel() * 2 == values.numel(),
                       lambda: f"deltas must hold one byte per two entries: expected {values.numel() // 2} bytes "
                               f"for {values.numel()} values, got {deltas.numel()}")
    torch._check_value(row_indices.numel() == rows + 1,
                       lambda: f"row_indices must have rows + 1 = {rows + 1} elements, got {row_indices.numel()}")
    torch._check_value(values.device == deltas.device == row_indices.device,
                       lambda: "values, deltas and row_indices must be on one device, got "
                               f"{values.device}, {deltas.device}, {row_indices.device}")
    torch._check_value(values.is_contiguous() and deltas.is_contiguous() and row_indices.is_contiguous(),
                       lambda: "values, deltas and row_indices must be contiguous")
    _check_scales(values, rows, scales)


def _check_multiply_input(values, scales, cols, x):
    """check_multiply_input of csrc/macko.h."""
    dtype = activation_dtype(values, scales)
    torch._check_type(x.dtype == dtype, lambda: f"x must have the matrix's dtype {dtype}, got {x.dtype}")
    torch._check_value(x.device == values.device,
                       lambda: f"x must be on the matrix's device {values.device}, got {x.device}")
    torch._check_value(x.dim() in (1, 2), lambda: f"x must be [cols] or [batch, cols], got shape {list(x.shape)}")
    torch._check_value(x.shape[-1] == cols,
                       lambda: f"x's last dimension must equal the matrix's cols = {cols}, got shape {list(x.shape)}")


@torch.library.register_fake("macko_spmv::decompress")
def _decompress_fake(values, deltas, row_indices, rows, cols, scales=None):
    _check_compressed(values, deltas, row_indices, rows, cols, scales)
    return values.new_empty((rows, cols), dtype=activation_dtype(values, scales))


def _check_bias(values, scales, rows, bias):
    """check_bias of csrc/macko.h."""
    if bias is None:
        return
    dtype = activation_dtype(values, scales)
    torch._check_type(bias.dtype == dtype, lambda: f"bias must have the matrix's dtype {dtype}, got {bias.dtype}")
    torch._check_value(bias.device == values.device,
                       lambda: f"bias must be on the matrix's device {values.device}, got {bias.device}")
    torch._check_value(bias.dim() == 1 and bias.shape[0] == rows,
                       lambda: f"bias must be [rows] = [{rows}], got shape {list(bias.shape)}")


@torch.library.register_fake("macko_spmv::multiply")
def _multiply_fake(values, deltas, row_indices, rows, cols, x, bias=None, scales=None):
    _check_compressed(values, deltas, row_indices, rows, cols, scales)
    _check_multiply_input(values, scales, cols, x)
    _check_bias(values, scales, rows, bias)
    dtype = activation_dtype(values, scales)
    if x.dim() == 1:
        return values.new_empty((rows,), dtype=dtype)
    return values.new_empty((x.shape[0], rows), dtype=dtype)


# multiply's autograd rule (dL/dx and dL/dbias; none for the values or
# scales) is registered in C++ (csrc/multiply_autograd.cpp): a Python rule
# would run on every call, with or without gradients.
