"""An independent reference for the MACKO format, written from docs/FORMAT.md.

Plain Python loops over the dense matrix, no shared code with the library:
slow, obvious, and only for tests on small matrices.
"""

import torch

GROUP = 8
MAX_GAP = 15

INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def stored_entries(M):
    """(positions, gaps, row_indices) of a 2-D CPU tensor, per the spec:
    the (row, col) and column gap of each stored entry (nonzeros and
    padding zeros) in stream order, and the row pointers."""
    rows, cols = M.shape
    as_float = M.float().tolist()
    positions = []  # (row, col) of each stored entry
    gaps = []
    row_indices = [0]
    for r in range(rows):
        row_entries = []
        kept = 0
        gap = 0
        for c in range(cols):
            nonzero = as_float[r][c] != 0  # IEEE: NaN is "nonzero", -0.0 is zero
            if nonzero or gap == MAX_GAP:
                row_entries.append((c, gap))
                gap = 0
                if nonzero:
                    kept = len(row_entries)
            else:
                gap += 1
        row_entries = row_entries[:kept]  # drop padding after the last nonzero
        positions += [(r, c) for c, _ in row_entries]
        gaps += [g for _, g in row_entries]
        row_indices.append(len(positions))
    return positions, gaps, row_indices


def encode(M):
    """(values, deltas, row_indices) of a 2-D CPU tensor, per the spec."""
    positions, gaps, row_indices = stored_entries(M)
    n = len(positions)
    n_padded = -(-n // GROUP) * GROUP
    values = torch.zeros(n_padded, dtype=M.dtype)
    if n:
        rs = torch.tensor([p[0] for p in positions])
        cs = torch.tensor([p[1] for p in positions])
        values[:n] = M[rs, cs]  # the element itself, so -0.0 padding keeps its sign
    gaps += [0] * (n_padded - n)
    deltas = torch.tensor([gaps[2 * i] | (gaps[2 * i + 1] << 4) for i in range(n_padded // 2)], dtype=torch.uint8)
    return values, deltas, torch.tensor(row_indices, dtype=torch.int32)


def bits(t):
    """A tensor's bit pattern, so that -0.0 != +0.0 and NaN == NaN."""
    return t.view(INT_VIEW[t.dtype]) if t.dtype in INT_VIEW else t


def stored_product(M, x):
    """float64 y[r] = sum over row r's stored entries (padding zeros
    included) of M[r, c] * x[c], for x [cols] or [batch, cols]: the product
    as the format defines it, with IEEE rules (0 * inf = NaN) for the
    stored zeros and nothing at all for the skipped ones."""
    positions, _, _ = stored_entries(M)
    M64, x64 = M.double(), x.double()
    batch = x64.reshape(-1, M.shape[1])
    y = torch.zeros(batch.shape[0], M.shape[0], dtype=torch.float64)
    for r, c in positions:
        y[:, r] += M64[r, c] * batch[:, c]
    return y.reshape(*x.shape[:-1], M.shape[0])
