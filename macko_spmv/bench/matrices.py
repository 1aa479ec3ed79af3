"""Random test inputs and their float64 reference, for the tests, the
benchmarks and the scripts alike.

- :func:`random_pruned`: the one random pruned-matrix generator of the
  project (uniform unstructured sparsity, normal values, never zero).
- :func:`random_vectors`: x for a product.
- :func:`derived_seed`: seeds that depend on what is drawn, not on the order.
- :func:`reference_product` and :func:`check_product`: x @ W^T in float64
  and the check of a product against it.
"""

import zlib

import torch

# Largest error allowed by check_product, per output element i, as
#   |y_i - y_ref_i| <= eps(dtype) * |y_ref_i| + ACCUMULATION_TOL * (|x| @ |W|^T)_i + tiny(dtype) * eps(dtype).
# The first term covers the final rounding to the output dtype (eps is twice
# the unit roundoff, for slack); the second covers summing the products in
# float32, whose rounding error grows with sum_j |W_ij x_j|: 1e-5 is ~100x its
# typical size, yet a few times below what one missing, doubled or misplaced
# entry costs even in a 28672-column row; the last is the spacing of the
# output dtype's subnormal numbers, where the first term is too small.
ACCUMULATION_TOL = 1e-5


class ResultMismatchError(AssertionError):
    """A product disagreed with the float64 reference."""


def derived_seed(seed, *key):
    """A seed for one drawn thing, from the run's ``seed`` and a ``key`` that
    names it: the same thing gets the same numbers whatever else is drawn."""
    return (seed * 1_000_003 + zlib.crc32(repr(key).encode())) % (2**63)


def seeded_generator(seed, device="cpu"):
    """A torch.Generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def random_pruned(rows, cols, density, dtype, generator, *, block_elements=1 << 24):
    """A dense [rows, cols] matrix in ``dtype`` on ``generator``'s device whose
    entries are kept with probability ``density`` (uniform, unstructured) and
    are standard normal samples, never zero (a sample that rounds to zero in
    ``dtype`` becomes 1, so the density is what was asked for).

    Drawn a block of rows at a time (about ``block_elements`` elements per
    block), so that the scratch stays small beside a huge matrix.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    device = generator.device
    matrix = torch.empty(rows, cols, dtype=dtype, device=device)
    step = max(1, block_elements // max(cols, 1))
    for first in range(0, rows, step):
        count = min(step, rows - first)
        block = torch.randn(count, cols, generator=generator, device=device).to(dtype)
        block.masked_fill_(block == 0, 1.0)
        keep = torch.rand(count, cols, generator=generator, device=device) < density
        matrix[first : first + count] = block.masked_fill_(~keep, 0.0)
    return matrix


def random_vectors(batch, cols, dtype, generator):
    """x for a product, standard normal in ``dtype`` on ``generator``'s
    device: [cols] for batch None (one vector), else [batch, cols]."""
    shape = (cols,) if batch is None else (batch, cols)
    return torch.randn(*shape, generator=generator, device=generator.device).to(dtype)


def reference_product(W, x):
    """(y_ref, magnitude), both float64 [..., rows] on W's device:
    y_ref = x @ W^T and magnitude = |x| @ |W|^T, which bounds the float32
    accumulation error. x is [cols] or [..., cols]. Computed a block of rows
    of W at a time so that the float64 copy of W stays small."""
    x64 = x.to(W.device).double()
    rows, cols = W.shape
    y_ref = x64.new_empty((*x.shape[:-1], rows))
    magnitude = torch.empty_like(y_ref)
    block_rows = max(1, (1 << 24) // max(cols, 1))
    for first in range(0, rows, block_rows):
        block = W[first : first + block_rows].double()
        y_ref[..., first : first + block_rows] = x64 @ block.T
        magnitude[..., first : first + block_rows] = x64.abs() @ block.abs().T
    return y_ref, magnitude


# Half the spacing of float32's subnormals: what one float32 addition can
# lose in absolute terms once its sum underflows (where the relative bound
# of ACCUMULATION_TOL no longer holds).
FLOAT32_UNDERFLOW_STEP = 2.0**-150


def check_product(y, y_ref, magnitude, dtype, what, terms=0):
    """Raises ResultMismatchError (naming ``what``) unless y matches the
    float64 reference within the rounding that a float32 accumulation into
    ``dtype`` allows (see ACCUMULATION_TOL). NaN in y counts as wrong.
    terms: the products summed into each output (a row's length), for
    outputs whose float32 partial sums may underflow (products near
    float32's smallest numbers): each addition may then lose up to
    FLOAT32_UNDERFLOW_STEP."""
    if tuple(y.shape) != tuple(y_ref.shape):
        raise ResultMismatchError(f"{what}: got shape {tuple(y.shape)}, expected {tuple(y_ref.shape)}")
    y = y.to(y_ref.device)
    info = torch.finfo(dtype)
    bound = (info.eps * y_ref.abs() + ACCUMULATION_TOL * magnitude + info.tiny * info.eps
             + terms * FLOAT32_UNDERFLOW_STEP)  # fmt: skip
    error = (y.double() - y_ref).abs()
    wrong = ~(error <= bound)  # written so that NaN counts as wrong
    if bool(wrong.any()):
        count = int(wrong.sum())
        worst = int(torch.argmax(torch.where(wrong, error / bound, 0.0).flatten()))
        raise ResultMismatchError(
            f"{what} is wrong in {count} of {y.numel()} outputs; "
            f"worst at flat index {worst}: got {y.flatten()[worst].item()!r}, "
            f"expected {y_ref.flatten()[worst].item()!r} (allowed error {bound.flatten()[worst].item():.3g})"
        )
