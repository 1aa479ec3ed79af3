"""Compression speed: ``python benchmarks/compress.py [options]``.

CPU: torch.ops.macko_spmv.compress on a random pruned 8192x8192 fp16 matrix
(densities 0.5 and 0.1 by default) at 1 and 2 threads (torch.set_num_threads),
for each kernel variant this CPU runs (baseline, AVX2, AVX-512: the
MACKO_CPU_KERNELS cap, as torch.ops.macko_spmv._cpu_kernels reports it),
against the naive encoder (torch.ops.macko_spmv._compress_reference: a plain
single-threaded loop over the elements that appends each entry to
std::vectors, as the original tool encodes; development builds only, see
setup.py's MACKO_DEV_OPS). Every variant's output is checked byte for byte
against the naive encoder's before it is timed. Times are wall-clock medians
(macko_spmv.bench.timing.CpuTimer, after one warm-up call) and include
allocating the outputs.
A copy-bandwidth probe at each thread count (read + write bytes of a 256 MiB
tensor copy) shows how far memory bandwidth scales with threads.

GPU (when a CUDA device is visible and the extension has GPU kernels):
compress of the same matrices on the GPU, timed with CUDA events, L2
flushed before each run (macko_spmv.bench.timing.FlushedCudaTimer; median
after warm-up; the op synchronises once to size its outputs), and compressing
every linear layer of a Llama-2-7B-sized model (32 layers x {4096x4096 x 4,
11008x4096 x 2, 4096x11008}, random fp16 weights pruned to 50%) through the
Python API, wall-clock including Python overhead. Weights are generated one
layer at a time (their generation is not counted); the compressed layers are
kept, as a model would keep them.

Writes results.csv, meta.json (machine, versions, date, command) and
table.txt (the printed table) to --out (default
benchmarks/results/compress-<cpu|gpu>-<date>/).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

try:
    import macko_spmv
except ImportError:
    # Run from a checkout with the extension built in place (not installed).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import macko_spmv
from macko_spmv.bench.matrices import random_pruned, seeded_generator
from macko_spmv.bench.records import cpu_name
from macko_spmv.bench.timing import CpuTimer, FlushedCudaTimer, wall_clock

CSV_COLUMNS = [
    "section", "device", "impl", "kernels", "threads", "shape", "dtype", "density",
    "stored_fraction", "runs", "median_ms", "min_ms", "max_ms", "speedup_vs_naive",
    "speedup_vs_1_thread", "GBps", "note",
]  # fmt: skip

LLAMA_7B_LAYER = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]

KERNEL_VARIANTS = ("baseline", "avx2", "avx512")


def available_kernels():
    """The CPU kernel variants this machine runs: those that the library,
    capped at each in turn (MACKO_CPU_KERNELS), says it runs."""
    saved = os.environ.get("MACKO_CPU_KERNELS")
    try:
        runs = []
        for variant in KERNEL_VARIANTS:
            os.environ["MACKO_CPU_KERNELS"] = variant
            if torch.ops.macko_spmv._cpu_kernels() == variant:
                runs.append(variant)
        return runs
    finally:
        if saved is None:
            os.environ.pop("MACKO_CPU_KERNELS", None)
        else:
            os.environ["MACKO_CPU_KERNELS"] = saved


def memory_gib():
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def transparent_huge_pages():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().strip()
    except OSError:
        return None


def random_matrix(rows, cols, density, dtype, device, seed):
    return random_pruned(rows, cols, density, dtype, seeded_generator(seed, device))


def wall_times_ms(op, runs, warmup=1):
    return [us / 1e3 for us in CpuTimer(runs, warmup).times_us(op)]


def cuda_times_ms(op, runs, warmup=3):
    return [us / 1e3 for us in FlushedCudaTimer(torch.cuda.current_device(), runs, warmup).times_us(op)]


def same_bytes(a, b):
    views = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}
    for x, y in zip(a, b):
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        x, y = x.cpu(), y.cpu()
        if x.dtype in views:
            x, y = x.view(views[x.dtype]), y.view(views[y.dtype])
        if not torch.equal(x, y):
            return False
    return True


def row(section, device, impl, shape, times, **extra):
    record = {c: "" for c in CSV_COLUMNS}
    record.update(section=section, device=device, impl=impl, shape=shape, runs=len(times),
                  median_ms=round(statistics.median(times), 3), min_ms=round(min(times), 3),
                  max_ms=round(max(times), 3))  # fmt: skip
    record.update(extra)
    return record


def cpu_section(args, kernels, writer, results):
    rows, cols = args.shape
    dtype = torch.float16
    shape = f"{rows}x{cols}"
    saved_threads = torch.get_num_threads()
    saved_cap = os.environ.get("MACKO_CPU_KERNELS")
    try:
        # Memory bandwidth at each thread count: a copy reads and writes.
        src = torch.empty(128 * 2**20, dtype=torch.int16).fill_(1)
        dst = torch.empty_like(src)
        for threads in args.threads:
            torch.set_num_threads(threads)
            times = wall_times_ms(lambda: dst.copy_(src), args.repeats)
            gbps = 2 * src.numel() * 2 / (statistics.median(times) * 1e-3) / 1e9
            record = row("cpu", "cpu", "copy-bandwidth-probe", "256 MiB", times, threads=threads,
                         GBps=round(gbps, 2), note="tensor copy, read + write bytes")  # fmt: skip
            writer(record)
            results.append(record)
        del src, dst

        for density in args.densities:
            M = random_matrix(rows, cols, density, dtype, "cpu", args.seed)
            dense_bytes = M.numel() * M.element_size()
            torch.set_num_threads(1)
            expected = torch.ops.macko_spmv._compress_reference(M)
            stored_fraction = round(int(expected[2][-1]) / M.numel(), 4)
            naive = wall_times_ms(lambda: torch.ops.macko_spmv._compress_reference(M), args.naive_repeats)
            naive_ms = statistics.median(naive)
            common = dict(dtype="float16", density=density, stored_fraction=stored_fraction)
            record = row("cpu", "cpu", "naive", shape, naive, threads=1,
                         GBps=round(dense_bytes / (naive_ms * 1e-3) / 1e9, 2), speedup_vs_naive=1.0,
                         note="_compress_reference: one thread, std::vector push_back per entry", **common)  # fmt: skip
            writer(record)
            results.append(record)
            for variant in kernels:
                os.environ["MACKO_CPU_KERNELS"] = variant
                one_thread_ms = None
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    if not same_bytes(torch.ops.macko_spmv.compress(M), expected):
                        raise SystemExit(f"compress ({variant}, {threads} threads) differs from the naive encoder")
                    times = wall_times_ms(lambda: torch.ops.macko_spmv.compress(M), args.repeats)
                    median = statistics.median(times)
                    if threads == 1:
                        one_thread_ms = median
                    record = row("cpu", "cpu", "macko", shape, times, kernels=variant, threads=threads,
                                 speedup_vs_naive=round(naive_ms / median, 2),
                                 speedup_vs_1_thread=round(one_thread_ms / median, 2) if one_thread_ms else "",
                                 GBps=round(dense_bytes / (median * 1e-3) / 1e9, 2), **common)  # fmt: skip
                    writer(record)
                    results.append(record)
            del M, expected
    finally:
        torch.set_num_threads(saved_threads)
        if saved_cap is None:
            os.environ.pop("MACKO_CPU_KERNELS", None)
        else:
            os.environ["MACKO_CPU_KERNELS"] = saved_cap


def gpu_section(args, writer, results):
    device = torch.device("cuda", torch.cuda.current_device())
    rows, cols = args.shape
    shape = f"{rows}x{cols}"
    for density in args.densities:
        M = random_matrix(rows, cols, density, torch.float16, device, args.seed)
        A = torch.ops.macko_spmv.compress(M)
        if not same_bytes(A, torch.ops.macko_spmv.compress(M.cpu())):
            raise SystemExit("GPU compress differs from CPU compress")
        times = cuda_times_ms(lambda: torch.ops.macko_spmv.compress(M), args.gpu_repeats)
        median = statistics.median(times)
        record = row("gpu", torch.cuda.get_device_name(device), "macko", shape, times, dtype="float16",
                     density=density, stored_fraction=round(int(A[2][-1]) / M.numel(), 4),
                     GBps=round(M.numel() * 2 / (median * 1e-3) / 1e9, 1),
                     note="CUDA events; target <= 0.5 ms")  # fmt: skip
        writer(record)
        results.append(record)
        del M, A

    # A Llama-2-7B-sized model, compressed layer by layer through the Python API.
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    gen = seeded_generator(args.seed, device)
    compressed, compress_s = [], 0.0
    wall_start = time.perf_counter()
    for _ in range(args.llama_layers):
        weights = [random_pruned(r, c, 0.5, torch.float16, gen) for r, c in LLAMA_7B_LAYER]
        compressed_layer, seconds = wall_clock(device, lambda: [macko_spmv.compress(W) for W in weights])
        compressed += compressed_layer
        compress_s += seconds
        del weights
    wall_s = time.perf_counter() - wall_start
    elements = args.llama_layers * sum(r * c for r, c in LLAMA_7B_LAYER)
    stored_bytes = sum(A.nbytes for A in compressed)
    record = row("gpu-llama-2-7b", torch.cuda.get_device_name(device), "macko.compress (Python API)",
                 f"{args.llama_layers} layers x (4x4096x4096, 2x11008x4096, 4096x11008)", [1e3 * compress_s],
                 dtype="float16", density=0.5, stored_fraction=round(sum(A.stored_entries for A in compressed) / elements, 4),
                 GBps=round(elements * 2 / compress_s / 1e9, 1),
                 note=(f"total compress time of {len(compressed)} matrices incl. Python overhead (target < 10 s); "
                       f"wall incl. weight generation {wall_s:.2f} s; compressed {stored_bytes / 2**30:.2f} GiB; "
                       f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"))  # fmt: skip
    writer(record)
    results.append(record)
    del compressed


def format_table(results):
    header = ["section", "impl", "kernels", "thr", "density", "median ms", "min ms", "vs naive", "vs 1 thr", "GB/s"]
    lines = [header]
    for r in results:
        lines.append([r["section"], r["impl"], r["kernels"], str(r["threads"]), str(r["density"]),
                      f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", str(r["speedup_vs_naive"]),
                      str(r["speedup_vs_1_thread"]), str(r["GBps"])])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/compress-<cpu|gpu>-<date>)")
    parser.add_argument("--shape", default="8192x8192", help="ROWSxCOLS of the single-matrix cases")
    parser.add_argument("--densities", default="0.5,0.1")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts (torch.set_num_threads)")
    parser.add_argument("--kernels", default="all", help="CPU kernel variants: all (those this CPU runs) or a list")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per CPU case")
    parser.add_argument("--naive-repeats", type=int, default=3, help="timed runs of the naive encoder")
    parser.add_argument("--gpu-repeats", type=int, default=50, help="timed runs per GPU case")
    parser.add_argument("--llama-layers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU section")
    args = parser.parse_args(argv)
    args.shape = tuple(int(p) for p in args.shape.lower().split("x"))
    args.densities = [float(d) for d in args.densities.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.threads[0] != 1:
        args.threads = [1] + [t for t in args.threads if t != 1]  # speedups are relative to 1 thread
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.no_cpu and not hasattr(torch.ops.macko_spmv, "_compress_reference"):
        raise SystemExit("the CPU section compares against torch.ops.macko_spmv._compress_reference, which only "
                         "development builds have: build with MACKO_DEV_OPS=1 (or in place), or pass --no-cpu")
    supported = available_kernels()
    kernels = supported if args.kernels == "all" else [k for k in args.kernels.split(",") if k in supported]
    build = macko_spmv.ops.build_info()
    gpu = (not args.no_gpu and torch.cuda.is_available() and build["cuda"] is not None)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    out_dir = args.out or os.path.join("benchmarks", "results", f"compress-{'gpu' if gpu else 'cpu'}-{date}")
    os.makedirs(out_dir, exist_ok=True)
    meta = {
        "what": "compress speed (benchmarks/compress.py)",
        "command": shlex.join(["python", "benchmarks/compress.py", *argv]),
        "date": date,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "transparent_huge_pages": transparent_huge_pages(),
        "cpu_kernels_available": supported,
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "macko_spmv_build": build,
        "args": {k: v for k, v in vars(args).items()},
    }
    meta_path = os.path.join(out_dir, "meta.json")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    results = []
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as csv_file:
        csv_writer = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS)
        csv_writer.writeheader()

        def write(record):
            csv_writer.writerow(record)
            csv_file.flush()  # a run cut short keeps what it measured

        if not args.no_cpu:
            cpu_section(args, kernels, write, results)
        if gpu:
            gpu_section(args, write, results)
        elif not args.no_gpu:
            print("no GPU section: no CUDA device, or the extension has no GPU kernels", file=sys.stderr)

    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    table = format_table(results)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"results in {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
