"""Where the streaming kernel's time goes, one vector, fp16: the product
against the same walk cut short, in one run with cuBLAS beside it; with
--route tiles, the tile kernel's at --batch right-hand sides instead.

    python benchmarks/experiments/stream_ablation.py [--shapes 8192x8192,...] [--densities 0.5,0.1]
        [--values same,int8,float8_e4m3fn] [--route stream|tiles] [--batch 8] [--out FILE.csv]

Variants (MACKO_STREAM_VARIANT, read at launch, csrc/cuda/multiply.cuh):
"product" (the library's kernel), "decode" (each stage's ring loads, the
decode of the gaps and the warp scan, but no gathers of x and no mma) and
"ring" (the ring loads only); with 8-bit values (--values int8 or
float8_e4m3fn, x fp16) also "sums" (each group converted exactly, each
row's fp32 sum times its scale, instead of every entry rounded to q *
scale). Tile kernel variants (MACKO_TILE_VARIANT, read at launch,
csrc/cuda/multiply_tiles.cuh; NOTES v15i): "product", "no-mma" (the
consumers only wait for each slot and give it back), "no-stores" (the
producers hand slots over but store no entry) and "walk" (the producers
only walk their rows; no consumers). The cut variants' outputs are not the
library's products, so nothing is checked against float64 here; the
product is checked once per case, against decompress's matrix. Timings as
in ``python -m macko_spmv bench``: L2 flushed before each call, and back
to back in a CUDA graph (time per call), medians.
"""

import argparse
import csv
import sys

import torch

import macko_spmv
from macko_spmv.bench import matrices, spmv, timing

VARIANTS = ("product", "decode", "ring")
QUANTIZED_VARIANTS = ("product", "sums", "decode", "ring")
TILE_VARIANTS = ("product", "no-mma", "no-stores", "walk")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=spmv.parse_shapes,
                        default=[(4096, 4096), (11008, 4096), (8192, 8192), (28672, 8192)])
    parser.add_argument("--densities", type=spmv.parse_densities, default=[1.0, 0.5, 0.1])
    parser.add_argument("--values", type=spmv.parse_values, default=["same"])
    parser.add_argument("--route", choices=("stream", "tiles"), default="stream")
    parser.add_argument("--batch", type=int, default=8, help="right-hand sides with --route tiles (3-64)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    flushed = timing.FlushedCudaTimer(device, args.repeats, 5)
    graph = timing.BackToBackTimer(device)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, macko_spmv {macko_spmv.__version__}")
    tiles = args.route == "tiles"
    batch = args.batch if tiles else None
    variable = "MACKO_TILE_VARIANT" if tiles else "MACKO_STREAM_VARIANT"
    fields = ["shape", "density", "values", "batch", "variant", "flushed_us", "graph_us", "cublas_flushed_us", "cublas_graph_us"]
    rows = []
    print(",".join(fields))
    for n_rows, n_cols in args.shapes:
        for density in args.densities:
            gen = matrices.seeded_generator(1, device)
            W = matrices.random_pruned(n_rows, n_cols, density, torch.float16, gen)
            x = matrices.random_vectors(batch, n_cols, torch.float16, gen)
            cublas_f = flushed.median_us(spmv.dense_call(W, x))
            cublas_g = graph.measure(lambda: spmv.dense_call(W.clone(), x), W.numel() * W.element_size()).us_per_call
            for values in args.values:
                A = macko_spmv.compress(W, value_dtype=spmv.VALUE_DTYPES[values])
                W_stored = macko_spmv.decompress(A)
                reference = matrices.reference_product(W_stored.cpu(), x.cpu())
                variants = TILE_VARIANTS if tiles else VARIANTS if A.scales is None else QUANTIZED_VARIANTS
                for variant in variants:
                    with spmv.environment_variable(variable, variant), \
                            spmv.environment_variable("MACKO_MULTIPLY_ROUTE", args.route):
                        if variant == "product":
                            matrices.check_product(macko_spmv.multiply(A, x).cpu(), *reference, torch.float16,
                                                   f"multiply ({variant})")
                        f_us = flushed.median_us(spmv.macko_call(A, x))
                        g_us = graph.measure(lambda: spmv.macko_call(spmv.macko_copy(A), x), A.nbytes).us_per_call
                    row = dict(shape=f"{n_rows}x{n_cols}", density=density, values=values, batch=batch or 1,
                               variant=variant,
                               flushed_us=f"{f_us:.1f}", graph_us=f"{g_us:.1f}", cublas_flushed_us=f"{cublas_f:.1f}",
                               cublas_graph_us=f"{cublas_g:.1f}")
                    rows.append(row)
                    print(",".join(str(row[k]) for k in fields), flush=True)
                del A, W_stored
            del W, x
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
