"""The raw ops, torch.ops.macko_spmv.*, with their tracing and autograd rules.

The schemas and kernels live in the compiled extension (csrc/). This module
loads it and adds what Python must add: shape functions ("fake" kernels) so
that torch.compile traces through the ops, and the backward of multiply.
"""

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


def build_info():
    """Facts compiled into the extension, as a dict: torch, cuda, arch."""
    return dict(item.split("=", 1) for item in _ops.build_info().split(";"))


@torch.library.register_fake("macko_spmv::decompress")
def _decompress_fake(values, deltas, row_indices, rows, cols):
    return values.new_empty((rows, cols))


@torch.library.register_fake("macko_spmv::multiply")
def _multiply_fake(values, deltas, row_indices, rows, cols, x):
    # The same checks as the kernels' (csrc/macko.h), for traced calls.
    torch._check_value(x.dim() in (1, 2), lambda: f"x must be [cols] or [batch, cols], got {x.dim()}-D")
    torch._check_value(x.shape[-1] == cols, lambda: f"x's last dimension must equal the matrix's cols = {cols}")
    torch._check_type(x.dtype == values.dtype, lambda: f"x must have the matrix's dtype {values.dtype}")
    torch._check_value(x.device == values.device, lambda: f"x must be on the matrix's device {values.device}")
    if x.dim() == 1:
        return values.new_empty((rows,))
    return values.new_empty((x.shape[0], rows))


def _multiply_setup_context(ctx, inputs, output):
    values, deltas, row_indices, rows, cols, x = inputs
    ctx.save_for_backward(values, deltas, row_indices)
    ctx.shape = (rows, cols)


def _multiply_backward(ctx, grad_y):
    # y = M x, so dL/dx = M^T dL/dy, computed through the dense M (exact, at
    # the cost of a dense scratch matrix). Gradients for the stored values
    # are not implemented: refuse rather than return none silently.
    if ctx.needs_input_grad[0]:
        raise NotImplementedError(
            "macko_spmv.multiply has no gradient with respect to the matrix's values; "
            "train the dense weight and compress it afterwards"
        )
    grad_x = None
    if ctx.needs_input_grad[5]:
        values, deltas, row_indices = ctx.saved_tensors
        dense = decompress(values, deltas, row_indices, *ctx.shape)
        grad_x = grad_y @ dense
    return None, None, None, None, None, grad_x


torch.library.register_autograd(
    "macko_spmv::multiply", _multiply_backward, setup_context=_multiply_setup_context
)
