"""One process: per case (8192x8192 fp16, int8 values, the densities given
or 0.5 and 0.05, batch 1 and 32), the median and min of repeated multiply
calls, as JSON lines. Run alternately against the builds before and after
(the old one through PYTHONPATH to a copy of its package), e.g.
`python rounded_dequant_ab.py after 2 >> ab.jsonl` (label, threads) or
`python rounded_dequant_ab.py after 1 0.01` (label, threads, densities)."""
import json
import statistics
import sys
import time

import torch

import macko_spmv
from macko_spmv.bench.matrices import random_pruned

label, threads = sys.argv[1], int(sys.argv[2])
densities = [float(d) for d in sys.argv[3:]] or [0.5, 0.05]
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
for density in densities:
    W = random_pruned(8192, 8192, density, torch.float16, g)
    A = macko_spmv.compress(W, value_dtype=torch.int8)
    for batch in (1, 32):
        x = torch.randn((batch, 8192) if batch > 1 else (8192,), generator=g).half()
        for _ in range(3):
            macko_spmv.multiply(A, x)
        ts = []
        for _ in range(30 if batch == 1 else 12):
            t0 = time.perf_counter()
            macko_spmv.multiply(A, x)
            ts.append(time.perf_counter() - t0)
        print(json.dumps(dict(label=label, threads=threads, density=density, batch=batch,
                              median_ms=statistics.median(ts) * 1e3, min_ms=min(ts) * 1e3)), flush=True)
