"""Random and corrupted inputs through the CPU ops, for AddressSanitizer.

    python scripts/fuzz_cpu_ops.py [--seconds 60] [--seed 0]

scripts/asan_check.sh runs it with the extension built with
-fsanitize=address: any read or write outside an array aborts the process
with ASan's report. Without ASan it still checks what the ops promise:

- compress of random pruned matrices (uniform and with long zero runs,
  NaN, Inf, -0.0) round-trips through decompress, and multiply matches a
  float64 reference;
- the raw ops (multiply, decompress) given arrays that bypass validation
  (row pointers anywhere, decreasing or past the stream; deltas of any
  bits) return outputs of the right shape and never touch memory outside
  the arrays;
- validate raises ValueError or TypeError on them, or accepts them;
- arrays of inconsistent lengths raise ValueError before any kernel runs.

Trials run until --seconds have passed; the last line counts them.
"""

import argparse
import os
import sys
import time

import torch

try:
    import macko_spmv
except ImportError:  # run from a checkout with the extension built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import macko_spmv
from macko_spmv.bench.matrices import check_product, random_pruned, reference_product

ops = torch.ops.macko_spmv
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def random_matrix(gen):
    """A random pruned matrix of a random shape (empty ones included), with
    long zero runs, NaN, Inf and -0.0 now and then."""
    rows, cols = (int(torch.randint(0, high, (), generator=gen)) for high in (60, 700))
    density = float(torch.rand((), generator=gen)) ** 3  # mostly sparse
    dtype = DTYPES[int(torch.randint(0, 3, (), generator=gen))]
    M = random_pruned(rows, cols, density, torch.float32, gen)
    if rows and cols and torch.rand((), generator=gen) < 0.3:
        M[:, int(torch.randint(0, cols, (), generator=gen)) :] = 0  # a long run of zeros to the rows' ends
    if rows and cols and torch.rand((), generator=gen) < 0.2:
        r, c = int(torch.randint(0, rows, (), generator=gen)), int(torch.randint(0, cols, (), generator=gen))
        M[r, c] = (float("nan"), float("inf"), -0.0)[int(torch.randint(0, 3, (), generator=gen))]
    return M.to(dtype)


def random_x(cols, dtype, gen):
    batch = int(torch.randint(0, 11, (), generator=gen))
    x = torch.randn(*((batch,) if batch else ()), 2 * cols, generator=gen).to(dtype)
    return x[..., ::2]  # strided: the ops must take any strides


def check_valid(M, gen):
    A = macko_spmv.compress(M)
    assert torch.equal(torch.isnan(macko_spmv.decompress(A)), torch.isnan(M))
    finite = torch.isfinite(M).all()
    if finite:
        assert torch.equal(macko_spmv.decompress(A), M)
    x = random_x(M.shape[1], M.dtype, gen)
    y = macko_spmv.multiply(A, x)
    if finite:
        y_ref, magnitude = reference_product(M, x)
        check_product(y, y_ref, magnitude, M.dtype, "multiply")
    return A


def corrupted(A, gen):
    """A's values with other row pointers and deltas, of consistent lengths."""
    values, deltas, row_indices, rows, cols = A
    n = values.numel()
    choice = int(torch.randint(0, 5, (), generator=gen))
    if choice == 0:
        pointers = torch.randint(-2 * n - 5, 2 * n + 5, (rows + 1,), generator=gen)
    elif choice == 1:
        pointers = row_indices.long().flip(0)
    elif choice == 2:
        pointers = torch.full((rows + 1,), n + int(torch.randint(0, 100, (), generator=gen)))
    elif choice == 3:
        pointers = torch.cat([torch.zeros(1, dtype=torch.long), torch.full((rows,), n)])
    else:
        pointers = row_indices.long() + int(torch.randint(-9, 10, (), generator=gen))
    pointers = pointers.to(torch.int64 if torch.rand((), generator=gen) < 0.5 else torch.int32)
    bits = int(torch.randint(0, 3, (), generator=gen))
    if bits == 0:
        deltas = torch.randint(0, 256, deltas.shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    elif bits == 1:
        deltas = torch.full_like(deltas, 0xFF)
    return values, deltas, pointers.contiguous(), rows, cols


def check_corrupted(A, gen):
    values, deltas, pointers, rows, cols = corrupted(A, gen)
    x = random_x(cols, values.dtype, gen)
    y = ops.multiply(values, deltas, pointers, rows, cols, x)
    assert y.shape == (*x.shape[:-1], rows)
    assert ops.decompress(values, deltas, pointers, rows, cols).shape == (rows, cols)
    try:
        ops.validate(values, deltas, pointers, rows, cols)
    except (ValueError, TypeError):
        pass


def check_bad_lengths(A, gen):
    values, deltas, row_indices, rows, cols = A
    cut = int(torch.randint(1, 9, (), generator=gen))
    for args in ((values[:-cut] if values.numel() >= cut else values.new_zeros(cut), deltas, row_indices, rows, cols),
                 (values, deltas[:-1] if deltas.numel() else deltas.new_zeros(1), row_indices, rows, cols),
                 (values, deltas, row_indices, rows + cut, cols)):  # fmt: skip
        for op in (lambda: ops.decompress(*args), lambda: ops.multiply(*args, torch.zeros(cols, dtype=values.dtype))):
            try:
                op()
            except ValueError:
                continue
            shapes = [getattr(arg, "shape", arg) for arg in args]
            raise AssertionError(f"arrays of inconsistent lengths were accepted: {shapes}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    trials, deadline = 0, time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        A = check_valid(random_matrix(gen), gen)
        for _ in range(4):
            check_corrupted(A, gen)
        check_bad_lengths(A, gen)
        trials += 1
    print(f"fuzz_cpu_ops: {trials} matrices, {4 * trials} corrupted variants, no failure (seed {args.seed})")


if __name__ == "__main__":
    main()
