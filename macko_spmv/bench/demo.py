"""`python -m macko_spmv demo`: the library at work on a random pruned matrix.

Compresses a random matrix at a few densities, checks the product against
float64 dense math, prints the memory before and after and, on a GPU, the
time of `multiply` against `torch.mv` on the dense matrix (L2 flushed before
each call).
"""

import argparse

import torch

from ..matrix import compress, multiply
from .matrices import (ResultMismatchError, check_product, random_pruned, random_vectors, reference_product,
                       seeded_generator)
from .timing import FlushedCudaTimer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m macko_spmv demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None,
                        help="matrix is size x size (default 4096 on GPU, 1024 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--densities", default="0.5,0.2,0.1")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    size = args.size or (4096 if on_gpu else 1024)
    generator = seeded_generator(0, device)
    timer = FlushedCudaTimer(device, repeats=50, warmup=3) if on_gpu else None
    print(f"macko-spmv demo: {size}x{size} {str(dtype).split('.')[-1]} on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if on_gpu else ""))
    header = f"{'density':>8} {'dense MB':>9} {'MACKO MB':>9} {'saved':>6} {'rel. error':>11}"
    if on_gpu:
        header += f" {'torch.mv us':>12} {'MACKO us':>9} {'speedup':>8}"
    print(header)
    ok = True
    for density in (float(d) for d in args.densities.split(",")):
        dense = random_pruned(size, size, density, dtype, generator)
        x = random_vectors(None, size, dtype, generator)
        A = compress(dense)
        y = multiply(A, x)
        reference, magnitude = reference_product(dense, x)
        try:
            check_product(y, reference, magnitude, dtype, f"density {density}")
        except ResultMismatchError as error:
            print(error)
            ok = False
        error = float((y.double() - reference).norm() / reference.norm())
        dense_mb = dense.numel() * dense.element_size() / 1e6
        line = (f"{density:>8.2f} {dense_mb:>9.1f} {A.nbytes / 1e6:>9.1f} "
                f"{1 - A.nbytes / 1e6 / dense_mb:>6.0%} {error:>11.2e}")
        if on_gpu:
            dense_us = timer.median_us(lambda: torch.mv(dense, x))
            macko_us = timer.median_us(lambda: multiply(A, x))
            line += f" {dense_us:>12.1f} {macko_us:>9.1f} {dense_us / macko_us:>7.2f}x"
        print(line)
    if on_gpu:
        print("(times: medians of 50 runs, L2 flushed before each; `python -m macko_spmv bench` measures "
              "every baseline, both timings and the roofline)")
    print("all products match float64 dense math" if ok else "ERROR: a product does not match")
    return 0 if ok else 1
