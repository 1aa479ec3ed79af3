"""A Python model of the lane kernel's index arithmetic (csrc/cuda/multiply_lanes.cuh):
the panel-start scan, the walk of a row's groups across segments and the tile
stores, with the kernel's 32-bit column arithmetic. It checks the algorithm,
not the CUDA code: every nonzero of random and adversarial matrices must land
exactly once at its column, for several panel counts. It found one bug before
the kernel first ran (the previous row's entries in a row's first group were
never counted as done, so the walk stalled there).

    python benchmarks/experiments/lanes_model.py
"""
import numpy as np, torch, sys
import macko_spmv
from macko_spmv.bench.matrices import random_pruned, seeded_generator

M32 = 0xFFFFFFFF
SEG = 64

def nib(deltas, e):  # delta of entry e
    b = int(deltas[e // 2]); return (b >> 4) if e & 1 else (b & 15)

def group_word(deltas, g):  # 8 nibbles of group g as u32
    return int(deltas[g//2]) | int(deltas[g//2+1]) << 8 | int(deltas[g//2+2]) << 16 | int(deltas[g//2+3]) << 24

def offsets(word):  # column offsets (cumulative steps) of the 8 entries
    out=[]; acc=0
    for j in range(8):
        acc += ((word >> (4*j)) & 15) + 1; out.append(acc)
    return out

def chunk_steps(deltas, c, clear):  # steps of 32 entries from entry c, first `clear` nibbles cleared
    s=0
    for j in range(32):
        d = 0 if j < clear else nib(deltas, c+j)
        s += d + 1
    return s

def run(values, deltas, ri, rows, cols, panels):
    n_entries = len(values)
    segments = (cols + SEG - 1) // SEG
    dense = np.zeros((rows, cols), dtype=np.float64); hits = np.zeros((rows, cols), dtype=np.int64)
    for row in range(rows):
        b = min(max(int(ri[row]),0),n_entries); e = min(max(int(ri[row+1]), b), n_entries)
        for w in range(panels):
            fs = segments*w//panels; es = segments*(w+1)//panels
            panel_lo = fs*SEG
            row_group = b & ~7; lead = b - row_group
            group = row_group; base = (M32 - lead) & M32; pending = lead
            active = b < e and fs < es
            if active and panel_lo > 0:
                chunk = b & ~31; before = (M32 - (b - chunk)) & M32
                found=False
                while not found and chunk + 32 <= e:
                    for i in range(8):
                        if found or chunk + 32 > e: break
                        clear = b - chunk if chunk < b else 0
                        last = (before + chunk_steps(deltas, chunk, clear)) & M32
                        if last >= panel_lo: found=True
                        else: before = last; chunk += 32
                if chunk > row_group:
                    group = chunk; base = before; pending = 0
            if not active: continue
            def take():
                wd = group_word(deltas, group)
                if group == row_group: wd &= (M32 << (4*lead)) & M32
                return wd
            word = take()
            for seg in range(fs, es):
                lo = seg*SEG; hi = lo+SEG
                blocked = not active
                while not blocked:
                    offs = offsets(word)
                    left = e - group; in_row = 8 if left >= 8 else left
                    below = 0
                    for j in range(8):
                        c = (base + offs[j]) & M32
                        if j < in_row and j >= pending and ((c - lo) & M32) < SEG:
                            dense[row, c] += float(values[group+j]); hits[row, c] += 1
                        if j >= in_row or j < pending or c < hi: below |= 1 << j
                    if below == 0xFF:
                        base = (base + offs[7]) & M32; group += 8; pending = 0
                        if group >= e: active=False; blocked=True
                        else: word = take()
                    else:
                        pending = (~below & 0xFF & -(~below & 0xFF)).bit_length()-1
                        blocked = True
    return dense, hits

g = seeded_generator(3)
cases = [(5, 300, 0.5, 3), (7, 1040, 0.3, 17), (3, 2056, 0.02, 31), (9, 2056, 1.0, 31), (4, 640, 0.05, 10), (6, 200, 0.9, 4), (2, 64, 0.5, 1), (3, 4096, 0.1, 20)]
for rows, cols, d, panels in cases:
    W = random_pruned(rows, cols, d, torch.float32, g)
    W[0, :] = 0  # an empty row
    A = macko_spmv.compress(W)
    v = A.values.numpy(); dl = A.deltas.numpy(); ri = A.row_indices.numpy()
    panels = min(panels, (cols + SEG - 1)//SEG)
    dense, hits = run(v, dl, ri, rows, cols, panels)
    Wn = W.double().numpy()
    nz = Wn != 0
    ok = np.array_equal(dense, Wn) and (hits[nz] == 1).all() and (hits[~nz] <= 1).all()
    print(rows, cols, d, panels, "OK" if ok else "MISMATCH", int((hits>1).sum()), float(np.abs(dense-Wn).max()))
print("panels=1:")
for rows, cols, d, panels in cases:
    W = random_pruned(rows, cols, d, torch.float32, g); W[0,:]=0
    A = macko_spmv.compress(W)
    dense, hits = run(A.values.numpy(), A.deltas.numpy(), A.row_indices.numpy(), rows, cols, 1)
    Wn = W.double().numpy()
    bad = np.argwhere(dense != Wn)
    print(rows, cols, d, "OK" if len(bad)==0 else f"MISMATCH at {bad[:3].tolist()}")
print("adversarial:")
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2] / 'tests'))
from conftest import adversarial_matrices
gen2 = torch.Generator().manual_seed(5)
mats = adversarial_matrices(torch.float32, gen2)
for name, W in mats.items():
    if W.numel() == 0: continue
    W = torch.nan_to_num(W, nan=7.0, posinf=9.0, neginf=-9.0)
    A = macko_spmv.compress(W)
    rows, cols = W.shape
    for panels in (1, 2, 3, 7, 31):
        p = min(panels, (cols + SEG - 1)//SEG)
        dense, hits = run(A.values.numpy(), A.deltas.numpy(), A.row_indices.numpy(), rows, cols, p)
        Wn = W.double().numpy()
        if not np.array_equal(dense, Wn) or (hits > 1).any():
            print(name, panels, "MISMATCH"); break
    else:
        print(name, "OK")
