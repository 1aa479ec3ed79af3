"""Runs `multiply` once per case for a profiler (Nsight Compute) to inspect.

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
        -k regex:multiply_kernel python benchmarks/profile_multiply.py 8192x8192:0.5 8192x8192:0.1

Each argument is ROWSxCOLS:DENSITY[:BATCH[:ROUTE[:VALUES]]]; fp16 unless
--dtype says otherwise; a case's ROUTE, else ``--route NAME``, runs its
call with MACKO_MULTIPLY_ROUTE=NAME, as the benchmark does; VALUES (same,
int8 or float8_e4m3fn, as the benchmark's --values) is the stored values'
type, default same. Empty fields take their defaults:
28672x8192:0.5:::int8.
"""

import argparse

import torch

import macko_spmv
from macko_spmv.bench.matrices import random_pruned, random_vectors, seeded_generator
from macko_spmv.bench.spmv import KNOWN_ROUTES, VALUE_DTYPES, multiply_route


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--route", default="auto", help=f"multiply route: {', '.join(KNOWN_ROUTES)} (default auto)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = seeded_generator(0, "cuda")
    for case in args.cases:
        shape, density, *rest = case.split(":")
        batch = int(rest[0]) if rest and rest[0] else None
        route = rest[1] if len(rest) > 1 and rest[1] else args.route
        values = rest[2] if len(rest) > 2 and rest[2] else "same"
        rows, cols = (int(v) for v in shape.split("x"))
        A = macko_spmv.compress(random_pruned(rows, cols, float(density), dtype, gen), value_dtype=VALUE_DTYPES[values])
        x = random_vectors(batch, cols, dtype, gen)
        with multiply_route(route):
            macko_spmv.multiply(A, x)
        torch.cuda.synchronize()
        print(f"{case}: {A}")


if __name__ == "__main__":
    main()
