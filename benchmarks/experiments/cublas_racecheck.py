"""torch.mm alone, on the dense route's GEMM shapes of scripts/sanitize_ops.py,
for compute-sanitizer's racecheck: shows which hazards belong to cuBLAS.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck \\
        python benchmarks/experiments/cublas_racecheck.py

No macko_spmv kernel runs. The reduced-precision reductions are off, as the
dense route sets them (csrc/cuda/multiply.cu, FullPrecisionMatmul).
"""

import torch

torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    for rows, cols in [(40, 3080), (19, 264), (300, 8), (33, 300), (4097 // 16, 3001)]:
        W = torch.randn(rows, cols, generator=gen).to(dtype).cuda()
        for batch in (1, 2, 3, 5, 8, 16, 19, 40, 70):
            x = torch.randn(batch, cols, generator=gen).to(dtype).cuda()
            y = torch.empty(batch, rows, dtype=dtype, device="cuda")
            torch.mm(x, W.t(), out=y)
torch.cuda.synchronize()
print("cublas only: done")
