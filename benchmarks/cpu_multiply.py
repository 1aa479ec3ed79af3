"""CPU multiply speed: ``python benchmarks/cpu_multiply.py [options]``.

Times torch.ops.macko_spmv.multiply on the CPU against dense torch on the
same (pruned) matrix, in the same dtype and in fp32, in one run:

  vector    one vector, 8192x8192, fp16 / bf16 / fp32, densities 0.5 and 0.1:
            MACKO multiply(A, x) against W @ x and W.float() @ x.float().
  x-values  the same products with x half zeros, all subnormals (fp16/bf16
            subnormals; fp32: fp32 subnormals), 1% NaN: the time against
            random x (it should not depend on x's values).
  batch     8192x8192 fp16 at 0.5 and 0.1, X [batch, 8192] for batches 1 to
            2048: MACKO (the route the library picks, and each route forced
            through MACKO_CPU_MULTIPLY_ROUTE, to show the crossover) against
            X @ W.T and X.float() @ W.float().T.
  layers    MiniLM's three layer shapes (384x384, 1536x384 and 384x1536, fp32,
            50% per row, with a bias) at 12 and 448 tokens (1 and 32
            sentences): nn.Linear against MackoLinear, and the raw op with
            the bias fused and added in a pass after it (as MackoLinear did
            before the op took the bias), to isolate the layers from the
            rest of the model.
  minilm    all-MiniLM-L6-v2 (fp32, every nn.Linear pruned to 50% per row,
            tests/test_minilm.py), sentence embeddings of 1 and 32 sentences:
            the dense pruned model against the same model after sparsify.

Times are wall-clock medians (time.perf_counter around the call, after
warm-up calls) at --threads threads (torch.set_num_threads). The calls of a
case are interleaved (rounds that call each implementation once), so that
a slow spell of a shared machine falls on all of them alike. A case whose
rounds are slow (torch's fp16 matrix products on CPUs without fp16
arithmetic) gets at least --min-runs rounds and more while within --budget
seconds.

Writes results.csv, meta.json (CPU, threads, versions, date, command, load
average before and after) and plots drawn from the CSV to --out (default
benchmarks/results/cpu-multiply-<date>/); ``--plot-only DIR`` redraws the
plots and the summary table from DIR/results.csv.

The timer and the matrix generator here are local to this script.
"""

import argparse
import csv
import datetime
import glob
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout this script is in, when its extension is built in place
# (setup.py build_ext --inplace), before any installed copy.
if glob.glob(os.path.join(ROOT, "macko_spmv", "_C*.so")):
    sys.path.insert(0, ROOT)
import macko_spmv  # noqa: E402
from macko_spmv.bench import matrices, records  # noqa: E402
from macko_spmv.bench.timing import interleaved_times_ms  # noqa: E402

CSV_COLUMNS = [
    "section", "impl", "dtype", "shape", "density", "stored_fraction", "batch", "x", "threads", "runs",
    "median_ms", "min_ms", "max_ms", "vs_dense_same_dtype", "vs_dense_fp32", "vs_random_x", "note",
]  # fmt: skip

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# all-MiniLM-L6-v2's nn.Linear shapes [out_features, in_features].
LAYER_SHAPES = ((384, 384), (1536, 384), (384, 1536))
ROUTES = ("vector", "sparse", "dense")


def random_pruned(rows, cols, density, dtype, seed):
    """The shared test matrix (macko_spmv.bench.matrices), on the CPU."""
    return matrices.random_pruned(rows, cols, density, dtype, matrices.seeded_generator(seed))


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


def wait_for_quiet(max_load, timeout_s):
    """Waits (up to timeout_s) for the 1-minute load average to drop below
    max_load; returns the load average when it gave up or succeeded."""
    start = time.time()
    while True:
        load = load_average()
        if load is None or float(load[0]) < max_load or time.time() - start > timeout_s:
            return load
        time.sleep(15)


class Route:
    """MACKO_CPU_MULTIPLY_ROUTE set for the duration of a with block."""

    def __init__(self, route):
        self.route = route

    def __enter__(self):
        self.saved = os.environ.get("MACKO_CPU_MULTIPLY_ROUTE")
        if self.route is None:
            os.environ.pop("MACKO_CPU_MULTIPLY_ROUTE", None)
        else:
            os.environ["MACKO_CPU_MULTIPLY_ROUTE"] = self.route

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("MACKO_CPU_MULTIPLY_ROUTE", None)
        else:
            os.environ["MACKO_CPU_MULTIPLY_ROUTE"] = self.saved


class Results:
    def __init__(self, path, threads):
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=CSV_COLUMNS)
        self.writer.writeheader()
        self.threads = threads
        self.rows = []

    def add(self, section, impl, times, **fields):
        record = {c: "" for c in CSV_COLUMNS}
        record.update(section=section, impl=impl, threads=self.threads, runs=len(times),
                      median_ms=round(statistics.median(times), 4), min_ms=round(min(times), 4),
                      max_ms=round(max(times), 4))  # fmt: skip
        record.update(fields)
        self.writer.writerow(record)
        self.file.flush()
        self.rows.append(record)
        print(f"{section:9s} {impl:22s} {record['dtype']:9s} d={record['density']!s:5s} batch={record['batch']!s:5s} "
              f"x={record['x']!s:11s} {record['median_ms']:10.3f} ms {record['note']}", flush=True)  # fmt: skip
        return record["median_ms"]


def ratio(baseline_ms, ms):
    return round(baseline_ms / ms, 3)


def special_x(kind, shape, dtype, gen):
    x = torch.randn(*shape, generator=gen).to(dtype)
    if kind == "half-zeros":
        x[torch.rand(*shape, generator=gen) < 0.5] = 0
    elif kind == "subnormal":
        x = (x.float() * torch.finfo(dtype).tiny * 0.25).to(dtype)
    elif kind == "nan-1pct":
        x[torch.rand(*shape, generator=gen) < 0.01] = float("nan")
    return x


def vector_section(args, results):
    """Each case --vector-repeats times, on freshly allocated matrices: on
    the VM this was written on, how fast a stream of ~100 MB reads varied
    between allocations (dense and MACKO alike, up to 2x; likely page
    mappings), so one allocation is not the whole story."""
    rows = cols = args.size
    gen = torch.Generator().manual_seed(args.seed + 1)
    for repeat, dtype_name, density in itertools.product(range(args.vector_repeats), args.dtypes, args.densities):
        dtype = DTYPES[dtype_name]
        M = random_pruned(rows, cols, density, dtype, args.seed + repeat)
        A = macko_spmv.compress(M)
        M32 = M.float()
        common = dict(dtype=dtype_name, shape=f"{rows}x{cols}", density=density, batch=1,
                      stored_fraction=round(A.stored_fraction, 4), note=f"repeat {repeat}")  # fmt: skip
        x = torch.randn(cols, generator=gen).to(dtype)
        x32 = x.float()
        xs = {"random": x}
        for kind in args.x_kinds if density in args.x_densities else []:
            xs[kind] = special_x(kind, (cols,), dtype, gen)
        ops = {"torch dense": lambda: M @ x, "torch dense fp32": lambda: M32 @ x32}
        for kind, xk in xs.items():
            ops[kind] = lambda xk=xk: macko_spmv.multiply(A, xk)
        times = interleaved_times_ms(ops, args.runs, args.runs, args.budget)
        same = results.add("vector", "torch dense", times["torch dense"], x="random", **common)
        fp32 = results.add("vector", "torch dense fp32", times["torch dense fp32"], x="random", **common)
        random_ms = statistics.median(times["random"])
        for kind in xs:
            ms = statistics.median(times[kind])
            results.add("vector" if kind == "random" else "x-values", "macko", times[kind], x=kind,
                        vs_dense_same_dtype=ratio(same, ms), vs_dense_fp32=ratio(fp32, ms),
                        vs_random_x=ratio(random_ms, ms), **common)  # fmt: skip
        del M, A, M32


def batch_section(args, results):
    rows = cols = args.size
    gen = torch.Generator().manual_seed(args.seed + 2)
    dtype = DTYPES[args.batch_dtype]
    for density in args.densities:
        M = random_pruned(rows, cols, density, dtype, args.seed)
        A = macko_spmv.compress(M)
        M32 = M.float()
        common = dict(dtype=args.batch_dtype, shape=f"{rows}x{cols}", density=density, x="random",
                      stored_fraction=round(A.stored_fraction, 4))  # fmt: skip
        for batch in args.batches:
            X = torch.randn(batch, cols, generator=gen).to(dtype)
            X32 = X.float()
            ops = {"torch dense": lambda: X @ M.T, "torch dense fp32": lambda: X32 @ M32.T}
            for route in (None,) + ROUTES:
                if route == "vector" and batch > 16:
                    continue  # the vector kernel takes 4 right-hand sides a pass: past 16 only the batch routes

                def op(route=route):
                    with Route(route):
                        return macko_spmv.multiply(A, X)

                ops["macko" if route is None else f"macko route={route}"] = op
            times = interleaved_times_ms(ops, args.runs, args.min_runs, args.budget, warmup=1)
            same = results.add("batch", "torch dense", times.pop("torch dense"), batch=batch, **common)
            fp32 = results.add("batch", "torch dense fp32", times.pop("torch dense fp32"), batch=batch, **common)
            for impl, t in times.items():
                ms = statistics.median(t)
                results.add("batch", impl, t, batch=batch, vs_dense_same_dtype=ratio(same, ms),
                            vs_dense_fp32=ratio(fp32, ms), **common)  # fmt: skip
        del M, A, M32


def layers_section(args, results):
    gen = torch.Generator().manual_seed(args.seed + 3)
    for (rows, cols), tokens in itertools.product(LAYER_SHAPES, args.layer_tokens):
        dense = torch.nn.Linear(cols, rows)
        with torch.no_grad():
            dense.weight.copy_(random_pruned(rows, cols, 0.5, torch.float32, args.seed))
            dense.bias.copy_(torch.randn(rows, generator=gen))
        sparse = macko_spmv.MackoLinear.from_linear(dense)
        A, bias = sparse.matrix, sparse.bias
        x = torch.randn(tokens, cols, generator=gen)
        ops = {"nn.Linear": lambda: dense(x), "MackoLinear": lambda: sparse(x),
               "macko op, bias fused": lambda: macko_spmv.ops.multiply(*A, x, bias),
               "macko op, bias after": lambda: macko_spmv.ops.multiply(*A, x) + bias}  # fmt: skip
        with torch.inference_mode():
            times = interleaved_times_ms(ops, args.runs * 5, args.runs, args.budget, warmup=5)
        common = dict(dtype="float32", shape=f"{rows}x{cols}", density=0.5, batch=tokens, x="random",
                      stored_fraction=round(A.stored_fraction, 4), note="bias")  # fmt: skip
        same = results.add("layers", "nn.Linear", times.pop("nn.Linear"), **common)
        for impl, t in times.items():
            results.add("layers", impl, t, vs_dense_same_dtype=ratio(same, statistics.median(t)), **common)


def minilm_section(args, results):
    """The model of tests/test_minilm.py (loaded, pruned and embedded the
    same way; skipped when it or transformers is not installed)."""
    import copy

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from test_minilm import SENTENCES, embed, load_minilm, prune_rows_by_magnitude

        tokenizer, dense = load_minilm(torch.float32, "cpu")
    except Exception as error:  # pytest's skip (no model or transformers) or an import error
        print(f"minilm: skipped ({type(error).__name__}: {error})")
        return
    prune_rows_by_magnitude(dense)
    sparse = copy.deepcopy(dense)
    macko_spmv.sparsify(sparse, min_sparsity=0.5, progress=False, verbose=False)
    for count in (1, 32):
        sentences = (SENTENCES * (count // len(SENTENCES) + 1))[:count]
        tokens = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
        note = f"{count} sentences, padded to {tokens['input_ids'].shape[1]} tokens"
        common = dict(dtype="float32", shape="all-MiniLM-L6-v2", density=0.5, batch=count, x="sentences")
        times = interleaved_times_ms({"dense": lambda: embed(dense, tokenizer, sentences),
                                      "macko": lambda: embed(sparse, tokenizer, sentences)},
                                     args.model_runs, args.model_runs, args.budget, warmup=5)  # fmt: skip
        same = results.add("minilm", "dense pruned model", times["dense"], note=note, **common)
        results.add("minilm", "macko (sparsify)", times["macko"], note=note,
                    vs_dense_same_dtype=ratio(same, statistics.median(times["macko"])), **common)  # fmt: skip


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def summary_tables(rows):
    """Markdown tables from the CSV rows: the issue's targets per case."""
    out = []
    def median_of(values):
        return statistics.median(float(v) for v in values)

    vec = [r for r in rows if r["section"] == "vector" and r["impl"] == "macko"]
    cases = sorted({(r["dtype"], r["density"]) for r in vec}, key=lambda c: (list(DTYPES).index(c[0]), -float(c[1])))
    if vec:
        out += ["### One vector (8192x8192; medians over the repeats, each a fresh allocation)", "",
                "| dtype | density | MACKO ms | dense same dtype ms | dense fp32 ms | vs same dtype (range) | vs fp32 (range) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for dtype, density in cases:
            case = [r for r in rows if r["section"] == "vector" and r["dtype"] == dtype and r["density"] == density]
            by = {impl: [r for r in case if r["impl"] == impl] for impl in ("macko", "torch dense", "torch dense fp32")}
            same = [float(r["vs_dense_same_dtype"]) for r in by["macko"]]
            fp32 = [float(r["vs_dense_fp32"]) for r in by["macko"]]
            out.append(f"| {dtype} | {density} | {median_of(r['median_ms'] for r in by['macko']):.2f} | "
                       f"{median_of(r['median_ms'] for r in by['torch dense']):.2f} | "
                       f"{median_of(r['median_ms'] for r in by['torch dense fp32']):.2f} | "
                       f"{statistics.median(same):.2f} ({min(same):.2f}-{max(same):.2f}) | "
                       f"{statistics.median(fp32):.2f} ({min(fp32):.2f}-{max(fp32):.2f}) |")  # fmt: skip
        out.append("")
    xv = [r for r in rows if r["section"] == "x-values" and r["impl"] == "macko"]
    kinds = sorted({r["x"] for r in xv})
    if kinds:
        out += ["### Time against x's values (one vector; time / time with random x, median over the repeats)", "",
                "| dtype | density | " + " | ".join(kinds) + " |", "| --- | --- | " + " | ".join("---" for _ in kinds) + " |"]
        for dtype, density in cases:
            cells = []
            for kind in kinds:
                match = [1 / float(r["vs_random_x"]) for r in xv if (r["dtype"], r["density"], r["x"]) == (dtype, density, kind)]
                cells.append(f"{statistics.median(match):.3f}" if match else "")
            out.append(f"| {dtype} | {density} | " + " | ".join(cells) + " |")
        out.append("")
    batch = [r for r in rows if r["section"] == "batch"]
    if batch:
        out += [f"### Batches (8192x8192 {batch[0]['dtype']}, X [batch, 8192])", "",
                "| density | batch | MACKO ms | dense same dtype ms | dense fp32 ms | vs same dtype | vs fp32 | vector | sparse | dense (ms, forced routes) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in (r for r in batch if r["impl"] == "macko"):
            same = [b for b in batch if b["density"] == r["density"] and b["batch"] == r["batch"]]
            by = {b["impl"]: b for b in same}
            forced = [f"{float(by[f'macko route={x}']['median_ms']):.1f}" if f"macko route={x}" in by else ""
                      for x in ROUTES]  # fmt: skip
            out.append(f"| {r['density']} | {r['batch']} | {float(r['median_ms']):.2f} | "
                       f"{float(by['torch dense']['median_ms']):.1f} | {float(by['torch dense fp32']['median_ms']):.1f} | "
                       f"{r['vs_dense_same_dtype']} | {r['vs_dense_fp32']} | " + " | ".join(forced) + " |")  # fmt: skip
        out.append("")
    layers = [r for r in rows if r["section"] == "layers"]
    if layers:
        out += ["### MiniLM's layer shapes (fp32, 50% per row, with bias), us and speedup against nn.Linear", "",
                "| shape | tokens | nn.Linear | MackoLinear | vs nn.Linear | op, bias fused | vs nn.Linear | op, bias after | vs nn.Linear |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for key in dict.fromkeys((r["shape"], r["batch"]) for r in layers):
            by = {r["impl"]: r for r in layers if (r["shape"], r["batch"]) == key}
            cells = [f"{1000 * float(by[impl]['median_ms']):.1f}" for impl in ("nn.Linear",)]
            for impl in ("MackoLinear", "macko op, bias fused", "macko op, bias after"):
                cells += [f"{1000 * float(by[impl]['median_ms']):.1f}", f"{float(by[impl]['vs_dense_same_dtype']):.2f}"]
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
        out.append("")
    model = [r for r in rows if r["section"] == "minilm"]
    if model:
        out += ["### all-MiniLM-L6-v2 (fp32, 50% per row), sentence embeddings", "",
                "| sentences | dense pruned ms | MACKO ms | MACKO vs dense |", "| --- | --- | --- | --- |"]
        for count in sorted({int(r["batch"]) for r in model}):
            by = {r["impl"]: r for r in model if int(r["batch"]) == count}
            d, m = by["dense pruned model"], by["macko (sparsify)"]
            out.append(f"| {count} ({d['note'].split(', ')[1]}) | {float(d['median_ms']):.1f} | "
                       f"{float(m['median_ms']):.1f} | {float(d['median_ms']) / float(m['median_ms']):.2f} |")
        out.append("")
    return "\n".join(out)


def plot(out_dir):
    """Plots from out_dir/results.csv: speedup against the batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(os.path.join(out_dir, "results.csv"))
    batch = [r for r in rows if r["section"] == "batch"]
    if batch:
        densities = sorted({r["density"] for r in batch}, key=float, reverse=True)
        fig, axes = plt.subplots(1, len(densities), figsize=(6 * len(densities), 4.2), squeeze=False)
        for ax, density in zip(axes[0], densities):
            for impl, style in [("macko", "o-"), ("macko route=sparse", "s--"), ("macko route=dense", "^--"),
                                ("macko route=vector", "x:")]:  # fmt: skip
                for column, label in [("vs_dense_same_dtype", batch[0]["dtype"]), ("vs_dense_fp32", "fp32")]:
                    pts = [(int(r["batch"]), float(r[column])) for r in batch
                           if r["impl"] == impl and r["density"] == density and r[column]]  # fmt: skip
                    if pts and (impl == "macko" or column == "vs_dense_fp32"):
                        ax.plot(*zip(*pts), style, label=f"{impl} vs dense {label}", alpha=1.0 if impl == "macko" else 0.6)
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.axhline(0.9, color="red", lw=0.8, ls=":", label="0.9 (target floor)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xlabel("right-hand sides (batch)")
            ax.set_ylabel("speedup (dense time / MACKO time)")
            ax.set_title(f"8192x8192 {batch[0]['dtype']}, density {density}", fontsize=10)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "batch_speedup.png"), dpi=120)
        plt.close(fig)
    vec = [r for r in rows if r["section"] == "vector" and r["impl"] == "macko"]
    if vec:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        labels = [f"{r['dtype']}\nd={r['density']}" for r in vec]
        pos = range(len(vec))
        ax.bar([p - 0.2 for p in pos], [float(r["vs_dense_same_dtype"]) for r in vec], 0.4, label="vs dense, same dtype")
        ax.bar([p + 0.2 for p in pos], [float(r["vs_dense_fp32"]) for r in vec], 0.4, label="vs dense fp32")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(list(pos), labels, fontsize=8)
        ax.set_ylabel("speedup")
        ax.set_title("one vector, 8192x8192", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "vector_speedup.png"), dpi=120)
        plt.close(fig)
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write(summary_tables(rows))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/cpu-multiply-<date>)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--size", type=int, default=8192, help="rows = cols of the matrices")
    parser.add_argument("--dtypes", default="float16,bfloat16,float32", help="dtypes of the vector section")
    parser.add_argument("--densities", default="0.5,0.1")
    parser.add_argument("--vector-repeats", type=int, default=3, help="fresh allocations of each vector case")
    parser.add_argument("--x-kinds", default="half-zeros,subnormal,nan-1pct", help="x variants (vector section)")
    parser.add_argument("--x-densities", default="0.5,0.1", help="densities that get the x variants")
    parser.add_argument("--batch-dtype", default="float16")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256,512,1024,2048")
    parser.add_argument("--runs", type=int, default=41, help="timed rounds of a case")
    parser.add_argument("--min-runs", type=int, default=3, help="timed rounds of a slow batch case (at least)")
    parser.add_argument("--model-runs", type=int, default=41, help="timed rounds of a MiniLM case")
    parser.add_argument("--layer-tokens", default="12,448", help="batches of the layers section")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds a case may take beyond its minimum runs")
    parser.add_argument("--sections", default="vector,batch,layers,minilm")
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait (up to --wait seconds) until the 1-minute load average is below this")  # fmt: skip
    parser.add_argument("--wait", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", default=None, metavar="DIR", help="redraw plots and tables from DIR/results.csv")
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes.split(",")
    args.densities = [float(d) for d in args.densities.split(",")]
    args.x_kinds = [k for k in args.x_kinds.split(",") if k]
    args.x_densities = [float(d) for d in args.x_densities.split(",") if d]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.layer_tokens = [int(b) for b in args.layer_tokens.split(",")]
    args.sections = args.sections.split(",")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.plot_only:
        plot(args.plot_only)
        return 0
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    out_dir = args.out or os.path.join("benchmarks", "results", f"cpu-multiply-{date}")
    os.makedirs(out_dir, exist_ok=True)
    load_before = wait_for_quiet(args.max_load, args.wait) if args.max_load else load_average()
    torch.set_num_threads(args.threads)
    meta = {
        "what": "CPU multiply against dense torch (benchmarks/cpu_multiply.py)",
        "command": shlex.join(["python", "benchmarks/cpu_multiply.py", *argv]),
        "date": date,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": records.cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_kernels": torch.ops.macko_spmv._cpu_kernels(),
        "torch": torch.__version__,
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:4],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "macko_spmv": macko_spmv.__version__,
        "macko_spmv_path": os.path.dirname(macko_spmv.__file__),
        "macko_spmv_build": macko_spmv.ops.build_info(),
        "load_average_before": load_before,
        "args": {k: v for k, v in vars(args).items()},
    }
    results = Results(os.path.join(out_dir, "results.csv"), torch.get_num_threads())
    if "vector" in args.sections:
        vector_section(args, results)
    if "batch" in args.sections:
        batch_section(args, results)
    if "layers" in args.sections:
        layers_section(args, results)
    if "minilm" in args.sections:
        minilm_section(args, results)
    results.file.close()
    meta["load_average_after"] = load_average()
    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    plot(out_dir)
    print(summary_tables(results.rows))
    print(f"wrote {out_dir}/results.csv, meta.json, tables.md and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
