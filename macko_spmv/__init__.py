"""macko-spmv: pruned weight matrices in the MACKO format, multiplied fast.

    import macko_spmv
    A = macko_spmv.compress(weight)        # [rows, cols] fp16/bf16/fp32, CPU or CUDA
    y = macko_spmv.multiply(A, x)          # x [..., cols] -> y [..., rows]
    W = macko_spmv.decompress(A)           # back to dense

    macko_spmv.prune(model, 0.5, method="wanda", calibration=lambda m: m(input_ids))
    macko_spmv.sparsify(model)             # nn.Linear -> MackoLinear, in place
    macko_spmv.save(model, "model.safetensors")
    macko_spmv.load(dense_model, "model.safetensors")

The ops are also torch.ops.macko_spmv.{compress, decompress, multiply}.
"""

from . import ops
from .matrix import MackoMatrix, compress, decompress, multiply
from . import nn
from .nn import MackoLinear, SparsifyReport, densify, sparsify
from .pruning import PruneReport, prune
from .serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "MackoMatrix",
    "compress",
    "decompress",
    "multiply",
    "ops",
    "nn",
    "MackoLinear",
    "sparsify",
    "SparsifyReport",
    "densify",
    "save",
    "load",
    "prune",
    "PruneReport",
    "__version__",
]
