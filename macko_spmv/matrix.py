"""MackoMatrix and the functional API: compress, decompress, multiply."""

import operator

import torch

from . import ops

VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class MackoMatrix(tuple):
    """A sparse matrix in the MACKO format.

    It is the 5-tuple ``(values, deltas, row_indices, rows, cols)`` that the
    original MACKO tool returns (indexing, ``len`` and unpacking work as on
    that tuple), with properties for what users need.

    Arrays (docs/FORMAT.md specifies them and how rows are encoded):
      values:      1-D, float16 / bfloat16 / float32, [n_padded].
      deltas:      1-D uint8, [n_padded / 2].
      row_indices: 1-D int32 or int64, [rows + 1].
      rows, cols:  the dense shape.

    Building one from arrays checks them all (:func:`validate`) and raises
    ValueError or TypeError naming the first problem; pass
    ``validate=False`` only for arrays that come from :func:`compress`.
    rows and cols must be integers (int or anything with ``__index__``).

    Pickling (``torch.save``) stores the arrays and the shape; unpickling
    validates them again, and ``torch.load`` with its default
    ``weights_only=True`` accepts the class (a registered safe global).
    """

    __slots__ = ()

    def __new__(cls, values, deltas, row_indices, rows, cols, *, validate=True):
        for name, array in (("values", values), ("deltas", deltas), ("row_indices", row_indices)):
            if not isinstance(array, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(array).__name__}")
        self = super().__new__(cls, (values, deltas, row_indices, _dimension(rows, "rows"), _dimension(cols, "cols")))
        if validate:
            ops.validate(*self)
        return self

    def __getnewargs__(self):
        # Positional arguments only, so that pickle writes a plain NEWOBJ,
        # which torch's weights-only unpickler runs for a safe global; the
        # matrix is then validated as any built from arrays (a file is
        # outside data).
        return tuple(self)

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

    def to(self, *args, copy=False, **kwargs):
        """The matrix on another device and/or with another value dtype.

        Takes the arguments of ``Tensor.to``: ``to(device)``, ``to(dtype)``,
        ``to(device, dtype)``, ``to(tensor)`` (its device and dtype), each
        with ``non_blocking`` and ``copy`` (as keywords); the dtype must be
        float16, bfloat16 or float32. As with ``Tensor.to``, arrays that
        need no conversion are shared unless ``copy=True``. Converting the
        dtype keeps the sparsity pattern of this matrix; a value that rounds
        to zero in the new dtype stays stored as a zero.
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype not in VALUE_DTYPES:
            raise TypeError(f"dtype must be one of {VALUE_DTYPES}, got {dtype}")
        values = self.values.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=copy)
        deltas = self.deltas.to(device=device, non_blocking=non_blocking, copy=copy)
        row_indices = self.row_indices.to(device=device, non_blocking=non_blocking, copy=copy)
        return MackoMatrix(values, deltas, row_indices, self.rows, self.cols, validate=False)

    def cuda(self, device=None):
        return self.to(torch.device("cuda") if device is None else device)

    def cpu(self):
        return self.to("cpu")

    def validate(self):
        """Checks every array for consistency; raises ValueError/TypeError."""
        ops.validate(*self)

    def __repr__(self):
        # On the meta device the arrays have no contents to count.
        stored = "" if self.device.type == "meta" else f"stored_fraction={self.stored_fraction:.3f}, "
        return (
            f"MackoMatrix(shape=({self.rows}, {self.cols}), dtype={self.dtype}, "
            f"device={self.device}, {stored}nbytes={self.nbytes})"
        )


# torch.load(weights_only=True) may build MackoMatrix objects.
torch.serialization.add_safe_globals([MackoMatrix])


def _dimension(size, name):
    """size as an int; a TypeError for anything but an integer (a float
    would be truncated, a string parsed)."""
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(size)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(size).__name__} {size!r}") from None


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
      y: [..., rows] in A's dtype; products are summed in float32.

    Each stored entry is multiplied by x at its column, and nothing else
    is: an inf or NaN in x reaches y[r] only through row r's stored entries,
    which include the padding zeros of long zero runs (0 * inf = NaN),
    while a zero the format skips contributes nothing (a dense product
    would give NaN there). This holds on the CPU for every batch (its dense
    route checks x first). On a GPU, batches past the stream route's limit
    (more than 8 vectors) run as products of dense tiles instead (the tile
    kernel up to 16 vectors, decompressed rows and cuBLAS above), with
    nn.Linear's behaviour for inf and NaN in x; sparse matrices (below a
    quarter stored) that are large or that the tile kernel does not take
    keep the stream route up to 16 vectors. MACKO_MULTIPLY_ROUTE=stream in
    the environment keeps the stream route for every batch.
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
