"""The SpMV benchmark: MACKO multiply against cuBLAS (dense) and cuSPARSE (CSR).

Run it as ``python -m macko_spmv bench`` (or ``python benchmarks/spmv.py``);
``--help`` lists the options. It follows the project's benchmarking method:

- every case is a uniformly random unstructured sparse matrix with random
  normal values, drawn from a fixed seed, and its MACKO product is checked
  against a float64 reference before anything is timed;
- each op is warmed up, then timed with CUDA events around the op alone, and
  the median of ``--repeats`` runs is kept; L2 is flushed before every timed
  run by writing a buffer twice the size of the L2 cache;
- MACKO ``multiply``, dense ``torch.mv`` / ``torch.matmul`` (cuBLAS) and
  ``torch.sparse_csr`` (cuSPARSE) are timed in the same process, together with
  the peak read bandwidth (``sum`` over 1 GiB) and copy bandwidth, so that the
  ratios reported (fraction of the memory roofline, speedups) come from one run.

Results go to ``results.csv`` and ``meta.json`` in the output folder; the
plots and ``summary.md`` are drawn from the saved CSV only (``--plot-only``
redraws them from an earlier run).

On ``--device cpu`` the same sweep runs with ``time.perf_counter`` and no
cache flush, which is only meant for smoke tests: the "cublas" and "cusparse"
columns then hold torch's CPU dense and CSR kernels.
"""

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
import zlib

import torch
from tqdm import tqdm

import macko_spmv

# The linear layers of Llama-class models, as (rows, cols) = (out, in) features.
LLAMA_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (28672, 8192), (8192, 28672))
DEFAULT_DENSITIES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_REPEATS = 100
MIN_REPEATS_BY_METHOD = 50  # the method asks for the median of at least 50 runs
DEFAULT_WARMUP = 5
DEFAULT_BANDWIDTH_BYTES = 1 << 30
FALLBACK_L2_BYTES = 50 * 1000 * 1000  # the H100's L2, used when the device does not say

CSV_COLUMNS = (
    "gpu", "torch", "cuda", "date", "shape", "rows", "cols", "density", "dtype", "batch",
    "stored_fraction", "macko_bytes", "macko_us", "cublas_us", "cusparse_us",
    "macko_GBps", "cublas_GBps", "roofline_fraction", "speedup_cublas", "speedup_cusparse",
    "peak_read_GBps", "peak_copy_GBps", "l2_flush",
)  # fmt: skip

# Largest error allowed in the check, per element i, as
#   |y_i - y_ref_i| <= eps(dtype) * |y_ref_i| + ACCUMULATION_TOL * (|W| @ |x|)_i.
# The first term covers the final rounding to the matrix dtype (eps is twice
# the unit roundoff, for slack); the second covers summing the products in
# float32, whose rounding error grows with sum_j |W_ij x_j|: 1e-5 is ~100x its
# typical size, yet a few times below what one missing, doubled or misplaced
# entry costs even in a 28672-column row.
ACCUMULATION_TOL = 1e-5


class ResultMismatchError(AssertionError):
    """MACKO multiply disagreed with the float64 reference: nothing is timed."""


# --------------------------------------------------------------------------
# Timers


# About 50 us at H100 clocks: more than one op's host-side overhead.
HOST_HEAD_START_CYCLES = 100_000


class CudaTimer:
    """Median time of an op with CUDA events, L2 flushed before every run."""

    def __init__(self, device, repeats, warmup):
        self.device = torch.device(device)
        self.repeats = repeats
        self.warmup = warmup
        properties = torch.cuda.get_device_properties(self.device)
        self.l2_bytes = getattr(properties, "L2_cache_size", 0) or FALLBACK_L2_BYTES
        # Writing twice the L2 size evicts everything the previous run left
        # there, so every timed run reads its operands from DRAM as it would
        # inside a model, where other layers' weights pass through L2 between
        # two calls of this one.
        self.flush_buffer = torch.empty(2 * self.l2_bytes, dtype=torch.uint8, device=self.device)
        # Reading a second buffer of the same size after the write pushes the
        # written (dirty) lines out of L2 before the timed run starts, so the
        # op does not pay for their write-back: it finds L2 full of clean,
        # unrelated lines, as it does after the previous layers of a model.
        self.clean_buffer = torch.ones(2 * self.l2_bytes // 4, dtype=torch.float32, device=self.device)

    @property
    def l2_flush(self):
        return (f"write {self.flush_buffer.numel() / 2**20:.0f} MiB (2x L2) before every timed run, then read "
                "another 2x L2 so no dirty line is left, then a GPU spin so that host overhead stays out of the time")

    def median_us(self, op):
        for _ in range(self.warmup):
            op()
        torch.cuda.synchronize(self.device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for start, end in zip(starts, ends):
            self.flush_buffer.zero_()
            self.clean_buffer.sum()
            # A spin on the GPU lets the host enqueue the op before the
            # start event fires, so the time is the GPU's alone, not the
            # Python and launch overhead (which CUDA graphs remove in real
            # decoding), for every op alike.
            torch.cuda._sleep(HOST_HEAD_START_CYCLES)
            start.record()
            op()
            end.record()
        torch.cuda.synchronize(self.device)
        return statistics.median(start.elapsed_time(end) * 1e3 for start, end in zip(starts, ends))


class CpuTimer:
    """Median wall time of an op with perf_counter; no cache flush (smoke tests)."""

    l2_flush = "none (cpu)"

    def __init__(self, repeats, warmup):
        self.repeats = repeats
        self.warmup = warmup

    def median_us(self, op):
        for _ in range(self.warmup):
            op()
        times_us = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            op()
            times_us.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times_us)


def measure_peak_bandwidth(timer, nbytes, device, seed):
    """(read GB/s, copy GB/s): ``sum`` over an fp16 tensor of ``nbytes``, and
    a device-to-device copy of it counting the bytes read plus written."""
    generator = torch.Generator(device=device).manual_seed(seed)
    source = torch.randn(nbytes // 2, generator=generator, device=device, dtype=torch.float16)
    read_us = timer.median_us(source.sum)
    destination = torch.empty_like(source)
    copy_us = timer.median_us(lambda: destination.copy_(source))
    moved = source.numel() * source.element_size()
    return gb_per_s(moved, read_us), gb_per_s(2 * moved, copy_us)


def gb_per_s(nbytes, time_us):
    """Bytes per microsecond as GB/s (1 GB = 1e9 bytes); NaN for no time."""
    if not (math.isfinite(time_us) and time_us > 0):
        return float("nan")
    return nbytes / time_us / 1e3


# --------------------------------------------------------------------------
# Inputs and the correctness check


def case_seed(base_seed, *key):
    """A seed that depends on what is generated, not on the order of the sweep,
    so a case draws the same numbers whatever else is in the run."""
    return base_seed + zlib.crc32(repr(key).encode())


def random_sparse_matrix(rows, cols, density, dtype, device, seed):
    """Dense [rows, cols] matrix in ``dtype`` whose entries are kept with
    probability ``density`` (uniform, unstructured) and are normal samples."""
    generator = torch.Generator(device=device).manual_seed(seed)
    keep = torch.rand(rows, cols, generator=generator, device=device) < density
    values = torch.randn(rows, cols, generator=generator, device=device).to(dtype)
    # A sample that rounds to zero would silently lower the density.
    values.masked_fill_(values == 0, 1.0)
    return values.masked_fill_(~keep, 0.0)


def random_vectors(batch, cols, dtype, device, seed):
    """x for a case: [cols] for batch 1 (a matrix-vector product), else [batch, cols]."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, cols, generator=generator, device=device).to(dtype)
    return x[0] if batch == 1 else x


def reference_product(W, x):
    """(y_ref, magnitude) in float64, both [..., rows]: y_ref = x @ W^T, and
    magnitude = |x| @ |W|^T which bounds the accumulation error. Computed in
    blocks of rows so that the float64 copy of W stays small."""
    x64 = x.double()
    rows, cols = W.shape
    y_ref = x64.new_empty((*x.shape[:-1], rows))
    magnitude = torch.empty_like(y_ref)
    block_rows = max(1, (1 << 24) // max(cols, 1))
    for first in range(0, rows, block_rows):
        block = W[first : first + block_rows].double()
        y_ref[..., first : first + block_rows] = x64 @ block.T
        magnitude[..., first : first + block_rows] = x64.abs() @ block.abs().T
    return y_ref, magnitude


def check_product(y, y_ref, magnitude, dtype, case_name):
    """Raises ResultMismatchError unless y matches the float64 reference
    within the rounding that a float32 accumulation into ``dtype`` allows."""
    if y.shape != y_ref.shape:
        raise ResultMismatchError(f"{case_name}: MACKO multiply returned shape {tuple(y.shape)}, expected {tuple(y_ref.shape)}")
    output_tol = torch.finfo(dtype).eps
    bound = output_tol * y_ref.abs() + ACCUMULATION_TOL * magnitude + torch.finfo(dtype).tiny
    error = (y.double() - y_ref).abs()
    wrong = ~(error <= bound)  # written so that NaN counts as wrong
    if bool(wrong.any()):
        count = int(wrong.sum())
        worst = int(torch.argmax(torch.where(wrong, error / bound, 0.0).flatten()))
        raise ResultMismatchError(
            f"{case_name}: MACKO multiply is wrong in {count} of {y.numel()} outputs; "
            f"worst at flat index {worst}: got {y.flatten()[worst].item()!r}, "
            f"expected {y_ref.flatten()[worst].item()!r} (allowed error {bound.flatten()[worst].item():.3g})"
        )


# --------------------------------------------------------------------------
# The sweep


def environment(device):
    """What identifies the machine and the software, for every CSV row."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = cpu_name()
    return {
        "gpu": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    }


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


def nvidia_driver_version():
    """The driver version from nvidia-smi, or None where it cannot be asked."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else None


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def set_caption(figure, text, fontsize):
    """The figure's title line of run facts, wrapped to the figure's width
    (a character is about 0.55 of the font size wide)."""
    width_chars = max(20, int(figure.get_figwidth() * 72 / (0.55 * fontsize)))
    figure.suptitle(textwrap.fill(text, width_chars), fontsize=fontsize)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sparse_csr_op(W, x):
    """The cuSPARSE baseline as a user would write it, or (None, reason) when
    torch has no CSR matmul for this dtype on this device.

    A batch is passed as W_csr @ x^T with x^T made contiguous [cols, batch]
    outside the timing, so the timed call holds no transposing copy.
    """
    try:
        with warnings.catch_warnings():
            # torch warns once that sparse CSR is in beta; it says nothing about the timing.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            W_csr = W.to_sparse_csr()
        dense_operand = x if x.dim() == 1 else x.T.contiguous()
        op = lambda: torch.matmul(W_csr, dense_operand)  # noqa: E731
        op()  # fails here when the dtype is not supported
        return op, None
    except (RuntimeError, NotImplementedError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0]}"


def rounded(value, digits):
    """value to ``digits`` decimals (NaN stays NaN)."""
    return round(value, digits) if math.isfinite(value) else float("nan")


def significant(value, digits=5):
    """value to ``digits`` significant digits (NaN stays NaN): rates and
    ratios span orders of magnitude between a GPU and a CPU smoke run."""
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def ratio(numerator, denominator):
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return float("nan")
    return numerator / denominator


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not match:
            raise argparse.ArgumentTypeError(f"a shape is ROWSxCOLS, e.g. 4096x11008; got {item!r}")
        shapes.append((int(match[1]), int(match[2])))
    return shapes


def parse_densities(text):
    densities = [float(item) for item in text.split(",")]
    if not all(0.0 < density <= 1.0 for density in densities):
        raise argparse.ArgumentTypeError(f"densities must lie in (0, 1], got {text!r}")
    return densities


def parse_dtypes(text):
    names = [item.strip() for item in text.split(",")]
    unknown = [name for name in names if name not in DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dtype(s) {unknown}; choose from {', '.join(DTYPES)}")
    return names


def parse_batches(text):
    batches = [int(item) for item in text.split(",")]
    if not all(batch >= 1 for batch in batches):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return batches


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m macko_spmv bench",
        description="Times MACKO SpMV against cuBLAS (dense) and cuSPARSE (CSR), "
        "with L2 flushed, and measures peak bandwidth in the same run.",
    )
    default_shapes = ",".join(f"{rows}x{cols}" for rows, cols in LLAMA_SHAPES)
    parser.add_argument("--shapes", type=parse_shapes, default=list(LLAMA_SHAPES),
                        help=f"comma-separated ROWSxCOLS (default: the Llama shapes {default_shapes})")
    parser.add_argument("--densities", type=parse_densities, default=list(DEFAULT_DENSITIES),
                        help="comma-separated fractions of nonzeros (default: 1.0,0.9,...,0.1,0.05)")
    parser.add_argument("--dtypes", type=parse_dtypes, default=["float16"],
                        help=f"comma-separated value dtypes out of {', '.join(DTYPES)} (default: float16)")
    parser.add_argument("--batch", type=parse_batches, default=[1],
                        help="comma-separated batch sizes; x is [batch, cols], 1 means a single vector (default: 1)")
    parser.add_argument("--device", default="cuda",
                        help="cuda (or cuda:N), or cpu for a smoke test without cache flush (default: cuda)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed runs per op; the median is reported (default: {DEFAULT_REPEATS}, "
                        f"the method asks for >= {MIN_REPEATS_BY_METHOD})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed runs per op before timing (default: {DEFAULT_WARMUP})")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    parser.add_argument("--bandwidth-bytes", type=int, default=DEFAULT_BANDWIDTH_BYTES,
                        help="size of the tensor for the peak bandwidth measurement (default: 1 GiB)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: benchmarks/results/<gpu-name>-<date>)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only, no PNGs")
    parser.add_argument("--plot-only", metavar="DIR", default=None,
                        help="redraw the plots and summary.md from DIR/results.csv and exit")
    return parser  # fmt: skip


def run_sweep(args, device, timer, env, peak_read_GBps, peak_copy_GBps, csv_writer, csv_file):
    """Runs every case, writes each CSV row as soon as it is known, and
    returns the rows. A failed correctness check raises and ends the run."""
    matrices = [
        (rows, cols, density, dtype_name)
        for rows, cols in args.shapes
        for dtype_name in args.dtypes
        for density in args.densities
    ]
    results = []
    unsupported_csr = set()
    progress = tqdm(total=len(matrices) * len(args.batch), desc="spmv", unit="case")
    for rows, cols, density, dtype_name in matrices:
        dtype = DTYPES[dtype_name]
        W = random_sparse_matrix(rows, cols, density, dtype, device, case_seed(args.seed, "W", rows, cols, density))
        A = macko_spmv.compress(W)
        stored_fraction = A.stored_fraction
        element_size = W.element_size()
        for batch in args.batch:
            case_name = f"{rows}x{cols} density {density} {dtype_name} batch {batch}"
            progress.set_postfix_str(case_name)
            x = random_vectors(batch, cols, dtype, device, case_seed(args.seed, "x", cols, batch))

            y_ref, magnitude = reference_product(W, x)
            y = macko_spmv.multiply(A, x)
            synchronize(device)
            check_product(y, y_ref, magnitude, dtype, case_name)
            del y, y_ref, magnitude

            macko_us = timer.median_us(lambda: macko_spmv.multiply(A, x))
            if x.dim() == 1:
                cublas_us = timer.median_us(lambda: torch.mv(W, x))
            else:
                W_T = W.T  # x @ W.T as nn.Linear computes it; a view, so cuBLAS reads W in place
                cublas_us = timer.median_us(lambda: torch.matmul(x, W_T))
            csr_op, csr_failure = sparse_csr_op(W, x)
            if csr_op is None:
                cusparse_us = float("nan")
                if dtype_name not in unsupported_csr:
                    unsupported_csr.add(dtype_name)
                    progress.write(f"torch.sparse_csr matmul unavailable for {dtype_name} on {device}: "
                                   f"{csr_failure}; cusparse_us is NaN")  # fmt: skip
            else:
                cusparse_us = timer.median_us(csr_op)
            del csr_op

            vector_bytes = batch * (rows + cols) * element_size
            macko_bytes = A.nbytes
            macko_us, cublas_us, cusparse_us = (rounded(t, 3) for t in (macko_us, cublas_us, cusparse_us))
            macko_GBps = significant(gb_per_s(macko_bytes + vector_bytes, macko_us))
            row = {
                **env,
                "shape": f"{rows}x{cols}", "rows": rows, "cols": cols, "density": density,
                "dtype": dtype_name, "batch": batch,
                "stored_fraction": round(stored_fraction, 6), "macko_bytes": macko_bytes,
                "macko_us": macko_us, "cublas_us": cublas_us, "cusparse_us": cusparse_us,
                "macko_GBps": macko_GBps,
                "cublas_GBps": significant(gb_per_s(rows * cols * element_size + vector_bytes, cublas_us)),
                "roofline_fraction": significant(ratio(macko_GBps, peak_read_GBps)),
                "speedup_cublas": significant(ratio(cublas_us, macko_us)),
                "speedup_cusparse": significant(ratio(cusparse_us, macko_us)),
                "peak_read_GBps": peak_read_GBps, "peak_copy_GBps": peak_copy_GBps,
                "l2_flush": timer.l2_flush,
            }  # fmt: skip
            csv_writer.writerow(row)
            csv_file.flush()  # a run cut short keeps what it measured
            results.append(row)
            progress.update()
        del W, A
    progress.close()
    return results


def method_notes(args, device, timer):
    notes = [
        "Uniformly random unstructured sparsity (each entry kept with probability = density), "
        "random normal values, fixed seeds derived from --seed and the case.",
        "Each MACKO product is checked against a float64 reference before timing "
        f"(|err| <= eps(dtype) * |y| + {ACCUMULATION_TOL:g} * |W| @ |x|); a mismatch aborts the run.",
        f"{args.warmup} warm-up calls per op, then the median of {args.repeats} timed runs.",
        "macko: macko_spmv.multiply(A, x). cublas: torch.mv(W, x) for batch 1, torch.matmul(x, W.T) "
        "otherwise, on the dense matrix with its zeros. cusparse: W.to_sparse_csr() (torch's default "
        "int64 indices) @ x, with a batch passed as contiguous x^T [cols, batch]; NaN where torch "
        "has no CSR matmul for the dtype.",
        "Bytes moved: macko = A.nbytes (values + deltas + row_indices) + x + y; "
        "cublas = dense matrix + x + y. roofline_fraction = macko_GBps / peak_read_GBps; "
        "speedup_* = baseline time / macko time. GB = 1e9 bytes.",
        f"Peak read bandwidth: x.sum() over {describe_bytes(args.bandwidth_bytes)} of fp16; peak copy: "
        "device-to-device copy of the same tensor, read + write bytes; medians, same run.",
    ]
    if device.type == "cuda":
        notes.append(f"Timed with CUDA events around the op only; L2 ({timer.l2_bytes / 2**20:.0f} MiB) "
                     f"flushed before every timed run: {timer.l2_flush}.")  # fmt: skip
    else:
        notes.append("CPU smoke run: timed with time.perf_counter, no cache flush; "
                     "the cublas/cusparse columns are torch's CPU dense and CSR kernels.")  # fmt: skip
    return notes


def describe_bytes(nbytes):
    return f"{nbytes / 2**30:g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:g} MiB"


def equivalent_command(argv):
    return shlex.join(["python", "-m", "macko_spmv", "bench", *argv])


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.plot_only:
        plot(args.plot_only)
        return 0
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    if args.repeats < MIN_REPEATS_BY_METHOD:
        print(f"note: --repeats {args.repeats} is below the {MIN_REPEATS_BY_METHOD} runs the method asks for; "
              "use such numbers for smoke tests only", file=sys.stderr)  # fmt: skip

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device is available; pass --device cpu for a smoke test")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        timer = CudaTimer(device, args.repeats, args.warmup)
    elif device.type == "cpu":
        timer = CpuTimer(args.repeats, args.warmup)
    else:
        raise SystemExit(f"--device must be cuda or cpu, got {args.device!r}")

    env = environment(device)
    out_dir = args.out or os.path.join("benchmarks", "results", f"{slug(env['gpu'])}-{env['date']}")
    os.makedirs(out_dir, exist_ok=True)

    print(f"device: {env['gpu']}; torch {env['torch']}, CUDA {env['cuda']}", file=sys.stderr)
    print(f"L2 flush: {timer.l2_flush}", file=sys.stderr)
    peak_read_GBps, peak_copy_GBps = measure_peak_bandwidth(timer, args.bandwidth_bytes, device, args.seed)
    peak_read_GBps, peak_copy_GBps = significant(peak_read_GBps), significant(peak_copy_GBps)
    print(f"peak bandwidth: read {peak_read_GBps:.1f} GB/s, copy {peak_copy_GBps:.1f} GB/s (read + write)",
          file=sys.stderr)  # fmt: skip

    meta = {
        "gpu": env["gpu"],
        "device": str(device),
        "torch": env["torch"],
        "cuda": env["cuda"],
        "driver": nvidia_driver_version() if device.type == "cuda" else None,
        "macko_spmv": macko_spmv.__version__,
        "macko_spmv_build": macko_spmv.ops.build_info(),
        "python": platform.python_version(),
        "date": env["date"],
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": equivalent_command(argv),
        "process_argv": sys.argv,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "l2_cache_bytes": getattr(timer, "l2_bytes", None),
        "l2_flush": timer.l2_flush,
        "peak_read_GBps": peak_read_GBps,
        "peak_copy_GBps": peak_copy_GBps,
        "bandwidth_bytes": args.bandwidth_bytes,
        "method": method_notes(args, device, timer),
    }
    meta_path = os.path.join(out_dir, "meta.json")
    write_json(meta_path, meta)

    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        results = run_sweep(args, device, timer, env, peak_read_GBps, peak_copy_GBps, writer, csv_file)

    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(meta_path, meta)
    print(format_table(results))
    if not args.no_plot:
        plot(out_dir)
    print(f"results in {out_dir}", file=sys.stderr)
    return 0


def write_json(path, content):
    with open(path, "w") as file:
        json.dump(content, file, indent=2, default=str)
        file.write("\n")


# --------------------------------------------------------------------------
# Reporting: everything below reads the saved CSV, never the live numbers.


def read_results(results_dir):
    """The rows of DIR/results.csv with numeric columns as numbers."""
    integer_columns = {"rows", "cols", "batch", "macko_bytes"}
    text_columns = {"gpu", "torch", "cuda", "date", "shape", "dtype", "l2_flush"}
    rows = []
    with open(os.path.join(results_dir, "results.csv"), newline="") as csv_file:
        for record in csv.DictReader(csv_file):
            row = {}
            for column, text in record.items():
                if column in text_columns:
                    row[column] = text
                elif column in integer_columns:
                    row[column] = int(text)
                else:
                    row[column] = float(text)
            rows.append(row)
    return rows


def read_meta(results_dir):
    path = os.path.join(results_dir, "meta.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


def format_number(value, spec):
    return "n/a" if not math.isfinite(value) else format(value, spec)


TABLE_COLUMNS = (
    # (heading, CSV column, format)
    ("shape", "shape", ""),
    ("dtype", "dtype", ""),
    ("batch", "batch", "d"),
    ("density", "density", "g"),
    ("stored", "stored_fraction", ".3f"),
    ("MACKO us", "macko_us", ".1f"),
    ("cuBLAS us", "cublas_us", ".1f"),
    ("cuSPARSE us", "cusparse_us", ".1f"),
    ("vs cuBLAS", "speedup_cublas", ".2f"),
    ("vs cuSPARSE", "speedup_cusparse", ".2f"),
    ("MACKO GB/s", "macko_GBps", ".0f"),
    ("roofline", "roofline_fraction", ".1%"),
)


def table_cells(row):
    cells = []
    for _, column, spec in TABLE_COLUMNS:
        value = row[column]
        cells.append(value if isinstance(value, str) else format_number(value, spec))
    return cells


def format_table(results):
    """The results as an aligned plain-text table."""
    headings = [heading for heading, _, _ in TABLE_COLUMNS]
    lines = [table_cells(row) for row in results]
    widths = [max(len(cell) for cell in column) for column in zip(headings, *lines)]
    render = lambda cells: "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))  # noqa: E731
    return "\n".join([render(headings), render(["-" * width for width in widths]), *map(render, lines)])


def write_summary(results_dir):
    """DIR/summary.md: the CSV as a markdown table with the command, GPU,
    versions and date that produced it, for pasting into the README."""
    results = read_results(results_dir)
    meta = read_meta(results_dir)
    first = results[0] if results else {}

    def fact(key):  # meta.json where the run wrote one, else the CSV
        return meta.get(key) or first.get(key, "?")

    lines = [f"## SpMV on {fact('gpu')}", ""]
    if meta.get("command"):
        lines.append(f"- Command: `{meta['command']}`")
    driver = f", driver {meta['driver']}" if meta.get("driver") else ""
    version = f", macko-spmv {meta['macko_spmv']}" if meta.get("macko_spmv") else ""
    lines += [
        f"- GPU: {fact('gpu')}{driver}",
        f"- torch {fact('torch')}, CUDA {fact('cuda')}{version}",
        f"- Date: {fact('date')}",
    ]
    if results:
        lines.append(
            f"- Peak read bandwidth measured in the same run: {first['peak_read_GBps']:.0f} GB/s "
            f"(`sum`); copy {first['peak_copy_GBps']:.0f} GB/s (read + write)"
        )
        repeats = f"median of {meta['repeats']} runs" if meta.get("repeats") else "medians"
        lines.append(f"- Times are the {repeats}; L2 flush: {first['l2_flush']}")
    lines.append("")
    headings = [heading for heading, _, _ in TABLE_COLUMNS]
    lines.append("| " + " | ".join(headings) + " |")
    lines.append("| " + " | ".join("---" for _ in headings) + " |")
    for row in results:
        lines.append("| " + " | ".join(table_cells(row)) + " |")
    path = os.path.join(results_dir, "summary.md")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def plot(results_dir):
    """Draws speedup.png, bandwidth.png and (with several batch sizes)
    batch.png from DIR/results.csv, and writes DIR/summary.md. Returns the
    paths written. Without matplotlib only summary.md is written."""
    written = [write_summary(results_dir)]
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install macko-spmv[bench]); skipping the plots", file=sys.stderr)
        return written

    results = read_results(results_dir)
    if not results:
        return written
    shapes = unique(row["shape"] for row in results)
    colors = {shape: f"C{index % 10}" for index, shape in enumerate(shapes)}
    panels = unique((row["dtype"], row["batch"]) for row in results)

    def new_figure(count):
        columns = min(count, 3)
        figure_rows = math.ceil(count / columns)
        figure = Figure(figsize=(6 * columns, 4.5 * figure_rows), layout="constrained")
        FigureCanvasAgg(figure)  # renders to PNG without a display or pyplot's global state
        axes = figure.subplots(figure_rows, columns, squeeze=False).flatten()
        for unused in axes[count:]:
            unused.set_visible(False)
        return figure, axes

    def caption(figure):
        first = results[0]
        set_caption(figure, f"{first['gpu']}, torch {first['torch']}, CUDA {first['cuda']}, {first['date']}; "
                            f"L2 flush: {first['l2_flush']}", fontsize=9)

    def save(figure, name):
        path = os.path.join(results_dir, name)
        figure.savefig(path, dpi=120)
        written.append(path)

    # Speedup over the dense baseline; the dashed lines are over cuSPARSE.
    figure, axes = new_figure(len(panels))
    for axis, (dtype_name, batch) in zip(axes, panels):
        for shape in shapes:
            points = sorted(
                (row["density"], row["speedup_cublas"], row["speedup_cusparse"])
                for row in results
                if row["shape"] == shape and row["dtype"] == dtype_name and row["batch"] == batch
            )
            if not points:
                continue
            densities, over_cublas, over_cusparse = zip(*points)
            axis.plot(densities, over_cublas, "o-", color=colors[shape], label=f"{shape} vs cuBLAS")
            if any(math.isfinite(value) for value in over_cusparse):
                axis.plot(densities, over_cusparse, "s--", color=colors[shape], alpha=0.6,
                          label=f"{shape} vs cuSPARSE")  # fmt: skip
        axis.axhline(1.0, color="black", linewidth=1)
        axis.set_xlabel("density")
        axis.set_ylabel("speedup (baseline time / MACKO time)")
        axis.set_title(f"MACKO speedup, {dtype_name}, batch {batch}")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    caption(figure)
    save(figure, "speedup.png")

    # Effective bandwidth against the peak read bandwidth measured in the run.
    figure, axes = new_figure(len(panels))
    peak_read = results[0]["peak_read_GBps"]
    for axis, (dtype_name, batch) in zip(axes, panels):
        for shape in shapes:
            points = sorted(
                (row["density"], row["macko_GBps"])
                for row in results
                if row["shape"] == shape and row["dtype"] == dtype_name and row["batch"] == batch
            )
            if points:
                axis.plot(*zip(*points), "o-", color=colors[shape], label=shape)
        axis.axhline(peak_read, color="black", linestyle=":", label=f"peak read {peak_read:.0f} GB/s")
        axis.set_ylim(bottom=0)
        axis.set_xlabel("density")
        axis.set_ylabel("MACKO effective bandwidth (GB/s)")
        axis.set_title(f"MACKO bandwidth, {dtype_name}, batch {batch}")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    caption(figure)
    save(figure, "bandwidth.png")

    # Time against batch size: one panel per shape and dtype, one line per
    # density; cuBLAS does not depend on the density, so it is drawn once
    # (the median over the densities measured).
    batches = unique(row["batch"] for row in results)
    if len(batches) > 1:
        shape_panels = unique((row["shape"], row["dtype"]) for row in results)
        densities = sorted(unique(row["density"] for row in results), reverse=True)
        figure, axes = new_figure(len(shape_panels))
        density_colors = matplotlib.colormaps["viridis"]
        for axis, (shape, dtype_name) in zip(axes, shape_panels):
            panel_rows = [row for row in results if row["shape"] == shape and row["dtype"] == dtype_name]
            for index, density in enumerate(densities):
                points = sorted((row["batch"], row["macko_us"]) for row in panel_rows if row["density"] == density)
                if points:
                    color = density_colors(index / max(len(densities) - 1, 1))
                    axis.plot(*zip(*points), "o-", color=color, label=f"MACKO d={density:g}")
            cublas_points = [
                (batch, statistics.median(row["cublas_us"] for row in panel_rows if row["batch"] == batch))
                for batch in sorted(unique(row["batch"] for row in panel_rows))
            ]
            axis.plot(*zip(*cublas_points), "k--", linewidth=2, label="cuBLAS (dense)")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("batch (vectors per call)")
            axis.set_ylabel("time (us, median)")
            axis.set_title(f"{shape}, {dtype_name}")
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7, ncol=2)
        caption(figure)
        save(figure, "batch.png")
    return written


def unique(items):
    """The distinct items in first-seen order."""
    return list(dict.fromkeys(items))


if __name__ == "__main__":
    sys.exit(main())
