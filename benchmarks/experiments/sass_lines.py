"""Executed instructions of a profiled kernel per source line: Nsight
Compute's per-instruction counts (the gpu_check.sh stage `source`, a
gzipped CSV of the SASS page) joined with the line table of a local build
of the same source (`nvdisasm -g` of a cubin), instruction by instruction.

    nvcc <setup.py's flags> -gencode arch=compute_90a,code=sm_90a -cubin -c csrc/cuda/multiply_fp8.cu -o k.cubin
    python benchmarks/experiments/sass_lines.py SASS.csv.gz k.cubin KERNEL_SYMBOL --per 458752 [--top 45]

The local build must compile to the same SASS as the profiled one (same
compiler, flags and architecture: the device builds for sm_90a); the script
checks every instruction's opcode and stops if they differ. --per divides
the counts (e.g. by the warp steps of the run: stored entries / 256) so
that they read as instructions per unit; --column sums another of the
page's per-instruction columns instead, e.g. "Warp Stall Sampling (All
Samples)" for where the warps wait; NVDISASM names the disassembler
(default: nvdisasm on PATH, else triton's copy in the environment).
"""

import argparse
import collections
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys


def nvdisasm_path(given):
    if given:
        return given
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import triton

        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    except ImportError:
        raise SystemExit("no nvdisasm: pass --nvdisasm PATH") from None


def local_lines(cubin, symbol, nvdisasm):
    """{offset: (instruction text, (file, line))} of the kernel in the cubin."""
    text = subprocess.run([nvdisasm, "-g", cubin], capture_output=True, text=True, check=True).stdout
    start = text.find(f".text.{symbol}:")
    if start < 0:
        raise SystemExit(f"{symbol} is not in {cubin}")
    end = text.find(".text.", start + 6)
    source, out = None, {}
    for line in text[start:end if end > 0 else None].splitlines():
        where = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if where:
            source = (os.path.basename(where.group(1)), int(where.group(2)))
            continue
        instruction = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if instruction:
            out[int(instruction.group(1), 16)] = (instruction.group(2).strip(), source)
    return out


def opcode(instruction):
    words = instruction.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sass_csv")
    parser.add_argument("cubin")
    parser.add_argument("symbol")
    parser.add_argument("--per", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--nvdisasm", default=None)
    parser.add_argument("--column", default="Instructions Executed",
                        help="the per-instruction column to sum (default: Instructions Executed)")
    args = parser.parse_args(argv)
    rows = list(csv.reader(gzip.open(args.sass_csv, "rt")))
    # ncu's source page: a line naming the kernel, then the header row.
    header_at = next((i for i, row in enumerate(rows) if "Address" in row and args.column in row), None)
    if header_at is None:
        raise SystemExit(f"{args.sass_csv}: no header row with Address and {args.column}")
    header = rows[header_at]
    at, text, count = (header.index(name) for name in ("Address", "Source", args.column))
    profiled = [(int(r[at], 16), r[text].strip(), int(r[count])) for r in rows[header_at + 1:]
                if len(r) > count and r[count].isdigit()]
    if not profiled:
        raise SystemExit(f"{args.sass_csv}: no instruction rows")
    base = profiled[0][0]
    local = local_lines(args.cubin, args.symbol, nvdisasm_path(args.nvdisasm))
    for address, instruction, _ in profiled:
        mine = local.get(address - base)
        if mine is None or opcode(mine[0]) != opcode(instruction):
            raise SystemExit(f"the builds differ at +{address - base:#x}: profiled {instruction!r}, local {mine}")
    by_line, ops = collections.Counter(), collections.defaultdict(collections.Counter)
    for address, instruction, executed in profiled:
        line = local[address - base][1] or ("?", 0)
        by_line[line] += executed / args.per
        ops[line][opcode(instruction)] += executed / args.per
    print(f"{sum(by_line.values()):.1f} per unit ({args.column}), {len(profiled)} instructions matched")
    for (name, number), value in by_line.most_common(args.top):
        mix = ", ".join(f"{op} {v:.1f}" for op, v in ops[(name, number)].most_common(4))
        print(f"{value:7.1f}  {name}:{number}  ({mix})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
