"""Mask codecs: exact, self-describing byte formats for one binary mask (docs/METHOD.md §8).

Every codec has one interface: ``CODECS[name].encode(mask, base=None) -> bytes`` and
``CODECS[name].decode(blob, base=None) -> bool ndarray`` with an exact round trip for masks of
any shape (0-D, 1-D, 2-D, ..., size 0 included). ``base`` is only used by ``delta``.

Blob layout, little-endian, shared header then the codec's body::

    magic    4 bytes   b"MKCS" csc16 | b"MKBP" bitpack | b"MKEN" entropy | b"MKDX" delta
    version  u8        1
    ndim     u8
    shape    ndim x u32

    csc16    colptr (C + 1) x u32, then rows nnz x u16
             the mask is seen as R x C with R = shape[0], C = prod(shape[1:]) (a 1-D mask is one
             column, a 0-D mask is 1 x 1); rows of column j are rows[colptr[j]:colptr[j+1]],
             ascending. Needs R <= 65536 (row indices are uint16).
             total bytes = 6 + 4*ndim + 4*(C + 1) + 2*nnz   (see `csc16_nbytes`)
    bitpack  ceil(n / 8) bytes, np.packbits of the C-order flattened mask (padding bits zero)
             total bytes = 6 + 4*ndim + ceil(n / 8)
    entropy  n_ones u64, n_words u32, then n_words x u32 of an ANS stream (constriction) of the
             flattened mask under a Bernoulli model with p = n_ones / n (exact empirical density,
             recomputed by the decoder from the header). p = 0 or 1 -> empty stream.
             total bytes = 18 + 4*ndim + 4*n_words   (~ n*H(p)/8 + a few bytes)
    delta    as entropy, applied to mask XOR base (base: same-shape mask, e.g. the task's seeded
             initial mask, which costs nothing to store).

`entropy_bits(p)` is the binary entropy H(p) in bits, the bound the entropy codec approaches.
"""
from __future__ import annotations

import math
import struct

import constriction
import numpy as np

from supsup_hopfield.errors import UserError
from supsup_hopfield.packed import packed_bytes

VERSION = 1
_HEAD = struct.Struct("<4sBB")  # magic, version, ndim
_ENT = struct.Struct("<QI")  # n_ones, n_words
CSC16_MAX_ROWS = 65536


def entropy_bits(p):
    """Binary entropy H(p) = -p log2 p - (1-p) log2(1-p) in bits; H(0) = H(1) = 0."""
    arr = np.asarray(p, dtype=np.float64)
    if np.any(~((arr >= 0) & (arr <= 1))):
        raise UserError(f"entropy_bits: expected probabilities in [0, 1], got {p!r}; pass a density")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(arr > 0, arr * np.log2(arr), 0.0) + np.where(arr < 1, (1 - arr) * np.log2(1 - arr), 0.0))
    return float(h) if h.ndim == 0 else h


def check_mask(mask, name: str = "mask") -> np.ndarray:
    """Return `mask` as a bool ndarray; accepts bool or integer arrays holding only 0/1."""
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iu" and (arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)):
        return arr.astype(bool)
    raise UserError(f"{name}: expected a bool array (or integers 0/1), got dtype {arr.dtype}"
                    f" with other values; threshold it first, e.g. scores >= 0")


def csc16_nbytes(shape, nnz: int) -> int:
    """Bytes a csc16 blob takes: 6 + 4*ndim + 4*(C + 1) + 2*nnz (C = number of columns)."""
    shape = tuple(int(s) for s in shape)
    _, cols = _csc_view(shape)
    return _HEAD.size + 4 * len(shape) + 4 * (cols + 1) + 2 * int(nnz)


def _csc_view(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], 1
    return shape[0], math.prod(shape[1:])


class Codec:
    """Base class: header writing/reading; subclasses fill `_body` and `_unbody`."""

    name = ""
    magic = b""

    def encode(self, mask, base=None) -> bytes:
        m = check_mask(mask)
        return self._header(m.shape) + self._body(m, base)

    def decode(self, blob, base=None) -> np.ndarray:
        if isinstance(blob, (bytearray, memoryview)):
            blob = bytes(blob)
        shape, off = self._read_header(blob)
        return self._unbody(memoryview(blob)[off:], shape, base)

    # -- header --------------------------------------------------------------------------
    def _header(self, shape) -> bytes:
        # ndim fits its u8: numpy arrays have at most 64 dimensions
        if any(s > 0xFFFFFFFF for s in shape):
            raise UserError(f"{self.name}: expected dimensions of < 2**32 entries, got shape {shape};"
                            f" reshape the mask")
        return _HEAD.pack(self.magic, VERSION, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)

    def _read_header(self, blob):
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise UserError(f"{self.name}: expected a bytes blob, got {type(blob).__name__}")
        if len(blob) < _HEAD.size:
            raise UserError(f"{self.name}: blob truncated: expected at least {_HEAD.size} header bytes,"
                            f" got {len(blob)}; re-encode the mask")
        magic, version, ndim = _HEAD.unpack_from(blob, 0)
        if magic != self.magic:
            other = _BY_MAGIC.get(magic)
            hint = f"decode it with CODECS[{other.name!r}]" if other else "it is not a mask blob"
            raise UserError(f"{self.name}: expected magic {self.magic!r}, got {magic!r}; {hint}")
        if version != VERSION:
            raise UserError(f"{self.name}: blob version {version} unsupported (supported: {VERSION});"
                            f" upgrade supsup-hopfield")
        end = _HEAD.size + 4 * ndim
        if len(blob) < end:
            raise UserError(f"{self.name}: blob truncated inside its shape header ({len(blob)} of"
                            f" {end} bytes); re-encode the mask")
        shape = struct.unpack_from(f"<{ndim}I", blob, _HEAD.size)
        return tuple(shape), end

    def _fail(self, what):
        raise UserError(f"{self.name}: corrupt or truncated blob: {what}; re-encode the mask")


class Csc16(Codec):
    """Compressed sparse column, uint32 column pointers and explicit uint16 row indices."""

    name = "csc16"
    magic = b"MKCS"

    def _body(self, m, base):
        rows, cols = _csc_view(m.shape)
        if rows > CSC16_MAX_ROWS:
            raise UserError(f"csc16: expected at most {CSC16_MAX_ROWS} rows per column, got {rows}"
                            f" (shape {m.shape}); use bitpack or entropy, or reshape the mask")
        m2 = m.reshape(rows, cols)
        c_idx, r_idx = np.nonzero(m2.T)  # ordered by column, then row
        if r_idx.size > 0xFFFFFFFF:
            raise UserError(f"csc16: expected < 2**32 nonzeros, got {r_idx.size}; split the mask")
        colptr = np.zeros(cols + 1, dtype="<u4")
        np.cumsum(np.bincount(c_idx, minlength=cols), out=colptr[1:])
        return colptr.tobytes() + r_idx.astype("<u2").tobytes()

    def _unbody(self, body, shape, base):
        rows, cols = _csc_view(shape)
        if len(body) < 4 * (cols + 1):
            self._fail(f"expected {cols + 1} column pointers, got {len(body)} bytes")
        colptr = np.frombuffer(body, dtype="<u4", count=cols + 1).astype(np.int64)
        nnz = int(colptr[-1])
        if len(body) != 4 * (cols + 1) + 2 * nnz:
            self._fail(f"expected {4 * (cols + 1) + 2 * nnz} body bytes for {nnz} nonzeros, got {len(body)}")
        if colptr[0] != 0 or np.any(np.diff(colptr) < 0) or np.any(np.diff(colptr) > rows):
            self._fail("column pointers not increasing")
        r_idx = np.frombuffer(body, dtype="<u2", offset=4 * (cols + 1)).astype(np.intp)
        if nnz and r_idx.max() >= rows:
            self._fail(f"row index {int(r_idx.max())} >= {rows} rows")
        out = np.zeros((rows, cols), dtype=bool)
        out[r_idx, np.repeat(np.arange(cols), np.diff(colptr))] = True
        return out.reshape(shape)


class Bitpack(Codec):
    """One bit per entry (np.packbits, big-endian bit order, zero padding)."""

    name = "bitpack"
    magic = b"MKBP"

    def _body(self, m, base):
        return np.packbits(m.ravel()).tobytes()

    def _unbody(self, body, shape, base):
        n = math.prod(shape)
        if len(body) != packed_bytes(n):
            self._fail(f"expected {packed_bytes(n)} packed bytes for {n} entries, got {len(body)}")
        bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
        if bits[n:].any():
            self._fail("nonzero padding bits")
        return bits[:n].astype(bool).reshape(shape)


class Entropy(Codec):
    """ANS-coded bits under a Bernoulli model whose p = n_ones / n is given by the header."""

    name = "entropy"
    magic = b"MKEN"

    def _body(self, m, base):
        return _ans_encode(m.ravel())

    def _unbody(self, body, shape, base):
        return self._ans_decode(body, math.prod(shape)).reshape(shape)

    def _ans_decode(self, body, n):
        if len(body) < _ENT.size:
            self._fail(f"expected {_ENT.size} bytes of counts, got {len(body)}")
        ones, words = _ENT.unpack_from(body, 0)
        if len(body) != _ENT.size + 4 * words:
            self._fail(f"expected {_ENT.size + 4 * words} body bytes, got {len(body)}")
        if ones > n:
            self._fail(f"{ones} ones in {n} entries")
        if ones in (0, n):
            if words:
                self._fail("payload for a constant mask")
            return np.full(n, ones == n)  # a Python bool fill: a bool array
        compressed = np.frombuffer(body, dtype="<u4", offset=_ENT.size).astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(compressed)
            bits = coder.decode(_bernoulli(ones, n), n)
            empty = coder.is_empty()
        except Exception as e:  # the Rust core rejects some damaged streams outright
            self._fail(f"ANS decoder failed ({e})")
        if not empty or int(bits.sum()) != ones:
            self._fail("ANS stream does not match its header counts")
        return bits.astype(bool)


class Delta(Entropy):
    """Entropy-coded XOR against a same-shape base mask (e.g. the task's seeded initial mask)."""

    name = "delta"
    magic = b"MKDX"

    def _check_base(self, base, shape):
        if base is None:
            raise UserError(f"delta: expected a base mask of shape {tuple(shape)}, got none;"
                            f" pass base= (the mask the delta is taken against)")
        b = check_mask(base, "delta base")
        if b.shape != tuple(shape):
            raise UserError(f"delta: expected a base mask of shape {tuple(shape)}, got {b.shape};"
                            f" pass the base this mask was encoded against")
        return b

    def _body(self, m, base):
        return _ans_encode((m ^ self._check_base(base, m.shape)).ravel())

    def _unbody(self, body, shape, base):
        b = self._check_base(base, shape)
        return self._ans_decode(body, math.prod(shape)).reshape(shape) ^ b


def _bernoulli(ones, n):
    return constriction.stream.model.Bernoulli(ones / n, perfect=False)


def _ans_encode(bits: np.ndarray) -> bytes:
    n, ones = bits.size, int(np.count_nonzero(bits))
    if ones in (0, n):
        return _ENT.pack(ones, 0)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(bits.astype(np.int32), _bernoulli(ones, n))
    words = coder.get_compressed().astype("<u4")
    return _ENT.pack(ones, words.size) + words.tobytes()


CODECS: dict[str, Codec] = {c.name: c for c in (Csc16(), Bitpack(), Entropy(), Delta())}
_BY_MAGIC = {c.magic: c for c in CODECS.values()}


def codec_of(blob) -> str:
    """Name of the codec that wrote `blob` (read from its magic)."""
    magic = bytes(blob[:4])
    if magic not in _BY_MAGIC:
        raise UserError(f"expected a mask blob starting with one of {sorted(_BY_MAGIC)}, got {magic!r};"
                        f" this is not a mask blob")
    return _BY_MAGIC[magic].name


def decode(blob, base=None) -> np.ndarray:
    """Decode a blob written by any codec (dispatches on its magic)."""
    return CODECS[codec_of(blob)].decode(blob, base=base)
