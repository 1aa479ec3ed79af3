"""The SpMV benchmark: MACKO multiply against cuBLAS (dense) and cuSPARSE (CSR).

Run it as ``python -m macko_spmv bench``; ``--help`` lists the options. It
follows the project's benchmarking method:

- every case is a uniformly random unstructured sparse matrix with random
  normal values, drawn from a fixed seed, and its MACKO product is checked
  against a float64 reference before anything is timed;
- MACKO ``multiply``, dense ``torch.mv`` / ``x @ W.T`` (cuBLAS) and
  ``torch.sparse_csr`` (cuSPARSE) are timed in the same process, together
  with the peak read bandwidth (``sum`` over 1 GiB) and copy bandwidth, so
  that the ratios reported (fraction of the memory roofline, speedups) come
  from one run;
- two timings (``--timing``): "flushed", CUDA events around one call with L2
  flushed before each (median of ``--repeats`` runs), and "graph", calls
  back to back on enough copies of the operands to exceed 3x the L2,
  captured as one CUDA graph (median over replays of the time per call;
  see macko_spmv.bench.timing for both). The back-to-back output of MACKO
  is checked against the reference too;
- ``--route NAME`` is recorded in the CSV and set as the environment
  variable MACKO_MULTIPLY_ROUTE around every MACKO call (checks, timing and
  graph capture), for the library to pick its multiply route by.

Results go to ``results.csv`` and ``meta.json`` in the output folder; the
plots and ``summary.md`` are drawn from the saved CSV only (``--plot-only``
redraws them from an earlier run).

On ``--device cpu`` the same sweep runs with ``time.perf_counter``, no cache
flush, and the back-to-back rounds as a plain loop (the cache is the CPU's
last level); the "cublas" and "cusparse" columns then hold torch's CPU dense
and CSR kernels.
"""

import argparse
import contextlib
import math
import os
import re
import sys
import warnings

import torch
from tqdm import tqdm

import macko_spmv

from . import plots, records, tables
from .matrices import (ACCUMULATION_TOL, check_product, derived_seed, random_pruned, random_vectors, reference_product,
                       seeded_generator)
from .tables import TIMINGS, gb_per_s, ratio, rounded, significant, timed_column
from .timing import BackToBackTimer, CpuTimer, FlushedCudaTimer, describe_bytes

# The linear layers of Llama-class models, as (rows, cols) = (out, in) features.
LLAMA_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (28672, 8192), (8192, 28672))
DEFAULT_DENSITIES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# What the matrix stores (--values): values in its dtype, or 8-bit values
# with per-row scales (compress's value_dtype). A quantized case's dtype
# column reads "<dtype>/<values>", e.g. "float16/int8".
VALUE_DTYPES = {"same": None, "int8": torch.int8, "float8_e4m3fn": torch.float8_e4m3fn}
DEFAULT_REPEATS = 100
MIN_REPEATS_BY_METHOD = 50  # the method asks for the median of at least 50 runs
DEFAULT_WARMUP = 5
DEFAULT_BANDWIDTH_BYTES = 1 << 30
DEFAULT_GRAPH_REPLAYS = 20
DEFAULT_GRAPH_MAX_BYTES = 8 * 2**30
MAX_BATCH = 2048

# How the library is told which multiply route to take.
ROUTE_VARIABLE = "MACKO_MULTIPLY_ROUTE"
# The route names the library knows (others are passed on as they are).
KNOWN_ROUTES = ("auto", "stream", "tiles", "dense")


@contextlib.contextmanager
def environment_variable(variable, value):
    """Sets the environment variable to value for the calls inside (the
    library reads its MACKO_* switches at every call), then restores what
    was there."""
    saved = os.environ.get(variable)
    os.environ[variable] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved


def multiply_route(name):
    """MACKO_MULTIPLY_ROUTE=name for the calls inside."""
    return environment_variable(ROUTE_VARIABLE, name)


def measure_peak_bandwidth(timer, nbytes, device, seed):
    """(read GB/s, copy GB/s): ``sum`` over an fp16 tensor of ``nbytes``, and
    a device-to-device copy of it counting the bytes read plus written."""
    source = random_vectors(None, nbytes // 2, torch.float16, seeded_generator(seed, device))
    read_us = timer.median_us(source.sum)
    destination = torch.empty_like(source)
    copy_us = timer.median_us(lambda: destination.copy_(source))
    moved = source.numel() * source.element_size()
    return gb_per_s(moved, read_us), gb_per_s(2 * moved, copy_us)


# --------------------------------------------------------------------------
# The ops, each as a call on its own operands


def macko_call(A, x):
    return lambda: macko_spmv.multiply(A, x)


def dense_call(W, x):
    """The cuBLAS baseline as nn.Linear computes it: torch.mv for one vector,
    x @ W.T (a view: cuBLAS reads W in place) for a batch."""
    if x.dim() == 1:
        return lambda: torch.mv(W, x)
    W_T = W.T
    return lambda: torch.matmul(x, W_T)


def csr_call(W_csr, dense_operand):
    return lambda: torch.matmul(W_csr, dense_operand)


def csr_operand(x):
    """x as the CSR matmul takes it: a vector, or x^T made contiguous
    [cols, batch] outside the timing, so the timed call holds no copy."""
    return x if x.dim() == 1 else x.T.contiguous()


def to_csr(W, x):
    """(W as torch.sparse_csr, None), or (None, reason) when torch has no CSR
    matmul for this dtype on this device."""
    try:
        with warnings.catch_warnings():
            # torch warns once that sparse CSR is in beta; it says nothing about the timing.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            W_csr = W.to_sparse_csr()
        csr_call(W_csr, csr_operand(x))()  # fails here when the dtype is not supported
        return W_csr, None
    except (RuntimeError, NotImplementedError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0]}"


def csr_bytes(W_csr):
    return sum(t.numel() * t.element_size() for t in (W_csr.crow_indices(), W_csr.col_indices(), W_csr.values()))


def macko_copy(A):
    scales = None if A.scales is None else A.scales.clone()
    return macko_spmv.MackoMatrix(*(array.clone() for array in A[:3]), A.rows, A.cols, scales, validate=False)


# --------------------------------------------------------------------------
# The sweep


def run_case(args, timers, A, W, x, case_name, W_stored):
    """Checks MACKO's product of one case against that of W_stored (the
    matrix A stands for: W, or W dequantized), then times the three ops
    with each timing, the baselines on W. Returns {column: value} of the
    timed columns."""
    y_ref, magnitude = reference_product(W_stored, x)

    def check(y, how):
        check_product(y, y_ref, magnitude, W.dtype, f"{case_name}: MACKO multiply ({how})")

    with multiply_route(args.route):
        y = macko_spmv.multiply(A, x)
        check(y, "eager")
    del y
    W_csr, csr_failure = to_csr(W, x)
    operand = csr_operand(x)
    out = {"csr_failure": csr_failure, "graph_notes": []}

    for timing in args.timing:
        us = {}
        if timing == "flushed":
            with multiply_route(args.route):
                us["macko"] = timers["flushed"].median_us(macko_call(A, x))
            us["cublas"] = timers["flushed"].median_us(dense_call(W, x))
            us["cusparse"] = timers["flushed"].median_us(csr_call(W_csr, operand)) if W_csr is not None else math.nan
        else:
            timer = timers["graph"]
            with multiply_route(args.route):
                results = {"macko": timer.measure(lambda: macko_call(macko_copy(A), x), A.nbytes,
                                                  check=lambda y: check(y, "back to back"))}  # fmt: skip
            results["cublas"] = timer.measure(lambda: dense_call(W.clone(), x), W.numel() * W.element_size())
            if W_csr is not None:
                results["cusparse"] = timer.measure(lambda: csr_call(W_csr.clone(), operand), csr_bytes(W_csr))
            for op, result in results.items():
                us[op] = result.us_per_call
                out[f"graph_copies_{op}"] = result.copies
                out[f"graph_calls_{op}"] = result.calls
                if result.note:
                    out["graph_notes"].append(f"{op}: {result.note}")
            us.setdefault("cusparse", math.nan)
        for op, value in us.items():
            out[timed_column(f"{op}_us", timing)] = rounded(value, 3)
    return out


def case_row(env, rows, cols, density, dtype_name, batch, route, A, timed, peak_read, peak_copy, l2_flush, label):
    """A CSV row: the case, the times, and what is derived from them; the
    dtype column holds `label` (dtype_name, or dtype/values)."""
    element_size = torch.finfo(DTYPES[dtype_name]).bits // 8
    vector_bytes = batch * (rows + cols) * element_size
    row = {
        **env, "shape": f"{rows}x{cols}", "rows": rows, "cols": cols, "density": density, "dtype": label,
        "batch": batch, "route": route, "stored_fraction": round(A.stored_fraction, 6), "macko_bytes": A.nbytes,
        "peak_read_GBps": peak_read, "peak_copy_GBps": peak_copy, "l2_flush": l2_flush,
        "graph_note": "; ".join(timed["graph_notes"]),
    }  # fmt: skip
    row.update({key: value for key, value in timed.items() if key.startswith("graph_") and key != "graph_notes"})
    for timing in TIMINGS:
        column = lambda name: timed_column(name, timing)  # noqa: E731
        macko_us = timed.get(column("macko_us"), math.nan)
        cublas_us = timed.get(column("cublas_us"), math.nan)
        cusparse_us = timed.get(column("cusparse_us"), math.nan)
        macko_GBps = significant(gb_per_s(A.nbytes + vector_bytes, macko_us))
        row.update({
            column("macko_us"): macko_us, column("cublas_us"): cublas_us, column("cusparse_us"): cusparse_us,
            column("macko_GBps"): macko_GBps,
            column("cublas_GBps"): significant(gb_per_s(rows * cols * element_size + vector_bytes, cublas_us)),
            column("roofline_fraction"): significant(ratio(macko_GBps, peak_read)),
            column("speedup_cublas"): significant(ratio(cublas_us, macko_us)),
            column("speedup_cusparse"): significant(ratio(cusparse_us, macko_us)),
        })  # fmt: skip
    return row


def run_sweep(args, device, timers, env, peak_read, peak_copy, writer):
    """Runs every case, writes each CSV row as soon as it is known, and
    returns the rows. A failed correctness check raises and ends the run."""
    matrices = [(rows, cols, density, dtype_name, values) for rows, cols in args.shapes for dtype_name in args.dtypes
                for density in args.densities for values in args.values]  # fmt: skip
    results, reported = [], set()
    l2_flush = timers["flushed"].description if "flushed" in args.timing else ""
    progress = tqdm(total=len(matrices) * len(args.batch), desc="spmv", unit="case")
    for rows, cols, density, dtype_name, values in matrices:
        dtype = DTYPES[dtype_name]
        W = random_pruned(rows, cols, density, dtype,
                          seeded_generator(derived_seed(args.seed, "W", rows, cols, density), device))  # fmt: skip
        A = macko_spmv.compress(W, value_dtype=VALUE_DTYPES[values])
        W_stored = W if A.scales is None else macko_spmv.decompress(A)  # what multiply multiplies
        label = dtype_name if A.scales is None else f"{dtype_name}/{values}"
        for batch in args.batch:
            case_name = f"{rows}x{cols} density {density} {label} batch {batch}"
            progress.set_postfix_str(case_name)
            generator = seeded_generator(derived_seed(args.seed, "x", cols, batch), device)
            x = random_vectors(None if batch == 1 else batch, cols, dtype, generator)
            timed = run_case(args, timers, A, W, x, case_name, W_stored)
            failure = timed.pop("csr_failure")
            if failure and dtype_name not in reported:
                reported.add(dtype_name)
                progress.write(f"torch.sparse_csr matmul unavailable for {dtype_name} on {device}: {failure}; "
                               "cusparse_us is NaN")  # fmt: skip
            for note in timed["graph_notes"]:
                if note not in reported:  # each note once; the CSV has it for every case
                    reported.add(note)
                    progress.write(f"{case_name}: back to back, {note} (said once; the CSV's graph_note has it "
                                   "for every case)")
            row = case_row(env, rows, cols, density, dtype_name, batch, args.route, A, timed, peak_read, peak_copy,
                           l2_flush, label)  # fmt: skip
            writer.write(row)
            results.append(row)
            progress.update()
        del W, A, W_stored
    progress.close()
    return results


def method_notes(args, device, timers):
    notes = [
        "Uniformly random unstructured sparsity (each entry kept with probability = density), "
        "random normal values, fixed seeds derived from --seed and the case.",
        "Each MACKO product is checked against a float64 reference before timing "
        f"(|err| <= eps(dtype) * |y| + {ACCUMULATION_TOL:g} * |W| @ |x|), eagerly and (graph timing) the last "
        "call of a replayed graph; a mismatch aborts the run.",
        f"MACKO calls run with {ROUTE_VARIABLE}={args.route} in the environment (--route).",
        "macko: macko_spmv.multiply(A, x). cublas: torch.mv(W, x) for batch 1, torch.matmul(x, W.T) "
        "otherwise, on the dense matrix with its zeros. cusparse: W.to_sparse_csr() (torch's default "
        "int64 indices) @ x, with a batch passed as contiguous x^T [cols, batch]; NaN where torch "
        "has no CSR matmul for the dtype (or, graph timing, where it cannot be captured).",
        "Bytes moved: macko = A.nbytes (values + deltas + row_indices, + scales for 8-bit values) + x + y; "
        "cublas = dense matrix + x + y. roofline_fraction = macko_GBps / peak_read_GBps; "
        "speedup_* = baseline time / macko time. GB = 1e9 bytes. Columns with _graph are the back-to-back "
        "timing.",
        f"Peak read bandwidth: x.sum() over {describe_bytes(args.bandwidth_bytes)} of fp16; peak copy: "
        "device-to-device copy of the same tensor, read + write bytes; medians, same run.",
    ]
    if "flushed" in args.timing:
        notes.append(f"flushed: {args.warmup} warm-up calls per op, then the median of {args.repeats} timed runs; "
                     + ("CUDA events around the op only; " + timers["flushed"].description if device.type == "cuda"
                        else "CPU: time.perf_counter, no cache flush"))  # fmt: skip
    if "graph" in args.timing:
        notes.append("graph: " + timers["graph"].description)
    if device.type == "cpu":
        notes.append("CPU run: the cublas/cusparse columns are torch's CPU dense and CSR kernels.")
    return notes


# --------------------------------------------------------------------------
# Command line


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not match:
            raise argparse.ArgumentTypeError(f"a shape is ROWSxCOLS, e.g. 4096x11008; got {item!r}")
        shapes.append((int(match[1]), int(match[2])))
    return shapes


parse_densities = records.comma_list(float, lambda d: 0.0 < d <= 1.0, "densities must lie in (0, 1]")
parse_dtypes = records.comma_list(str, lambda name: name in DTYPES, f"dtypes are {', '.join(DTYPES)}")
parse_values = records.comma_list(str, lambda name: name in VALUE_DTYPES, f"values are {', '.join(VALUE_DTYPES)}")
parse_batches = records.comma_list(int, lambda b: 1 <= b <= MAX_BATCH, f"batch sizes are 1 to {MAX_BATCH}")
parse_timings = records.comma_list(str, lambda name: name in TIMINGS, f"timings are {', '.join(TIMINGS)}")


def parse_route(text):
    if not re.fullmatch(r"[a-z0-9_-]+", text):
        raise argparse.ArgumentTypeError(f"a route is a name such as {', '.join(KNOWN_ROUTES)}; got {text!r}")
    return text


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m macko_spmv bench",
        description="Times MACKO SpMV against cuBLAS (dense) and cuSPARSE (CSR), with L2 flushed and back to "
        "back in a CUDA graph, and measures peak bandwidth in the same run.",
    )
    default_shapes = ",".join(f"{rows}x{cols}" for rows, cols in LLAMA_SHAPES)
    parser.add_argument("--shapes", type=parse_shapes, default=list(LLAMA_SHAPES),
                        help=f"comma-separated ROWSxCOLS (default: the Llama shapes {default_shapes})")
    parser.add_argument("--densities", type=parse_densities, default=list(DEFAULT_DENSITIES),
                        help="comma-separated fractions of nonzeros (default: 1.0,0.9,...,0.1,0.05)")
    parser.add_argument("--dtypes", type=parse_dtypes, default=["float16"],
                        help=f"comma-separated value dtypes out of {', '.join(DTYPES)} (default: float16)")
    parser.add_argument("--values", type=parse_values, default=["same"],
                        help="comma-separated stored values: same (the dtype's own), int8, float8_e4m3fn (8-bit "
                        "values with per-row scales, compress's value_dtype; x stays in --dtypes, and the "
                        "product is checked against the dequantized matrix) (default: same)")
    parser.add_argument("--batch", type=parse_batches, default=[1],
                        help=f"comma-separated batch sizes up to {MAX_BATCH}, e.g. 1,2,4,8,16,32,64,128,512,2048; "
                        "x is [batch, cols], 1 means a single vector (default: 1)")
    parser.add_argument("--timing", type=parse_timings, default=list(TIMINGS),
                        help="comma-separated timings: flushed (L2 flushed before each call), graph (back to back "
                        "in a CUDA graph) (default: flushed,graph)")
    parser.add_argument("--route", type=parse_route, default="auto",
                        help=f"multiply route, set as {ROUTE_VARIABLE} around the MACKO calls and recorded in the "
                        f"CSV: {', '.join(KNOWN_ROUTES)} (default: auto)")
    parser.add_argument("--device", default="cuda",
                        help="cuda (or cuda:N), or cpu for a smoke test without cache flush (default: cuda)")
    parser.add_argument("--repeats", type=records.positive_int, default=DEFAULT_REPEATS,
                        help=f"flushed: timed runs per op; the median is reported (default: {DEFAULT_REPEATS}, "
                        f"the method asks for >= {MIN_REPEATS_BY_METHOD})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"flushed: untimed runs per op before timing (default: {DEFAULT_WARMUP})")
    parser.add_argument("--graph-replays", type=records.positive_int, default=DEFAULT_GRAPH_REPLAYS,
                        help=f"graph: timed replays per op; the median is reported (default: {DEFAULT_GRAPH_REPLAYS})")
    parser.add_argument("--graph-max-bytes", type=int, default=DEFAULT_GRAPH_MAX_BYTES,
                        help="graph: cap on the bytes of an op's copies; an op that needs more is NaN "
                        f"(default: {describe_bytes(DEFAULT_GRAPH_MAX_BYTES)})")
    parser.add_argument("--graph-cache-bytes", type=int, default=None,
                        help="graph: the cache the copies must exceed 3x (default: the GPU's L2, or the CPU's "
                        "last-level cache)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    parser.add_argument("--bandwidth-bytes", type=int, default=DEFAULT_BANDWIDTH_BYTES,
                        help="size of the tensor for the peak bandwidth measurement (default: 1 GiB)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: benchmarks/results/<gpu-name>-<date>)")
    parser.add_argument("--no-plot", action="store_true", help="no PNGs (the CSV and summary.md only)")
    parser.add_argument("--plot-only", metavar="DIR", default=None,
                        help="redraw the plots and summary.md from DIR/results.csv and exit")
    return parser  # fmt: skip


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.plot_only:
        plots.plot_spmv(args.plot_only)
        return 0
    if args.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    if "flushed" in args.timing and args.repeats < MIN_REPEATS_BY_METHOD:
        print(f"note: --repeats {args.repeats} is below the {MIN_REPEATS_BY_METHOD} runs the method asks for; "
              "use such numbers for smoke tests only", file=sys.stderr)  # fmt: skip
    device = records.select_device(args.device, "pass --device cpu for a smoke test")
    on_gpu = device.type == "cuda"
    # The peak bandwidth is always measured with the flushed timer (the
    # flush does not matter for 1 GiB, the events do).
    timers = {"flushed": FlushedCudaTimer(device, args.repeats, args.warmup) if on_gpu
              else CpuTimer(args.repeats, args.warmup)}  # fmt: skip
    if "graph" in args.timing:
        timers["graph"] = BackToBackTimer(device, replays=args.graph_replays, max_bytes=args.graph_max_bytes,
                                          cache_bytes=args.graph_cache_bytes)  # fmt: skip

    env = records.environment(device)
    out_dir = args.out or records.default_out_dir("", env)
    os.makedirs(out_dir, exist_ok=True)
    print(f"device: {env['gpu']}; torch {env['torch']}, CUDA {env['cuda']}; route {args.route}", file=sys.stderr)
    for name, timer in timers.items():
        if name in args.timing:
            print(f"{name} timing: {timer.description}", file=sys.stderr)
    peak_read, peak_copy = measure_peak_bandwidth(timers["flushed"], args.bandwidth_bytes, device, args.seed)
    peak_read, peak_copy = significant(peak_read), significant(peak_copy)
    print(f"peak bandwidth: read {peak_read:.1f} GB/s, copy {peak_copy:.1f} GB/s (read + write)", file=sys.stderr)

    meta = {
        **env, **records.run_facts(device),
        "command": records.equivalent_command("bench", argv), "process_argv": sys.argv,
        "timings": args.timing, "route": args.route, "repeats": args.repeats, "warmup": args.warmup,
        "seed": args.seed, "l2_cache_bytes": getattr(timers["flushed"], "l2_bytes", None),
        "l2_flush": timers["flushed"].description if "flushed" in args.timing else None,
        "graph_method": timers["graph"].description if "graph" in args.timing else None,
        "graph_replays": args.graph_replays, "graph_max_bytes": args.graph_max_bytes,
        "peak_read_GBps": peak_read, "peak_copy_GBps": peak_copy, "bandwidth_bytes": args.bandwidth_bytes,
        "method": method_notes(args, device, timers),
    }  # fmt: skip
    meta_path = os.path.join(out_dir, "meta.json")
    records.write_json(meta_path, meta)

    with tables.ResultsWriter(os.path.join(out_dir, "results.csv"), tables.SPMV_COLUMNS) as writer:
        run_sweep(args, device, timers, env, peak_read, peak_copy, writer)

    plots.finish_run(out_dir, meta, "spmv", draw=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
