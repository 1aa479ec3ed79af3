"""Runs `multiply` once per case for a profiler (Nsight Compute) to inspect.

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
        -k regex:multiply_kernel python benchmarks/profile_multiply.py 8192x8192:0.5 8192x8192:0.1

Each argument is ROWSxCOLS:DENSITY[:BATCH]; fp16 unless --dtype says otherwise.
"""

import argparse

import torch

import macko_spmv


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--dtype", default="float16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for case in args.cases:
        shape, density, *batch = case.split(":")
        rows, cols = (int(v) for v in shape.split("x"))
        dense = torch.randn(rows, cols, generator=gen, device="cuda")
        dense *= torch.rand(rows, cols, generator=gen, device="cuda") < float(density)
        A = macko_spmv.compress(dense.to(dtype))
        x = torch.randn(*([int(batch[0])] if batch else []), cols, generator=gen, device="cuda").to(dtype)
        macko_spmv.multiply(A, x)
        torch.cuda.synchronize()
        print(f"{case}: {A}")


if __name__ == "__main__":
    main()
