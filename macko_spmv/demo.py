"""`python -m macko_spmv demo`: the library at work on a random pruned matrix.

Compresses a random matrix at a few densities, checks the product against
float64 dense math, prints the memory before and after and, on a GPU, the
time of `multiply` against `torch.mv` on the dense matrix.
"""

import argparse

import torch

from .matrix import compress, multiply


def _median_us(fn, repeats=50):
    """Median of CUDA-event timings of fn() in microseconds (after warm-up)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1000)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m macko_spmv demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="matrix is size x size (default 4096 on GPU, 1024 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--densities", default="0.5,0.2,0.1")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    size = args.size or (4096 if on_gpu else 1024)
    gen = torch.Generator().manual_seed(0)
    print(f"macko-spmv demo: {size}x{size} {str(dtype).split('.')[-1]} on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if on_gpu else ""))
    header = f"{'density':>8} {'dense MB':>9} {'MACKO MB':>9} {'saved':>6} {'rel. error':>11}"
    if on_gpu:
        header += f" {'torch.mv us':>12} {'MACKO us':>9} {'speedup':>8}"
    print(header)
    ok = True
    for density in (float(d) for d in args.densities.split(",")):
        dense = torch.randn(size, size, generator=gen)
        dense *= torch.rand(size, size, generator=gen) < density
        dense = dense.to(dtype=dtype, device=device)
        x = torch.randn(size, generator=gen).to(dtype=dtype, device=device)
        A = compress(dense)
        y = multiply(A, x)
        reference = dense.double() @ x.double()
        error = float((y.double() - reference).norm() / reference.norm())
        tolerance = 1e-2 if dtype != torch.float32 else 1e-5
        ok &= error < tolerance
        dense_mb = dense.numel() * dense.element_size() / 1e6
        line = (f"{density:>8.2f} {dense_mb:>9.1f} {A.nbytes / 1e6:>9.1f} "
                f"{1 - A.nbytes / 1e6 / dense_mb:>6.0%} {error:>11.2e}")
        if on_gpu:
            dense_us = _median_us(lambda: torch.mv(dense, x))
            macko_us = _median_us(lambda: multiply(A, x))
            line += f" {dense_us:>12.1f} {macko_us:>9.1f} {dense_us / macko_us:>7.2f}x"
        print(line)
    if on_gpu:
        print("(times: medians of 50 runs with the matrix possibly in L2; "
              "`python -m macko_spmv bench` measures properly)")
    print("all products match float64 dense math" if ok else "ERROR: a product does not match")
    return 0 if ok else 1
