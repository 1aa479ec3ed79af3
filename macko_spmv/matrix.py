"""MackoMatrix and the functional API: compress, decompress, multiply."""

import operator

import torch

from . import ops

VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The 8-bit value dtypes that compress(M, value_dtype=...) stores.
QUANTIZED_DTYPES = tuple(ops.QUANTIZED_DTYPES)


class MackoMatrix(tuple):
    """A sparse matrix in the MACKO format.

    It is the 5-tuple ``(values, deltas, row_indices, rows, cols)`` that the
    original MACKO tool returns (indexing, ``len`` and unpacking work as on
    that tuple), with properties for what users need. With 8-bit values
    (this library's extension, docs/FORMAT.md) it is the 6-tuple
    ``(values, deltas, row_indices, rows, cols, scales)``.

    Arrays (docs/FORMAT.md specifies them and how rows are encoded):
      values:      1-D, [n_padded]: float16 / bfloat16 / float32, or int8 /
                   float8_e4m3fn (8-bit values, with scales).
      deltas:      1-D uint8, [n_padded / 2].
      row_indices: 1-D int32 or int64, [rows + 1].
      rows, cols:  the dense shape.
      scales:      8-bit values only: 1-D [rows], float16 / bfloat16 /
                   float32, finite and >= 0; a value q of row r stands for
                   q * scales[r], and the scales' dtype is the matrix's
                   (activation) dtype: that of x, y and the dense matrix.

    Building one from arrays checks them all (:func:`validate`) and raises
    ValueError or TypeError naming the first problem; pass
    ``validate=False`` only for arrays that come from :func:`compress`.
    rows and cols must be integers (int or anything with ``__index__``).

    Pickling (``torch.save``) stores the arrays and the shape; unpickling
    validates them again, and ``torch.load`` with its default
    ``weights_only=True`` accepts the class (a registered safe global).
    """

    __slots__ = ()

    def __new__(cls, values, deltas, row_indices, rows, cols, scales=None, *, validate=True):
        for name, array in (("values", values), ("deltas", deltas), ("row_indices", row_indices)):
            if not isinstance(array, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(array).__name__}")
        if scales is not None and not isinstance(scales, torch.Tensor):
            raise TypeError(f"scales must be a torch.Tensor or None, got {type(scales).__name__}")
        fields = (values, deltas, row_indices, _dimension(rows, "rows"), _dimension(cols, "cols"))
        self = super().__new__(cls, fields if scales is None else (*fields, scales))
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
    scales = property(lambda self: self[5] if len(self) > 5 else None,
                      doc="8-bit values' per-row scales, 1-D [rows] in the activation dtype; None for 16/32-bit values")

    @property
    def arrays(self):
        """The tensors of the matrix: values, deltas, row_indices, and scales
        where the values are 8-bit."""
        return tuple(self[:3]) + tuple(self[5:])

    @property
    def shape(self):
        """The dense shape, torch.Size([rows, cols])."""
        return torch.Size((self.rows, self.cols))

    @property
    def dtype(self):
        """The activation dtype: that of x, y and the dense matrix (the
        values' for 16/32-bit values, the scales' for 8-bit ones)."""
        return ops.activation_dtype(self.values, self.scales)

    @property
    def value_dtype(self):
        """The stored values' dtype (int8 or float8_e4m3fn for 8-bit values)."""
        return self.values.dtype

    @property
    def device(self):
        return self.values.device

    @property
    def nbytes(self):
        """Bytes of the arrays (the scales included): what the matrix costs in memory."""
        return sum(t.numel() * t.element_size() for t in self.arrays)

    @property
    def stored_entries(self):
        """Stored entries, padding entries included (stream padding excluded)."""
        return int(self.row_indices[-1])

    @property
    def density(self):
        """True nonzeros over elements (padding entries are zeros; with 8-bit
        values, so are entries that quantized to zero)."""
        elements = self.rows * self.cols
        return int(torch.count_nonzero(_comparable(self.values))) / elements if elements else 0.0

    @property
    def stored_fraction(self):
        """Stored entries, padding included, over elements."""
        elements = self.rows * self.cols
        return self.stored_entries / elements if elements else 0.0

    def to(self, *args, copy=False, **kwargs):
        """The matrix on another device and/or with another (activation) dtype.

        Takes the arguments of ``Tensor.to``: ``to(device)``, ``to(dtype)``,
        ``to(device, dtype)``, ``to(tensor)`` (its device and dtype), each
        with ``non_blocking`` and ``copy`` (as keywords); the dtype must be
        float16, bfloat16 or float32. As with ``Tensor.to``, arrays that
        need no conversion are shared unless ``copy=True``. Converting the
        dtype keeps the sparsity pattern of this matrix; a value that rounds
        to zero in the new dtype stays stored as a zero.

        With 8-bit values the dtype is the activation dtype: the values stay
        as they are and the scales are converted (rounded to nearest); a
        scale whose values could overflow the new dtype (qmax * scale past
        its largest number, as validate refuses) raises ValueError. To store
        other values, compress the dense matrix again.
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype not in VALUE_DTYPES:
            raise TypeError(f"dtype must be one of {VALUE_DTYPES}, got {dtype}")
        moved = dict(device=device, non_blocking=non_blocking, copy=copy)
        deltas = self.deltas.to(**moved)
        row_indices = self.row_indices.to(**moved)
        if self.scales is None:
            values = self.values.to(dtype=dtype, **moved)
            return MackoMatrix(values, deltas, row_indices, self.rows, self.cols, validate=False)
        values = self.values.to(**moved)
        scales = self.scales.to(dtype=dtype, **moved)
        if scales.dtype != self.scales.dtype and scales_overflow(scales, self.values.dtype):
            raise ValueError(f"the scales overflow {scales.dtype} (largest scale {float(self.scales.max())}, times "
                             f"{ops.QUANTIZED_DTYPES[self.values.dtype]} for these values): this matrix's values "
                             "cannot be represented with that dtype")
        return MackoMatrix(values, deltas, row_indices, self.rows, self.cols, scales, validate=False)

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
        values = "" if self.scales is None else f"value_dtype={self.value_dtype}, "
        return (
            f"MackoMatrix(shape=({self.rows}, {self.cols}), dtype={self.dtype}, {values}"
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


def _comparable(values):
    """values as a tensor that comparisons and counts take: float8 tensors
    have few ops, so as float32 (an exact conversion)."""
    return values.float() if values.dtype == torch.float8_e4m3fn else values


def as_macko_matrix(A):
    """A MackoMatrix from a MackoMatrix, a 5-tuple or a 6-tuple (validated once)."""
    if isinstance(A, MackoMatrix):
        return A
    if isinstance(A, (tuple, list)) and len(A) in (5, 6):
        return MackoMatrix(*A)
    raise TypeError(
        "A must be a MackoMatrix or a (values, deltas, row_indices, rows, cols) tuple as returned by "
        "macko_spmv.compress (with 8-bit values the 6-tuple (..., cols, scales)), "
        f"got {type(A).__name__}"
    )


def compress(M, value_dtype=None):
    """Compresses a dense matrix into the MACKO format.

    Args:
      M: 2-D tensor [rows, cols], float16, bfloat16 or float32, on the CPU or
         a CUDA GPU, any strides. Entries equal to zero (``x == 0``, so
         +0.0 and -0.0) are dropped; NaN and Inf are stored (but see
         value_dtype).
      value_dtype: None (values stored in M's dtype, byte for byte what the
         original MACKO tool stores for fp16), or torch.int8 or
         torch.float8_e4m3fn: 8-bit values with one symmetric scale per row
         in M's dtype (docs/FORMAT.md, "8-bit values"). The sparsity pattern
         is M's: an entry nonzero in M stays stored even where it quantizes
         to zero. M must then be finite (ValueError otherwise: no finite
         scale exists for a row with NaN or Inf).

    Returns:
      MackoMatrix on M's device: the 5-tuple with values in M's dtype, or
      with value_dtype the 6-tuple (values [n_padded] in value_dtype, ...,
      scales [rows] in M's dtype), whose ``dtype`` is M's.
    """
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor, got {type(M).__name__}")
    if value_dtype is not None and value_dtype not in QUANTIZED_DTYPES:
        raise TypeError(f"value_dtype must be None, torch.int8 or torch.float8_e4m3fn, got {value_dtype!r}")
    if value_dtype is not None and M.dtype in VALUE_DTYPES and M.dim() == 2 and M.numel():
        not_finite = ~torch.isfinite(M)
        if bool(not_finite.any()):
            row = int(not_finite.any(dim=1).nonzero()[0, 0])
            raise ValueError(
                f"M holds NaN or Inf (first in row {row}): 8-bit values ({value_dtype}) need a finite scale per "
                "row, which no row with NaN or Inf has"
            )
    values, deltas, row_indices = ops.compress(M)
    if value_dtype is None:
        return MackoMatrix(values, deltas, row_indices, M.shape[0], M.shape[1], validate=False)
    values, scales = _quantize(M, values, row_indices, value_dtype)
    return MackoMatrix(values, deltas, row_indices, M.shape[0], M.shape[1], scales, validate=False)


def scales_overflow(scales, value_dtype):
    """Whether some row's values could overflow the scales' dtype: qmax *
    scale past its largest number (or a scale not finite), which validate
    refuses; for converting the scales of 8-bit values (value_dtype) to
    another activation dtype."""
    qmax = ops.QUANTIZED_DTYPES[value_dtype]
    return not bool((scales.double() * qmax <= torch.finfo(scales.dtype).max).all())


def _row_scales(M, qmax):
    """One symmetric scale per row of M (finite), in M's dtype: the row's
    largest magnitude over qmax, rounded up, so that no |v| / scale exceeds
    qmax; 0 for a row of zeros. A row whose scale would underflow to 0 gets
    the smallest positive (subnormal) number instead. A scale is at most
    the dtype's largest number over qmax, rounded down, so that qmax *
    scale stays finite (validate requires it; only a row whose largest
    magnitude is within a rounding of the dtype's largest number is capped,
    its top entries then clamped to +-qmax)."""
    rows, cols = M.shape
    if cols == 0:
        return torch.zeros(rows, dtype=M.dtype, device=M.device)
    amax = M.abs().amax(dim=1).double()
    scales = (amax / qmax).to(M.dtype)
    # scale * qmax is exact in float64 (a 24-bit times a 9-bit significand),
    # so this finds every scale that rounded below amax / qmax; the next
    # number up is then at or above it (it also lifts an underflowed 0).
    low = scales.double() * qmax < amax
    scales = torch.where(low, torch.nextafter(scales, torch.full_like(scales, float("inf"))), scales)
    largest = torch.finfo(M.dtype).max
    cap = torch.tensor(largest / qmax, dtype=torch.float64).to(M.dtype)
    if float(cap.double()) * qmax > largest:
        cap = torch.nextafter(cap, torch.zeros_like(cap))
    return torch.minimum(scales, cap.to(M.device))


def _quantize(M, values, row_indices, value_dtype):
    """(values in value_dtype, scales [rows] in M's dtype) for the stored
    entries `values` of M (compress's array, in M's dtype), row by row: q =
    v / scale[row] clamped to [-qmax, qmax] (entries of a row whose scale
    is capped can pass it), then rounded to nearest for int8 and converted
    to nearest for float8_e4m3fn. A row with scale 0 (all zeros) stores
    zeros. The stream padding stays zero."""
    qmax = ops.QUANTIZED_DTYPES[value_dtype]
    rows = M.shape[0]
    scales = _row_scales(M, qmax)
    n = int(row_indices[-1])
    lengths = (row_indices[1:] - row_indices[:-1]).long()
    row_of_entry = torch.repeat_interleave(torch.arange(rows, device=M.device), lengths, output_size=n)
    entry_scales = scales.index_select(0, row_of_entry)
    stored = values[:n]
    # float64 quotients for int8 (then one rounding); float32 for e4m3,
    # which torch converts to float8 from float32.
    quotient_dtype = torch.float64 if value_dtype == torch.int8 else torch.float32
    divisor = torch.where(entry_scales > 0, entry_scales, torch.ones_like(entry_scales)).to(quotient_dtype)
    quotient = torch.where(entry_scales > 0, stored.to(quotient_dtype) / divisor, 0.0).clamp_(-qmax, qmax)
    if value_dtype == torch.int8:
        quotient = quotient.round_()
    quantized = torch.zeros(values.shape, dtype=value_dtype, device=values.device)
    quantized[:n] = quotient.to(value_dtype)
    return quantized, scales


def decompress(A):
    """The dense matrix [rows, cols] of A, in A's dtype and on A's device.

    With 8-bit values it is the dequantized matrix: each stored q of row r
    becomes (float)q * (float)scales[r], rounded once to A's dtype."""
    return ops.decompress(*as_macko_matrix(A))


def multiply(A, x):
    """y = A @ x for a MACKO matrix A and one or more vectors.

    Args:
      A: MackoMatrix (or the 5- or 6-tuple) of shape [rows, cols].
      x: tensor [..., cols] in A's dtype (the activation dtype, also for
         8-bit values) and on A's device; a 1-D x is one vector, leading
         dimensions are a batch of vectors (any strides).

    Returns:
      y: [..., rows] in A's dtype; products are summed in float32. With
      8-bit values, the matrix multiplied is decompress(A)'s, on every
      device and route: each entry q * scales[r] rounded once to A's dtype
      before its product with x.

    Each stored entry is multiplied by x at its column, and nothing else
    is: an inf or NaN in x reaches y[r] only through row r's stored entries,
    which include the padding zeros of long zero runs (0 * inf = NaN),
    while a zero the format skips contributes nothing (a dense product
    would give NaN there). This holds on the CPU for every batch (its dense
    route checks x first). On a GPU, batches past the stream route's limit
    (more than 2 vectors) run as products of dense tiles instead (the tile
    kernel up to 32 vectors, decompressed rows and cuBLAS above), with
    nn.Linear's behaviour for inf and NaN in x; large sparse matrices
    (below a quarter stored) keep the stream route up to 4-12 vectors, and
    matrices that the tile kernel does not take (fp32 values, cols not a
    multiple of 8) up to 8 (16 if sparse), as do 8-bit values up to 8.
    MACKO_MULTIPLY_ROUTE=stream in the environment keeps the stream route
    for every batch.
    """
    A = as_macko_matrix(A)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"x must have at least one dimension [..., cols = {A.cols}], got a scalar")
    if x.dim() <= 2:
        return ops.multiply(*A[:5], x, scales=A.scales)
    y = ops.multiply(*A[:5], x.reshape(-1, x.shape[-1]), scales=A.scales)
    return y.reshape(*x.shape[:-1], A.rows)
