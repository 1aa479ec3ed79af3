"""MackoMatrix and the functional API: compress, decompress, multiply."""

import torch

from . import ops

VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class MackoMatrix(tuple):
    """A sparse matrix in the MACKO format.

    It is the 5-tuple ``(values, deltas, row_indices, rows, cols)`` that the
    original MACKO tool returns (indexing, ``len`` and unpacking work as on
    that tuple), with properties for what users need.

    Arrays (see the format specification in the project's FORMAT.md):
      values:      1-D, float16 / bfloat16 / float32, length ``n_padded`` (a
                   multiple of 8): the stored entries of all rows, row after
                   row, padded with zeros.
      deltas:      1-D uint8, length ``n_padded / 2``: entry k's column gap
                   in the low (even k) or high (odd k) nibble of byte k // 2.
      row_indices: 1-D int32 (int64 past 2**31 - 1 entries), length
                   ``rows + 1``: row r owns entries
                   ``[row_indices[r], row_indices[r + 1])``.
      rows, cols:  the dense shape.

    Building one from arrays checks them all (:func:`validate`) and raises
    ValueError or TypeError naming the first problem; pass
    ``validate=False`` only for arrays that come from :func:`compress`.
    """

    __slots__ = ()

    def __new__(cls, values, deltas, row_indices, rows, cols, *, validate=True):
        for name, array in (("values", values), ("deltas", deltas), ("row_indices", row_indices)):
            if not isinstance(array, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(array).__name__}")
        self = super().__new__(cls, (values, deltas, row_indices, int(rows), int(cols)))
        if validate:
            ops.validate(*self)
        return self

    def __getnewargs_ex__(self):  # pickling: rebuilt without re-validation
        return tuple(self), {"validate": False}

    values = property(lambda self: self[0], doc="stored values, 1-D [n_padded]")
    deltas = property(lambda self: self[1], doc="packed 4-bit column gaps, 1-D uint8 [n_padded / 2]")
    row_indices = property(lambda self: self[2], doc="row pointers, 1-D int32/int64 [rows + 1]")
    rows = property(lambda self: self[3], doc="dense row count")
    cols = property(lambda self: self[4], doc="dense column count")

    @property
    def shape(self):
        """The dense shape, torch.Size([rows, cols])."""
        return torch.Size((self.rows, self.cols))

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def device(self):
        return self.values.device

    @property
    def nbytes(self):
        """Bytes of the three arrays: what the matrix costs in memory."""
        return sum(t.numel() * t.element_size() for t in self[:3])

    @property
    def stored_entries(self):
        """Stored entries, padding entries included (stream padding excluded)."""
        return int(self.row_indices[-1])

    @property
    def density(self):
        """True nonzeros over elements (padding entries are zeros)."""
        elements = self.rows * self.cols
        return int(torch.count_nonzero(self.values)) / elements if elements else 0.0

    @property
    def stored_fraction(self):
        """Stored entries, padding included, over elements."""
        elements = self.rows * self.cols
        return self.stored_entries / elements if elements else 0.0

    def to(self, device=None, dtype=None, non_blocking=False):
        """A copy on another device and/or with another value dtype.

        Converting the dtype keeps the sparsity pattern of this matrix; a
        value that rounds to zero in the new dtype stays stored as a zero.
        """
        if dtype is not None and dtype not in VALUE_DTYPES:
            raise TypeError(f"dtype must be one of {VALUE_DTYPES}, got {dtype}")
        values = self.values.to(device=device, dtype=dtype, non_blocking=non_blocking)
        deltas = self.deltas.to(device=device, non_blocking=non_blocking)
        row_indices = self.row_indices.to(device=device, non_blocking=non_blocking)
        return MackoMatrix(values, deltas, row_indices, self.rows, self.cols, validate=False)

    def cuda(self, device=None):
        return self.to(torch.device("cuda") if device is None else device)

    def cpu(self):
        return self.to("cpu")

    def validate(self):
        """Checks every array for consistency; raises ValueError/TypeError."""
        ops.validate(*self)

    def __repr__(self):
        return (
            f"MackoMatrix(shape=({self.rows}, {self.cols}), dtype={self.dtype}, "
            f"device={self.device}, stored_fraction={self.stored_fraction:.3f}, nbytes={self.nbytes})"
        )


def as_macko_matrix(A):
    """A MackoMatrix from a MackoMatrix or a 5-tuple (validated once)."""
    if isinstance(A, MackoMatrix):
        return A
    if isinstance(A, (tuple, list)) and len(A) == 5:
        return MackoMatrix(*A)
    raise TypeError(
        "A must be a MackoMatrix or a (values, deltas, row_indices, rows, cols) tuple "
        f"as returned by macko_spmv.compress, got {type(A).__name__}"
    )


def compress(M):
    """Compresses a dense matrix into the MACKO format.

    Args:
      M: 2-D tensor [rows, cols], float16, bfloat16 or float32, on the CPU or
         a CUDA GPU, any strides. Entries equal to zero (``x == 0``, so
         +0.0 and -0.0) are dropped; NaN and Inf are stored.

    Returns:
      MackoMatrix on M's device, values in M's dtype.
    """
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor, got {type(M).__name__}")
    values, deltas, row_indices = ops.compress(M)
    return MackoMatrix(values, deltas, row_indices, M.shape[0], M.shape[1], validate=False)


def decompress(A):
    """The dense matrix [rows, cols] of A, in A's dtype and on A's device."""
    return ops.decompress(*as_macko_matrix(A))


def multiply(A, x):
    """y = A @ x for a MACKO matrix A and one or more vectors.

    Args:
      A: MackoMatrix (or the 5-tuple) of shape [rows, cols].
      x: tensor [..., cols] in A's dtype and on A's device; a 1-D x is one
         vector, leading dimensions are a batch of vectors (any strides).

    Returns:
      y: [..., rows] in A's dtype; products are summed in float32 over A's
         stored entries: Inf or NaN in x reaches a row through the entries
         it stores (a stored zero, i.e. a padding entry, times Inf is NaN),
         and not through the columns it does not store (the dense product
         would give 0 * Inf = NaN there too).
    """
    A = as_macko_matrix(A)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"x must have at least one dimension [..., cols = {A.cols}], got a scalar")
    if x.dim() <= 2:
        return ops.multiply(*A, x)
    y = ops.multiply(*A, x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], A.rows)
