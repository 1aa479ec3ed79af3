"""Diagnostic experiments on the multiply kernel (benchmarks/NOTES.md, steps v8-v12).

They need the kernel built with benchmarks/experiments/instrumentation.patch,
which adds two switches read at every launch:

  MACKO_EXPERIMENT     1: gathers from lane-distinct columns (no bank conflicts;
                          wrong results, timing only); 4: no tensor-core math;
                          16: x not staged; (n << 8): refill the ring to n chunks
                          past a stage's first instead of the default.
  MACKO_TIMELINE_PTR   address of an int64 buffer of 8 words a warp: kernel start,
                          first stage ready, end (%globaltimer, ns), then cycles
                          waiting, decoding + scanning, gathering + multiplying, stages.

On a GPU machine:

    git apply benchmarks/experiments/instrumentation.patch
    TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation --no-deps -e .
    python benchmarks/experiments/ring_experiments.py scaling   # time vs rows, switches 1 and 4
    python benchmarks/experiments/ring_experiments.py fixed     # back-to-back calls, empty matrix, lookahead
    python benchmarks/experiments/ring_experiments.py timeline  # per-warp start / first data / end
    git apply -R benchmarks/experiments/instrumentation.patch

Each prints one JSON line per case. Times are medians with the benchmark's
timer (L2 flushed before every run); the switches that break results are
never used to check correctness.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import macko_spmv  # noqa: E402
from macko_spmv.bench import CudaTimer, random_sparse_matrix  # noqa: E402

COLS = 8192


def timed(timer, op, experiment=0):
    """Median us of op with MACKO_EXPERIMENT set to `experiment`."""
    os.environ["MACKO_EXPERIMENT"] = str(experiment)
    try:
        return round(timer.median_us(op), 2)
    finally:
        os.environ["MACKO_EXPERIMENT"] = "0"


def case(rows, cols, density, seed=1):
    """(dense W, MackoMatrix, x) in fp16 on the GPU."""
    W = random_sparse_matrix(rows, cols, density, torch.float16, "cuda", seed)
    x = torch.randn(cols, device="cuda", dtype=torch.float16)
    return W, macko_spmv.compress(W), x


def scaling(timer):
    """Time against the number of rows (8192 columns): the slope is the
    streaming rate, the intercept the fixed cost of a call."""
    for density in (0.5, 0.1):
        for rows in (1024, 2048, 4096, 8192, 16384, 32768):
            W, A, x = case(rows, COLS, density)
            Z = macko_spmv.compress(torch.zeros(rows, COLS, dtype=torch.float16, device="cuda"))
            result = {"rows": rows, "density": density, "MB": round(A.nbytes / 1e6, 2)}
            for experiment in (0, 1, 4, 5):
                result[f"e{experiment}"] = timed(timer, lambda: macko_spmv.multiply(A, x), experiment)
            result["cublas"] = timed(timer, lambda: torch.mv(W, x))
            result["empty"] = timed(timer, lambda: macko_spmv.multiply(Z, x))
            print(json.dumps(result), flush=True)


def fixed(timer):
    """Two calls back to back (no flush between them), an empty matrix,
    x not staged, and ring lookaheads of 3 to 6 chunks."""
    multiply = macko_spmv.multiply
    for rows, cols, density in [(8192, 8192, 0.5), (8192, 8192, 0.1), (28672, 8192, 0.5), (4096, 4096, 0.5)]:
        W1, A1, x = case(rows, cols, density, seed=1)
        W2, A2, _ = case(rows, cols, density, seed=2)
        Z = macko_spmv.compress(torch.zeros(rows, cols, dtype=torch.float16, device="cuda"))
        result = {"case": f"{rows}x{cols} d={density}", "MB": round(A1.nbytes / 1e6, 1)}
        result["one"] = timed(timer, lambda: multiply(A1, x))
        result["two"] = timed(timer, lambda: (multiply(A1, x), multiply(A2, x)))
        result["empty"] = timed(timer, lambda: multiply(Z, x))
        result["empty2"] = timed(timer, lambda: (multiply(Z, x), multiply(Z, x)))
        result["mv"] = timed(timer, lambda: torch.mv(W1, x))
        result["mv2"] = timed(timer, lambda: (torch.mv(W1, x), torch.mv(W2, x)))
        result["no_x_staging"] = timed(timer, lambda: multiply(A1, x), 16)
        for ahead in (3, 4, 5, 6):
            result[f"ahead{ahead}"] = timed(timer, lambda: multiply(A1, x), ahead << 8)
        print(json.dumps(result), flush=True)


def percentiles(values, quantiles=(0, 0.1, 0.5, 0.9, 1.0)):
    ordered = sorted(values)
    return [round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))], 2) for q in quantiles]


def timeline(timer):
    """Per warp: when it starts, when its first stage's data is there, when
    it ends (us after the earliest start), and cycles per stage spent
    waiting, decoding + scanning, gathering + multiplying."""
    for rows, cols, density in [(8192, 8192, 0.5), (1024, 8192, 0.5), (256, 8192, 0.5), (8192, 8192, 0.1),
                                (28672, 8192, 0.5)]:
        _, A, x = case(rows, cols, density)
        median = timed(timer, lambda: macko_spmv.multiply(A, x))
        buffer = torch.zeros(4224 * 8 * 4, dtype=torch.int64, device="cuda")
        os.environ["MACKO_TIMELINE_PTR"] = str(buffer.data_ptr())
        try:
            for _ in range(3):  # the last run's record is kept, after a cache flush like the timed runs'
                timer.flush_buffer.zero_()
                timer.clean_buffer.sum()
                torch.cuda.synchronize()
                macko_spmv.multiply(A, x)
                torch.cuda.synchronize()
        finally:
            del os.environ["MACKO_TIMELINE_PTR"]
        record = buffer.view(-1, 8).cpu()
        record = record[record[:, 0] > 0].double()
        t0 = record[:, 0].min()
        stages = record[:, 7].clamp(min=1)
        print(json.dumps({
            "case": f"{rows}x{cols} d={density}", "median_us": median, "warps": len(record),
            "start_us": percentiles(((record[:, 0] - t0) / 1e3).tolist()),
            "first_data_us": percentiles(((record[record[:, 1] > 0, 1] - t0) / 1e3).tolist()),
            "end_us": percentiles(((record[:, 2] - t0) / 1e3).tolist()),
            "stages_per_warp": percentiles(record[:, 7].tolist()),
            "wait_cycles_per_stage": percentiles((record[:, 4] / stages).tolist()),
            "decode_cycles_per_stage": percentiles((record[:, 5] / stages).tolist()),
            "dot_cycles_per_stage": percentiles((record[:, 6] / stages).tolist()),
        }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["scaling", "fixed", "timeline"])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    timer = CudaTimer("cuda", repeats=args.repeats, warmup=3)
    {"scaling": scaling, "fixed": fixed, "timeline": timeline}[args.experiment](timer)


if __name__ == "__main__":
    main()
