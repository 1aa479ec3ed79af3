"""Bandwidth of the CUDA decompress kernel (MACKO -> dense), against the
copy bandwidth measured in the same run.

    python benchmarks/experiments/decompress_bandwidth.py [--shapes 8192x8192,...] [--densities 0.5,0.1]

Bytes moved = the compressed arrays read + the dense matrix written; the
ratio is against a device-to-device copy (bytes read + written) timed with
the same method (L2 flushed before every run, medians).
"""

import argparse
import sys

import torch

import macko_spmv
from macko_spmv.bench import matrices, spmv, tables, timing


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=spmv.parse_shapes, default=[(4096, 4096), (11008, 4096), (8192, 8192), (28672, 8192)])
    parser.add_argument("--densities", type=spmv.parse_densities, default=[1.0, 0.5, 0.1])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    timer = timing.FlushedCudaTimer(device, args.repeats, 5)
    read_GBps, copy_GBps = spmv.measure_peak_bandwidth(timer, 1 << 30, device, 0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; peak read {read_GBps:.0f} GB/s, copy {copy_GBps:.0f} GB/s")
    print("shape,density,dtype,decompress_us,bytes,GBps,fraction_of_copy")
    for rows, cols in args.shapes:
        for density in args.densities:
            W = matrices.random_pruned(rows, cols, density, torch.float16, matrices.seeded_generator(1, device))
            A = macko_spmv.compress(W)
            assert torch.equal(macko_spmv.decompress(A), W)
            us = timer.median_us(lambda: macko_spmv.decompress(A))
            moved = A.nbytes + W.numel() * W.element_size()
            rate = tables.gb_per_s(moved, us)
            print(f"{rows}x{cols},{density},float16,{us:.1f},{moved},{rate:.0f},{rate / copy_GBps:.3f}")
            del W, A
    return 0


if __name__ == "__main__":
    sys.exit(main())
