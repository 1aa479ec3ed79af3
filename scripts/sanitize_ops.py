"""Every CUDA kernel on small, awkward inputs, for compute-sanitizer.

Run by scripts/gpu_check.sh as
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python scripts/sanitize_ops.py
Covers each dtype, 8-bit values (int8, float8_e4m3fn), both row-pointer
widths, every kernel batch width, every
route of multiply (the streaming kernel, the tile kernel, and decompress +
cuBLAS a slab at a time), odd shapes, empty rows, a row longer than the
tile kernel's widest segment, and corrupted arrays that bypass validation.
"""

import os

import torch

import macko_spmv
from macko_spmv.bench.matrices import random_pruned

gen = torch.Generator().manual_seed(0)
ops = torch.ops.macko_spmv
ROUTES = ("stream", "tiles", "dense")


def each_route():
    """Sets MACKO_MULTIPLY_ROUTE to each route in turn (the ops read it on every call)."""
    for route in ROUTES:
        os.environ["MACKO_MULTIPLY_ROUTE"] = route
        yield route
    del os.environ["MACKO_MULTIPLY_ROUTE"]


def pruned(rows, cols, density, dtype):
    return random_pruned(rows, cols, density, dtype, gen).cuda()


for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for rows, cols, density in [(1, 1, 1.0), (1, 37, 0.5), (37, 1, 0.5), (13, 97, 0.3), (65, 1031, 0.05),
                                (33, 300, 1.0), (8, 64, 0.0), (4097 // 16, 3001, 0.2), (19, 264, 0.5), (300, 8, 0.3),
                                (40, 3080, 0.3)]:
        M = pruned(rows, cols, density, dtype)
        A = macko_spmv.compress(M)
        assert torch.equal(macko_spmv.decompress(A), M)
        for route in each_route():
            for batch in (None, 1, 2, 3, 5, 8, 16, 19, 40, 70):
                x = torch.randn(*(() if batch is None else (batch,)), cols, generator=gen).to(dtype).cuda()
                macko_spmv.multiply(A, x)
            wide = (A.values, A.deltas, A.row_indices.long(), rows, cols)
            ops.multiply(*wide, x)
        ops.decompress(*wide)

# 8-bit values with 16-bit x (the streaming kernel dequantizes them; the
# other routes take them dequantized first) and with fp32 x (every route
# dequantized first), on the same
# awkward shapes, and with corrupted row pointers (every route, and
# decompress).
for value_dtype in (torch.int8, torch.float8_e4m3fn):
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for rows, cols, density in [(1, 1, 1.0), (1, 37, 0.5), (37, 1, 0.5), (13, 97, 0.3), (65, 1031, 0.05),
                                    (8, 64, 0.0), (4097 // 16, 3001, 0.2), (300, 8, 0.3), (70, 2000, 0.5)]:
            A = macko_spmv.compress(pruned(rows, cols, density, dtype), value_dtype=value_dtype)
            for route in each_route():
                for batch in (None, 2, 3, 8, 19):
                    x = torch.randn(*(() if batch is None else (batch,)), cols, generator=gen).to(dtype).cuda()
                    macko_spmv.multiply(A, x)
            ops.decompress(*A)
        A = macko_spmv.compress(pruned(40, 296, 0.2, dtype), value_dtype=value_dtype)
        n = A.values.numel()
        for pointers in ([-5] * 41, [n + 1000] * 41, list(range(40 * 50, -1, -50))):
            row_indices = torch.tensor(pointers, dtype=torch.int32).cuda()
            for route in each_route():
                ops.multiply(A.values, A.deltas, row_indices, 40, 296, torch.randn(296, generator=gen).to(dtype).cuda(),
                             scales=A.scales)
            ops.decompress(A.values, A.deltas, row_indices, 40, 296, A.scales)

# The kernel's less common launch paths: warps with more than 31 rows, and x
# (or the transposed batch) too large for shared memory.
for rows, cols, batch in [(140_001, 7, None), (3, 120_001, None), (5, 20_011, 8)]:
    A = macko_spmv.compress(pruned(rows, cols, 0.5, torch.float16))
    macko_spmv.multiply(A, torch.randn(*(() if batch is None else (batch,)), cols, generator=gen).half().cuda())

# The dense route over several slabs (a slab is at most 128 MiB of dense
# rows, but at least 4096 rows: 4100 x 16400 fp16 takes two slabs of 2050),
# and decompress's segments over a long row.
A = macko_spmv.compress(pruned(4100, 16400, 0.3, torch.float16))
os.environ["MACKO_MULTIPLY_ROUTE"] = "dense"
macko_spmv.multiply(A, torch.randn(24, 16400, generator=gen).half().cuda())
del os.environ["MACKO_MULTIPLY_ROUTE"]
macko_spmv.decompress(macko_spmv.compress(pruned(3, 50_001, 0.5, torch.bfloat16)))

# Corrupted contents: rows pointing outside the stream, deltas running past cols.
M = pruned(40, 296, 0.2, torch.float16)
A = macko_spmv.compress(M)
n = A.values.numel()
x = torch.randn(12, 296, generator=gen).half().cuda()
for pointers in ([-5] * 41, [n + 1000] * 41, [0] + [n] * 40, list(range(40 * 50, -1, -50))):
    for deltas in (A.deltas, torch.full_like(A.deltas, 0xFF)):
        args = (A.values, deltas, torch.tensor(pointers, dtype=torch.int32).cuda(), 40, 296)
        for route in each_route():
            ops.multiply(*args, x)
            ops.multiply(*args, x[0])
        ops.decompress(*args)
# No columns, with pointers no validated matrix has: no kernel may run.
for route in each_route():
    for x in (torch.ones(0, device="cuda").half(), torch.ones(5, 0, device="cuda").half()):
        ops.multiply(torch.zeros(8, device="cuda").half(), torch.zeros(4, dtype=torch.uint8, device="cuda"),
                     torch.tensor([3, 3], dtype=torch.int32, device="cuda"), 1, 0, x)
torch.cuda.synchronize()
print("sanitize_ops: all kernels ran")
