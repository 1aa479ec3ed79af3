"""Prints the README's results tables from the saved CSVs (never by hand).

    python benchmarks/readme_tables.py benchmarks/results/h100-2026-11-25

Reads DIR/spmv, DIR/batch and DIR/e2e (the folders scripts/gpu_check.sh
writes) through macko_spmv.bench.tables; the flushed timing.
"""

import os
import sys

try:
    from macko_spmv.bench.tables import (Column, markdown_table, read_e2e_results, read_spmv_results)
except ImportError:  # run from a checkout with the extension built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from macko_spmv.bench.tables import (Column, markdown_table, read_e2e_results, read_spmv_results)

SHAPES = ["4096x4096", "8192x8192", "28672x8192", "8192x28672"]
DENSITIES = [1.0, 0.8, 0.5, 0.2, 0.1, 0.05]


def times(value):
    return f"{value:.2f}x"


def spmv_table(results_dir):
    rows = {(row["shape"], row["density"]): row for row in read_spmv_results(os.path.join(results_dir, "spmv"))
            if row["dtype"] == "float16" and row["batch"] == 1}  # fmt: skip
    peak = next(iter(rows.values()))["peak_read_GBps"]
    print(f"fp16, one vector, L2 flushed, medians; peak read bandwidth in the same run {peak / 1000:.2f} TB/s.\n")
    columns = [Column("shape", "shape"), Column("density", lambda row: str(row["density"])),
               Column("MACKO us", "macko_us", ".1f"),
               Column("cuBLAS us", "cublas_us", ".1f"), Column("cuSPARSE us", "cusparse_us", ".1f"),
               Column("vs cuBLAS", lambda row: times(row["speedup_cublas"])),
               Column("vs cuSPARSE", lambda row: times(row["speedup_cusparse"])),
               Column("roofline", "roofline_fraction", ".0%")]  # fmt: skip
    print(markdown_table(columns, [rows[(shape, density)] for shape in SHAPES for density in DENSITIES
                                   if (shape, density) in rows]))  # fmt: skip


def batch_table(results_dir):
    rows = [row for row in read_spmv_results(os.path.join(results_dir, "batch")) if row["dtype"] == "float16"]
    single = {(row["shape"], row["density"]): row["macko_us"] for row in rows if row["batch"] == 1}
    print("\nfp16 batches (x is [batch, cols]; the kernel reads the matrix once per 8 vectors):\n")
    columns = [Column("shape", "shape"), Column("density", lambda row: str(row["density"])),
               Column("batch", "batch", "d"),
               Column("MACKO us", "macko_us", ".1f"),
               Column("vs batch 1", lambda row: times(row["macko_us"] / single[(row["shape"], row["density"])])),
               Column("cuBLAS us", "cublas_us", ".1f"), Column("vs cuBLAS", lambda row: times(row["speedup_cublas"]))]
    print(markdown_table(columns, rows))


def e2e_table(results_dir):
    rows = read_e2e_results(os.path.join(results_dir, "e2e"))
    dense = next(row for row in rows if row["variant"] == "dense")
    print("\nLlama-2-7B shapes (random weights), fp16, batch 1, static KV cache, "
          "torch.compile(mode=\"reduce-overhead\"):\n")
    columns = [Column("variant", "variant"), Column("density", "density", "g"),
               Column("tokens/s", "tokens_per_s", ".1f"), Column("vs dense", lambda row: times(row["speedup_tokens"])),
               Column("weight GiB", lambda row: row["weight_bytes"] / 2**30, ".2f"),
               Column("weights vs dense", lambda row: row["weight_bytes"] / dense["weight_bytes"], ".0%")]
    print(markdown_table(columns, [row for row in rows if row["batch"] == 1]))


if __name__ == "__main__":
    results_dir = sys.argv[1]
    spmv_table(results_dir)
    batch_table(results_dir)
    e2e_table(results_dir)
