"""Where the dense route's time goes: torch.profiler's per-kernel GPU times
for multiply through the dense route (MACKO_MULTIPLY_ROUTE=dense), per case.

    python benchmarks/experiments/profile_dense_route.py
"""

import os
import sys

import torch

import macko_spmv
from macko_spmv.bench import matrices

CASES = [((8192, 8192), 0.5, 16), ((8192, 8192), 0.1, 16), ((4096, 4096), 0.5, 128), ((11008, 4096), 0.1, 16)]


def main():
    os.environ["MACKO_MULTIPLY_ROUTE"] = "dense"
    device = torch.device("cuda")
    for (rows, cols), density, batch in CASES:
        W = matrices.random_pruned(rows, cols, density, torch.float16, matrices.seeded_generator(1, device))
        A = macko_spmv.compress(W)
        x = torch.randn(batch, cols, device=device, dtype=torch.float16)
        for _ in range(3):
            macko_spmv.multiply(A, x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                macko_spmv.multiply(A, x)
            torch.cuda.synchronize()
        print(f"=== {rows}x{cols} density {density} batch {batch}: per-kernel GPU time over 10 calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70))
        del W, A
    return 0


if __name__ == "__main__":
    sys.exit(main())
