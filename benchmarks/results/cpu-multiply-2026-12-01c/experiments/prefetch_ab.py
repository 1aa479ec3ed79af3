"""In-process A/B of the batch kernel's prefetch variants (NOTES c3).

Needs the A/B build described in ../summary.md (switches XPF and XBE read
on every call; the committed kernel has neither: there, XPF=2 is built in).
Times macko_spmv.multiply on 8192x8192 fp16 d=0.5 (N=), sparse route, for
each batch (B=) and variant (V=, "XPF[:XBE]"), the variants interleaved
call by call for R rounds; prints medians and ratios to the first variant.
Run from anywhere with the repository's benchmarks/ importable.
"""
import os, sys, time, statistics, torch, macko_spmv
sys.path.insert(0, "/work/wt-batch/benchmarks")
torch.set_num_threads(2)
from cpu_multiply import random_pruned
n = int(os.environ.get("N", "8192"))
M = random_pruned(n, n, 0.5, torch.float16, 0); A = macko_spmv.compress(M)
os.environ["MACKO_CPU_MULTIPLY_ROUTE"] = "sparse"
variants = os.environ.get("V", "0,1,2,3").split(",")
batches = [int(b) for b in os.environ.get("B", "32,64,128").split(",")]
Xs = {b: torch.randn(b, n).half() for b in batches}
ts = {(v, b): [] for v in variants for b in batches}
for r in range(int(os.environ.get("R", "11"))):
    for b in batches:
        for v in variants:
            xpf, _, xbe = v.partition(":"); os.environ["XPF"] = xpf; os.environ["XBE"] = xbe or "131072"
            t = time.perf_counter(); macko_spmv.multiply(A, Xs[b]); ts[v, b].append(time.perf_counter() - t)
for b in batches:
    base = statistics.median(ts[variants[0], b])
    print(f"batch {b}: " + "  ".join(f"XPF={v} {statistics.median(ts[v, b])*1e3:.2f} ms ({statistics.median(ts[v, b])/base:.3f})" for v in variants))
