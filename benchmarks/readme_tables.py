"""Prints the README's results tables from the saved CSVs (never by hand).

    python benchmarks/readme_tables.py benchmarks/results/h200-2026-12-01
    python benchmarks/readme_tables.py --batch FOLDER   # the batch table of one run's results.csv
    python benchmarks/readme_tables.py --values FOLDER  # 8-bit against 16-bit values, one run's results.csv
    python benchmarks/readme_tables.py --e2e FOLDER     # the end-to-end table of one e2e run's results.csv

Reads DIR/spmv, DIR/batch and DIR/e2e (the folders of one GPU session)
through macko_spmv.bench.tables. Runs that recorded the back-to-back (CUDA
graph) timing get it beside the flushed one, as "flushed / graph".
"""

import math
import os
import sys

try:
    from macko_spmv.bench.tables import Column, markdown_table, read_e2e_results, read_spmv_results
except ImportError:  # run from a checkout with the extension built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from macko_spmv.bench.tables import Column, markdown_table, read_e2e_results, read_spmv_results

SHAPES = ["4096x4096", "11008x4096", "4096x11008", "8192x8192", "28672x8192", "8192x28672"]
DENSITIES = [1.0, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05]


def times(value):
    return f"{value:.2f}x" if math.isfinite(value) else "n/a"


def has_graph(rows):
    return any(math.isfinite(row.get("macko_graph_us", math.nan)) for row in rows)


def both(row, flushed, graph, render):
    """'flushed / graph' where the run has the graph timing, else flushed."""
    value = render(row[flushed])
    return f"{value} / {render(row[graph])}" if math.isfinite(row.get(graph, math.nan)) else value


def spmv_table(results_dir):
    rows = {(row["shape"], row["density"]): row for row in read_spmv_results(os.path.join(results_dir, "spmv"))
            if row["dtype"] == "float16" and row["batch"] == 1}  # fmt: skip
    first = next(iter(rows.values()))
    timing = "L2 flushed / back to back in a CUDA graph" if has_graph(rows.values()) else "L2 flushed"
    print(f"fp16, one vector, {timing}, medians; peak read bandwidth in the same run "
          f"{first['peak_read_GBps'] / 1000:.2f} TB/s.\n")  # fmt: skip
    us = lambda value: f"{value:.1f}"  # noqa: E731
    columns = [Column("shape", "shape"), Column("density", lambda row: str(row["density"])),
               Column("MACKO us", lambda row: both(row, "macko_us", "macko_graph_us", us)),
               Column("cuBLAS us", lambda row: both(row, "cublas_us", "cublas_graph_us", us)),
               Column("vs cuBLAS", lambda row: both(row, "speedup_cublas", "speedup_cublas_graph", times)),
               Column("vs cuSPARSE", lambda row: times(row["speedup_cusparse"])),
               Column("roofline", lambda row: both(row, "roofline_fraction", "roofline_fraction_graph",
                                                   lambda value: f"{value:.0%}"))]  # fmt: skip
    print(markdown_table(columns, [rows[(shape, density)] for shape in SHAPES for density in DENSITIES
                                   if (shape, density) in rows]))  # fmt: skip


def batch_table(folder):
    rows = [row for row in read_spmv_results(folder) if row["dtype"] == "float16"]
    batches = sorted({row["batch"] for row in rows})
    cases = list(dict.fromkeys((row["shape"], row["density"], row["route"]) for row in rows))
    by_case = {(row["shape"], row["density"], row["route"], row["batch"]): row for row in rows}
    timing = "flushed / graph" if has_graph(rows) else "flushed"
    print(f"\nfp16 batches, x [batch, cols], speedup over cuBLAS (`x @ W.T`), {timing}:\n")
    headings = ["shape", "density", "route"] + [f"batch {batch}" for batch in batches]
    lines = ["| " + " | ".join(headings) + " |", "| " + " | ".join("---" for _ in headings) + " |"]
    for shape, density, route in cases:
        cells = [shape, str(density), route]
        for batch in batches:
            row = by_case.get((shape, density, route, batch))
            cells.append(both(row, "speedup_cublas", "speedup_cublas_graph", times) if row else "")
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))


def values_table(folder):
    """One vector, each kind of stored values (a run of `bench --values`)
    against the same matrix with fp16 values and against cuBLAS."""
    rows = [row for row in read_spmv_results(folder) if row["batch"] == 1 and row["dtype"].startswith("float16")]
    fp16 = {(row["shape"], row["density"]): row for row in rows if row["dtype"] == "float16"}
    us = lambda value: f"{value:.1f}"  # noqa: E731

    def versus_fp16(row):
        base = fp16[(row["shape"], row["density"])]
        ratio = lambda column: times(base[column] / row[column])  # noqa: E731
        graph = math.isfinite(row.get("macko_graph_us", math.nan))
        return f"{ratio('macko_us')} / {ratio('macko_graph_us')}" if graph else ratio("macko_us")

    print("\nOne vector, fp16 x, values stored as fp16, int8 or e4m3 (per-row scales), flushed / graph:\n")
    columns = [Column("shape", "shape"), Column("density", lambda row: str(row["density"])),
               Column("values", lambda row: row["dtype"].partition("/")[2] or "float16"),
               Column("MACKO us", lambda row: both(row, "macko_us", "macko_graph_us", us)),
               Column("vs cuBLAS", lambda row: both(row, "speedup_cublas", "speedup_cublas_graph", times)),
               Column("vs fp16 values", versus_fp16),
               Column("bytes vs dense fp16", lambda row: f"{row['macko_bytes'] / (row['rows'] * row['cols'] * 2):.0%}")]
    print(markdown_table(columns, rows))


def e2e_table(e2e_dir):
    rows = read_e2e_results(e2e_dir)
    print("\nLlama-2-7B shapes (random weights), fp16, static KV cache, decode under "
          "torch.compile(mode=\"reduce-overhead\"), prefill eager, 128 new tokens:\n")  # fmt: skip
    dense = {(row["batch"], row["prompt_len"]): row for row in rows if row["variant"] == "dense"}

    def versus(row, column, higher_is_better):
        base = dense.get((row["batch"], row["prompt_len"]))
        if base is None:
            return "n/a"
        return times(row[column] / base[column] if higher_is_better else base[column] / row[column])

    columns = [Column("variant", "variant"), Column("density", "density", "g"), Column("batch", "batch", ".0f"),
               Column("prompt", "prompt_len", ".0f"),
               Column("TTFT ms", "prefill_ms", ".1f"),
               Column("TTFT vs dense", lambda row: versus(row, "prefill_ms", False)),
               Column("tokens/s", "tokens_per_s", ".1f"),
               Column("tokens/s vs dense", lambda row: versus(row, "tokens_per_s", True)),
               Column("total ms", "total_ms", ".0f"),
               Column("total vs dense", lambda row: versus(row, "total_ms", False)),
               Column("weight GiB", lambda row: row["weight_bytes"] / 2**30, ".2f")]  # fmt: skip
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    if sys.argv[1] == "--batch":
        batch_table(sys.argv[2])
    elif sys.argv[1] == "--values":
        values_table(sys.argv[2])
    elif sys.argv[1] == "--e2e":
        e2e_table(sys.argv[2])
    else:
        results_dir = sys.argv[1]
        spmv_table(results_dir)
        batch_table(os.path.join(results_dir, "batch"))
        e2e_table(os.path.join(results_dir, "e2e"))
