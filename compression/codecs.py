"""Mask codecs: exact, self-describing byte formats for one binary mask (docs/METHOD.md §8).

Every codec has one interface: ``CODECS[name].encode(mask, base=None) -> bytes`` and
``CODECS[name].decode(blob, base=None) -> bool ndarray`` with an exact round trip for masks of
any shape (0-D, 1-D, 2-D, ..., size 0 included). ``base`` is only used by ``delta`` (the seeded
initial mask) and ``delta-context`` (the layer's initial scores and base weights).

Blob layout, little-endian, shared header then the codec's body::

    magic    4 bytes   b"MKCS" csc16 | b"MKBP" bitpack | b"MKEN" entropy | b"MKDX" delta
                       | b"MKDC" delta-context
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
    delta-context
             flags u8 (bit 0: row bits sent, bit 1: column bits sent), crc32 u32 of the
             np.packbits of the mask; then the row bits (packbits, R) and column bits (C) that
             are sent; 32 probability bytes; n_words u32 and the ANS words.
             base = (initial scores s0, base weights w), the mask's shape. The decoder rebuilds
             the initial mask s0 >= 0 and, per entry, its context: the |s0| bucket (16 equal
             parts of [0, max |s0|]) and the direction bit (s0 >= 0) xor (w > 0) xor row bit xor
             column bit (R x C view as for csc16). Context k = 2 * bucket + direction has flip
             probability sigmoid((byte_k - 128) / 12). The flips (mask XOR s0 >= 0) are coded
             context by context (C order within one), each run under its own Bernoulli model;
             the encoder sends the side bits only where they pay for themselves.

`entropy_bits(p)` is the binary entropy H(p) in bits, the bound the entropy codec approaches.
"""
from __future__ import annotations

import math
import struct
import zlib

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

    def _unpack(self, packed, count, padding="padding bits"):
        """`count` bools from np.packbits bytes, refusing nonzero padding."""
        bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))
        if bits[count:].any():
            self._fail(f"nonzero {padding}")
        return bits[:count].astype(bool)


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
        return self._unpack(body, n).reshape(shape)


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


class DeltaContext(Codec):
    """Flips against the seeded initial mask, ANS-coded with a flip probability per context that
    the decoder rebuilds from the seed (docs/METHOD.md §8). `base` = (initial scores, base
    weights) of the mask's layer, same shape as the mask, both rebuilt from the run's seed."""

    name = "delta-context"
    magic = b"MKDC"

    def parts(self, shape, base):
        """What the decoder rebuilds from `base`: the initial mask (s0 >= 0), each entry's
        |score| bucket (|s0| / max |s0| in CONTEXT_BUCKETS equal parts) and its direction bit
        (s0 >= 0 xor w > 0: whether the masked weight starts on the side its sign favours), the
        last two as the mask's (R, C) matrix view."""
        scores, weights = self._check_base(base, shape)
        r, c = _csc_view(shape)
        scores = scores.reshape(r, c)
        initial = scores >= 0
        magnitude = np.abs(scores)
        top = float(magnitude.max()) if scores.size else 0.0
        bucket = np.zeros((r, c), np.uint8) if top == 0 else \
            np.minimum(magnitude * (CONTEXT_BUCKETS / top), CONTEXT_BUCKETS - 1).astype(np.uint8)
        return initial, bucket, initial ^ (weights.reshape(r, c) > 0)

    def _check_base(self, base, shape):
        if not isinstance(base, (tuple, list)) or len(base) != 2:
            raise UserError(f"delta-context: expected base=(initial scores, base weights) of shape {tuple(shape)}, "
                            f"got {type(base).__name__}; pass the layer's seeded scores and weights")
        scores, weights = (np.asarray(b) for b in base)
        if scores.shape != tuple(shape) or weights.shape != tuple(shape):
            raise UserError(f"delta-context: expected initial scores and weights of shape {tuple(shape)}, got "
                            f"{scores.shape} and {weights.shape}; pass those of the mask's layer")
        return scores, weights

    def _body(self, m, base):
        initial, bucket, direction = self.parts(m.shape, base)
        flips = m.reshape(initial.shape) ^ initial
        r, c = initial.shape
        rows, cols = _side_bits(flips, direction)
        # flip counts per (bucket, direction, row bit, column bit): every choice of side bits
        # sent (none, rows, columns, both) is priced from them without another pass
        cell = (((bucket.astype(np.intp) * 2 + direction) * 2 + rows[:, None]) * 2 + cols[None, :]) * 2 + flips
        both = np.bincount(cell.ravel(), minlength=16 * CONTEXT_BUCKETS).reshape(CONTEXT_BUCKETS, 2, 2, 2, 2)
        n, ones = both.sum(-1), both[..., 1]
        d, a, b = np.ix_((0, 1), (0, 1), (0, 1))  # direction, row bit, column bit
        best = None
        for use in ((False, False), (True, False), (False, True), (True, True)):
            sent = d ^ (a & use[0]) ^ (b & use[1])  # (2, 2, 2): the direction bit the decoder sees
            total = np.stack([n[:, sent == e].sum(1) for e in (0, 1)], axis=1).ravel()  # (bucket, bit)
            flipped = np.stack([ones[:, sent == e].sum(1) for e in (0, 1)], axis=1).ravel()
            table = _flip_table(total, flipped)
            cost = _ideal_bits(total, flipped, table) + r * use[0] + c * use[1]
            if best is None or cost < best[0]:
                best = (cost, use, table)
        _, (use_rows, use_cols), table = best
        turned = direction ^ (rows[:, None] & use_rows) ^ (cols[None, :] & use_cols)
        ctx = (bucket * np.uint8(2) + turned).ravel()
        head = struct.pack("<BI", use_rows | use_cols << 1, zlib.crc32(np.packbits(m.ravel())))
        side = (np.packbits(rows).tobytes() if use_rows else b"") + (np.packbits(cols).tobytes() if use_cols else b"")
        words = _ans_encode_grouped(flips.ravel(), ctx, _probabilities(table))
        return head + side + table.astype(np.uint8).tobytes() + struct.pack("<I", words.size) + words.tobytes()

    def _unbody(self, body, shape, base):
        initial, bucket, direction = self.parts(shape, base)
        r, c = initial.shape
        if len(body) < 5:
            self._fail(f"expected 5 bytes of flags and checksum, got {len(body)}")
        flags, crc = struct.unpack_from("<BI", body, 0)
        if flags > 3:
            self._fail(f"unknown flags {flags}")
        off = 5
        if flags & 1:
            rows, off = self._bits(body, off, r)
            direction = direction ^ rows[:, None]
        if flags & 2:
            cols, off = self._bits(body, off, c)
            direction = direction ^ cols[None, :]
        need = off + 2 * CONTEXT_BUCKETS + 4
        if len(body) < need:
            self._fail(f"expected at least {need} bytes of side information, got {len(body)}")
        table = np.frombuffer(body, np.uint8, count=2 * CONTEXT_BUCKETS, offset=off)
        words = struct.unpack_from("<I", body, off + 2 * CONTEXT_BUCKETS)[0]
        if len(body) != need + 4 * words:
            self._fail(f"expected {need + 4 * words} body bytes, got {len(body)}")
        ctx = (bucket * np.uint8(2) + direction).ravel()
        order, counts = _grouping(ctx)
        probabilities = _probabilities(table)
        compressed = np.frombuffer(body, "<u4", offset=need).astype(np.uint32)
        grouped = np.empty(ctx.size, bool)
        try:
            coder = constriction.stream.stack.AnsCoder(compressed)
            start = 0
            for k, count in enumerate(counts):  # context by context, as the encoder stacked them
                if count:
                    model = constriction.stream.model.Bernoulli(probabilities[k], perfect=False)
                    grouped[start:start + count] = coder.decode(model, int(count))
                start += count
            empty = coder.is_empty()
        except Exception as e:  # the Rust core rejects some damaged streams outright
            self._fail(f"ANS decoder failed ({e})")
        if not empty:
            self._fail("ANS stream longer than the mask (damaged code, or another base)")
        flips = np.empty(ctx.size, bool)
        flips[order] = grouped
        mask = (flips.reshape(r, c) ^ initial).reshape(shape)
        if zlib.crc32(np.packbits(mask.ravel())) != crc:
            self._fail("the decoded mask does not match its checksum (damaged code, or another base)")
        return mask

    def _bits(self, body, off, count):
        size = packed_bytes(count)
        if len(body) < off + size:
            self._fail(f"expected {size} bytes of side bits, got {len(body) - off}")
        return self._unpack(body[off:off + size], count, "padding in the side bits"), off + size


CONTEXT_BUCKETS = 16  # |initial score| buckets of delta-context
_LOGIT_STEP = 12.0  # a context's flip probability is sent as one byte k: p = sigmoid((k - 128) / 12)


def _side_bits(flips, direction, sweeps: int = 4):
    """Row and column bits r, c that make direction ^ r ^ c agree on most flipped entries: the
    sign pattern of a rank-one fit to the flips' directions (alternating majority votes)."""
    vote = (flips * np.where(direction, 1, -1)).astype(np.float32)  # +1, -1 on flips, 0 elsewhere
    rows = np.zeros(vote.shape[0], bool)
    cols = np.zeros(vote.shape[1], bool)
    for _ in range(sweeps):
        cols = vote.T @ np.where(rows, -1.0, 1.0).astype(np.float32) > 0
        rows = vote @ np.where(cols, -1.0, 1.0).astype(np.float32) > 0
    return rows, cols


def _flip_table(n, ones):
    """Each context's flip rate as the byte k whose p = sigmoid((k - 128) / 12) costs the
    context's entries the fewest bits (an empty context gets 128: p = 1/2)."""
    k = np.arange(256)
    p = _probabilities(k)  # (256,)
    cost = -(ones[:, None] * np.log2(p)[None, :] + (n - ones)[:, None] * np.log2(1 - p)[None, :])
    return np.argmin(cost, axis=1).astype(np.int64)


def _probabilities(k):
    return 1.0 / (1.0 + np.exp(-(np.asarray(k, np.float64) - 128.0) / _LOGIT_STEP))


def _ideal_bits(n, ones, table):
    p = _probabilities(table)
    return float(-(ones * np.log2(p) + (n - ones) * np.log2(1 - p)).sum())


def _grouping(ctx):
    """The entries ordered context by context (stable: C order within a context), and how
    many each context holds."""
    return np.argsort(ctx, kind="stable"), np.bincount(ctx, minlength=2 * CONTEXT_BUCKETS)


def _ans_encode_grouped(bits, ctx, probabilities):
    """One ANS stream of `bits`, context by context, each context's run under its own
    Bernoulli(p): a constant model per run is several times faster than a parameter per bit."""
    order, counts = _grouping(ctx)
    grouped = bits[order].astype(np.int32)
    ends = np.cumsum(counts)
    coder = constriction.stream.stack.AnsCoder()
    for k in reversed(range(counts.size)):  # a stack: the last context first
        if counts[k]:
            coder.encode_reverse(grouped[ends[k] - counts[k]:ends[k]],
                                 constriction.stream.model.Bernoulli(probabilities[k], perfect=False))
    return coder.get_compressed().astype("<u4")


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


CODECS: dict[str, Codec] = {c.name: c for c in (Csc16(), Bitpack(), Entropy(), Delta(), DeltaContext())}
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
