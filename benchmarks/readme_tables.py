"""Prints the README's results tables from the saved CSVs (never by hand).

    python benchmarks/readme_tables.py benchmarks/results/h100-2026-11-25
"""

import csv
import sys
from pathlib import Path

SHAPES = ["4096x4096", "8192x8192", "28672x8192", "8192x28672"]
DENSITIES = ["1.0", "0.8", "0.5", "0.2", "0.1", "0.05"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def spmv_table(results):
    data = {(r["shape"], r["density"]): r for r in rows(results / "spmv" / "results.csv")
            if r["dtype"] == "float16" and r["batch"] == "1"}
    peak = next(iter(data.values()))["peak_read_GBps"]
    print(f"fp16, one vector, L2 flushed, medians; peak read bandwidth in the same run {float(peak) / 1000:.2f} TB/s.\n")
    print("| shape | density | MACKO us | cuBLAS us | cuSPARSE us | vs cuBLAS | vs cuSPARSE | roofline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in SHAPES:
        for density in DENSITIES:
            r = data.get((shape, density))
            if r:
                print(f"| {shape} | {density} | {float(r['macko_us']):.1f} | {float(r['cublas_us']):.1f} | "
                      f"{float(r['cusparse_us']):.1f} | {float(r['speedup_cublas']):.2f}x | "
                      f"{float(r['speedup_cusparse']):.2f}x | {float(r['roofline_fraction']):.0%} |")


def batch_table(results):
    data = [r for r in rows(results / "batch" / "results.csv") if r["dtype"] == "float16"]
    print("\nfp16 batches (x is [batch, cols]; the kernel reads the matrix once per 8 vectors):\n")
    print("| shape | density | batch | MACKO us | vs batch 1 | cuBLAS us | vs cuBLAS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    single = {(r["shape"], r["density"]): float(r["macko_us"]) for r in data if r["batch"] == "1"}
    for r in data:
        t = float(r["macko_us"])
        print(f"| {r['shape']} | {r['density']} | {r['batch']} | {t:.1f} | {t / single[(r['shape'], r['density'])]:.2f}x | "
              f"{float(r['cublas_us']):.1f} | {float(r['speedup_cublas']):.2f}x |")


def e2e_table(results):
    data = rows(results / "e2e" / "results.csv")
    print("\nLlama-2-7B shapes (random weights), fp16, batch 1, static KV cache, "
          "torch.compile(mode=\"reduce-overhead\"):\n")
    print("| variant | density | tokens/s | vs dense | weight GiB | weights vs dense |")
    print("| --- | --- | --- | --- | --- | --- |")
    dense = next(r for r in data if r["variant"] == "dense")
    for r in data:
        print(f"| {r['variant']} | {r['density']} | {float(r['tokens_per_s']):.1f} | "
              f"{float(r['tokens_per_s']) / float(dense['tokens_per_s']):.2f}x | "
              f"{int(r['weight_bytes']) / 2**30:.2f} | {int(r['weight_bytes']) / int(dense['weight_bytes']):.0%} |")


if __name__ == "__main__":
    results = Path(sys.argv[1])
    spmv_table(results)
    batch_table(results)
    e2e_table(results)
