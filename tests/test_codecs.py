"""Mask codecs: exact round trips, byte counts, rates against H(p), and damaged blobs."""
import math
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_hopfield.compression.codecs import CODECS, CSC16_MAX_ROWS, check_mask, codec_of, csc16_nbytes, decode, entropy_bits

SHAPES = [(), (0,), (1,), (7,), (13,), (64,), (0, 5), (5, 0), (3, 7), (9, 13), (30, 78), (2, 3, 5)]
DENSITIES = [0.0, 1.0, 0.01, 0.5, 0.99]


def _mask(rng, shape, p):
    return rng.random(shape) < p


def _base(name, base):
    """What codec `name` takes as base for a mask whose seeded start is the mask `base`:
    delta-context takes the (initial scores, base weights) that start there (scores >= 0 where
    `base` is set), every other codec the mask itself."""
    if name != "delta-context":
        return base
    base = np.asarray(base).astype(bool)
    rng = np.random.default_rng(base.size)
    magnitude = rng.uniform(0.01, 1.0, base.shape)
    return np.where(base, magnitude, -magnitude).astype(np.float32), np.where(rng.random(base.shape) < 0.5, -1.0, 1.0)


@settings(max_examples=150, deadline=None)
@given(shape=st.sampled_from(SHAPES),
       p=st.one_of(st.sampled_from(DENSITIES), st.floats(0, 1)),
       q=st.sampled_from([0.0, 0.13, 0.5, 1.0]),
       seed=st.integers(0, 2**32 - 1))
def test_every_codec_round_trips_exactly(shape, p, q, seed):
    rng = np.random.default_rng(seed)
    mask = _mask(rng, shape, p)
    base = mask ^ _mask(rng, shape, q)
    for name, codec in CODECS.items():
        blob = codec.encode(mask, base=_base(name, base))
        assert isinstance(blob, bytes)
        assert codec_of(blob) == name
        out = codec.decode(blob, base=_base(name, base))
        assert out.dtype == np.bool_ and out.shape == mask.shape, name
        assert np.array_equal(out, mask), name
        assert np.array_equal(decode(blob, base=_base(name, base)), mask)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(0, 40), p=st.sampled_from(DENSITIES),
       seed=st.integers(0, 2**32 - 1))
def test_csc16_and_bitpack_byte_counts_match_their_formulas(rows, cols, p, seed):
    mask = _mask(np.random.default_rng(seed), (rows, cols), p)
    nnz = int(mask.sum())
    assert len(CODECS["csc16"].encode(mask)) == csc16_nbytes(mask.shape, nnz) == 6 + 8 + 4 * (cols + 1) + 2 * nnz
    assert len(CODECS["bitpack"].encode(mask)) == 6 + 8 + math.ceil(rows * cols / 8)


def test_csc16_one_dimensional_mask_is_one_column_and_row_limit_is_enforced():
    mask = np.zeros(CSC16_MAX_ROWS, bool)
    mask[[0, 1, CSC16_MAX_ROWS - 1]] = True
    blob = CODECS["csc16"].encode(mask)
    assert len(blob) == 6 + 4 + 4 * 2 + 2 * 3
    assert np.array_equal(CODECS["csc16"].decode(blob), mask)
    with pytest.raises(ValueError, match="at most 65536 rows per column, got 65537"):
        CODECS["csc16"].encode(np.zeros(CSC16_MAX_ROWS + 1, bool))
    # a 2-D mask with long columns is fine once transposed to short ones
    wide = np.zeros((3, CSC16_MAX_ROWS + 1), bool)
    wide[[0, 2, 1], [0, 7, CSC16_MAX_ROWS]] = True
    assert np.array_equal(CODECS["csc16"].decode(CODECS["csc16"].encode(wide)), wide)


@pytest.mark.parametrize("name", ["entropy", "delta"])
@pytest.mark.parametrize("fill", [False, True])
def test_constant_masks_have_an_empty_entropy_payload(name, fill):
    mask = np.full((300, 784), fill)
    base = np.zeros_like(mask)
    blob = CODECS[name].encode(mask, base=base)
    assert len(blob) == 6 + 8 + 12  # header + n_ones + n_words, no stream
    assert np.array_equal(CODECS[name].decode(blob, base=base), mask)


@pytest.mark.parametrize("p", [0.01, 0.05, 0.13, 0.5, 0.99])
def test_entropy_codec_is_within_2_percent_of_h(p):
    mask = _mask(np.random.default_rng(1), (300, 784), p)
    blob = CODECS["entropy"].encode(mask)
    header = 6 + 8 + 12
    h = entropy_bits(mask.mean())
    assert 8 * (len(blob) - header) <= 1.02 * h * mask.size
    assert header < 64


def test_delta_codes_13_percent_flips_near_h():
    rng = np.random.default_rng(2)
    base = _mask(rng, (300, 784), 0.5)
    mask = base ^ _mask(rng, base.shape, 0.13)
    blob = CODECS["delta"].encode(mask, base=base)
    assert 8 * len(blob) / mask.size <= 1.02 * entropy_bits(0.13)
    assert np.array_equal(CODECS["delta"].decode(blob, base=base), mask)


def test_integer_zero_one_masks_are_accepted_and_others_rejected():
    m = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    for name, codec in CODECS.items():
        b = _base(name, m)
        assert np.array_equal(codec.decode(codec.encode(m, base=b), base=b), m.astype(bool))
    with pytest.raises(ValueError, match="expected a bool array"):
        CODECS["bitpack"].encode(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="expected a bool array"):
        check_mask(np.array([0, 2]))


@pytest.mark.parametrize("name", list(CODECS))
def test_every_truncation_raises_value_error(name):
    rng = np.random.default_rng(3)
    mask = _mask(rng, (20, 30), 0.3)
    base = _base(name, _mask(rng, mask.shape, 0.5))
    blob = CODECS[name].encode(mask, base=base)
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match=f"^{name}: .*(truncated|corrupt)"):
            CODECS[name].decode(blob[:cut], base=base)
    with pytest.raises(ValueError, match="corrupt"):
        CODECS[name].decode(blob + b"\0\0\0\0", base=base)


@pytest.mark.parametrize("name", list(CODECS))
def test_wrong_magic_and_version_raise_value_error(name):
    mask = np.eye(4, dtype=bool)
    other = "bitpack" if name != "bitpack" else "csc16"
    blob = CODECS[other].encode(mask, base=mask)
    with pytest.raises(ValueError, match=f"expected magic .*; decode it with CODECS\\['{other}'\\]"):
        CODECS[name].decode(blob, base=_base(name, mask))
    mine = bytearray(CODECS[name].encode(mask, base=_base(name, mask)))
    mine[4] = 99
    with pytest.raises(ValueError, match="version 99 unsupported"):
        CODECS[name].decode(bytes(mine), base=_base(name, mask))
    with pytest.raises(ValueError, match=f"^{name}: expected magic {CODECS[name].magic!r}, got b'JUNK'; "
                                         "it is not a mask blob$"):
        CODECS[name].decode(b"JUNK" + bytes(mine[4:]), base=_base(name, mask))
    with pytest.raises(ValueError, match="not a mask blob"):
        decode(b"JUNK")


def test_damaged_entropy_stream_is_always_refused():
    """One flipped bit anywhere in the counts or the ANS words: the decoder's end state or the
    count of ones no longer matches, so decoding raises instead of returning a wrong mask."""
    rng = np.random.default_rng(4)
    mask = _mask(rng, (30, 78), 0.2)
    blob = CODECS["entropy"].encode(mask)
    for _ in range(200):
        bad = bytearray(blob)
        j = int(rng.integers(14, len(bad)))  # past the shared header: counts and payload
        bad[j] ^= 1 << int(rng.integers(8))
        with pytest.raises(ValueError, match="not a valid entropy blob|ANS|counts|ones|bytes"):
            CODECS["entropy"].decode(bytes(bad))
    assert np.array_equal(CODECS["entropy"].decode(blob), mask)


def test_delta_needs_a_matching_base():
    mask = np.eye(5, dtype=bool)
    with pytest.raises(ValueError, match=r"delta: expected a base mask of shape \(5, 5\), got none"):
        CODECS["delta"].encode(mask)
    blob = CODECS["delta"].encode(mask, base=mask)
    with pytest.raises(ValueError, match=r"expected a base mask of shape \(5, 5\), got \(4, 5\)"):
        CODECS["delta"].decode(blob, base=mask[:4])
    with pytest.raises(ValueError, match="got none"):
        CODECS["delta"].decode(blob)


def test_entropy_bits():
    assert entropy_bits(0) == 0 and entropy_bits(1) == 0
    assert entropy_bits(0.5) == pytest.approx(1.0)
    assert entropy_bits(0.13) == pytest.approx(0.557438, abs=1e-6)
    np.testing.assert_allclose(entropy_bits(np.array([0.1, 0.9])), entropy_bits(0.1))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        entropy_bits(1.5)


# -- the format on disk ------------------------------------------------------------------
GOLDEN_MASK = ((np.arange(200) * 37) % 101 < 11).reshape(8, 25)  # 22 ones, no rng involved
GOLDEN_BASE = ((np.arange(200) * 53) % 97 < 48).reshape(8, 25)
# The ANS words are whatever constriction wrote for this mask when the format was fixed; a blob
# stored in an archive must keep decoding, so a change of model or coder shows up here.
GOLDEN_ENTROPY_BODY = bytes.fromhex("16000000000000000400000077ded3d2048969fa5d46ff231feea700")


def _head(magic, shape):
    return magic + bytes([1, len(shape)]) + b"".join(s.to_bytes(4, "little") for s in shape)


def test_blobs_are_the_documented_bytes():
    """Each codec's blob for a fixed mask, rebuilt byte by byte from the layout in the module
    docstring, and the stored entropy/delta blobs decode to the mask (format stability)."""
    m, rows, cols = GOLDEN_MASK, 8, 25
    colptr = [0]
    rows_of = []
    for j in range(cols):
        r = [i for i in range(rows) if m[i, j]]
        rows_of += r
        colptr.append(colptr[-1] + len(r))
    csc = _head(b"MKCS", (8, 25)) + b"".join(c.to_bytes(4, "little") for c in colptr) \
        + b"".join(r.to_bytes(2, "little") for r in rows_of)
    assert CODECS["csc16"].encode(m) == csc
    bits = "".join("1" if b else "0" for b in m.ravel())  # C order, first entry = high bit
    packed = bytes(int(bits[i:i + 8], 2) for i in range(0, 200, 8))
    assert CODECS["bitpack"].encode(m) == _head(b"MKBP", (8, 25)) + packed
    assert CODECS["entropy"].encode(m) == _head(b"MKEN", (8, 25)) + GOLDEN_ENTROPY_BODY
    assert CODECS["delta"].encode(m ^ GOLDEN_BASE, base=GOLDEN_BASE) == _head(b"MKDX", (8, 25)) + GOLDEN_ENTROPY_BODY
    assert np.array_equal(decode(_head(b"MKEN", (8, 25)) + GOLDEN_ENTROPY_BODY), m)
    assert np.array_equal(decode(_head(b"MKDX", (8, 25)) + GOLDEN_ENTROPY_BODY, base=GOLDEN_BASE), m ^ GOLDEN_BASE)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_takes_any_bytes_like_blob(kind):
    for name, codec in CODECS.items():
        blob = codec.encode(GOLDEN_MASK, base=_base(name, GOLDEN_BASE))
        assert np.array_equal(codec.decode(kind(blob), base=_base(name, GOLDEN_BASE)), GOLDEN_MASK), name
        assert np.array_equal(decode(kind(blob), base=_base(name, GOLDEN_BASE)), GOLDEN_MASK), name
    with pytest.raises(ValueError, match="^bitpack: expected a bytes blob, got int$"):
        CODECS["bitpack"].decode(7)


def test_shape_limits_of_the_header():
    """Dimensions are u32 in the header: 2**32 - 1 entries fit, 2**32 are refused (checked on a
    zero-stride view, so nothing of that size is allocated)."""
    codec = CODECS["bitpack"]
    assert codec._header((0xFFFFFFFF, 3)) == _head(b"MKBP", (0xFFFFFFFF, 3))
    huge = np.broadcast_to(np.bool_(False), (2**32,))
    with pytest.raises(ValueError, match=r"^bitpack: expected dimensions of < 2\*\*32 entries, got shape \(4294967296,\)"):
        codec.encode(huge)


def test_empty_integer_masks_are_masks():
    for shape in [(0,), (3, 0)]:
        m = np.zeros(shape, np.int64)
        for name, codec in CODECS.items():
            out = codec.decode(codec.encode(m, base=_base(name, m)), base=_base(name, m))
            assert out.dtype == np.bool_ and out.shape == shape


def _body(codec_name, shape, body):
    return _head(CODECS[codec_name].magic, shape) + body


def _u32(*v):
    return b"".join(int(x).to_bytes(4, "little") for x in v)


def _u16(*v):
    return b"".join(int(x).to_bytes(2, "little") for x in v)


DAMAGED = [  # (codec, shape, body, what the error must say after "<codec>: corrupt or truncated blob: ")
    ("csc16", (5, 2), _u32(0, 1), "expected 3 column pointers, got 8 bytes"),
    ("csc16", (5, 2), _u32(0, 1, 1), "expected 14 body bytes for 1 nonzeros, got 12"),
    ("csc16", (5, 2), _u32(1, 1, 1) + _u16(0), "column pointers not increasing"),   # colptr[0] != 0
    ("csc16", (5, 2), _u32(0, 2, 1) + _u16(0), "column pointers not increasing"),   # goes down
    ("csc16", (2, 2), _u32(0, 3, 3) + _u16(0, 0, 1), "column pointers not increasing"),  # 3 rows in 2
    ("csc16", (5, 2), _u32(0, 1, 1) + _u16(5), "row index 5 >= 5 rows"),
    ("bitpack", (8, 8), bytes(7), "expected 8 packed bytes for 64 entries, got 7"),
    ("bitpack", (3, 3), b"\x00\x01", "nonzero padding bits"),
    ("entropy", (4,), b"\x00\x00\x00", "expected 12 bytes of counts, got 3"),
    ("entropy", (4,), struct.pack("<QI", 2, 1), "expected 16 body bytes, got 12"),
    ("entropy", (4,), struct.pack("<QI", 5, 0), "5 ones in 4 entries"),
    ("entropy", (4,), struct.pack("<QI", 4, 1) + bytes(4), "payload for a constant mask"),
    ("entropy", (8,), struct.pack("<QI", 2, 1) + _u32(1), "ANS stream does not match its header counts"),
    ("entropy", (8,), struct.pack("<QI", 2, 1) + _u32(0),  # the coder itself refuses it
     "ANS decoder failed (*)"),
]


@pytest.mark.parametrize("name,shape,body,what", DAMAGED)
def test_each_damage_gets_its_own_message(name, shape, body, what):
    with pytest.raises(ValueError) as err:
        CODECS[name].decode(_body(name, shape, body))
    msg = str(err.value)
    if what.endswith("(*)"):  # the coder's own words follow in brackets
        what, msg = what[:-3], msg.split("(")[0]
        assert str(err.value).endswith("); re-encode the mask")
        assert msg == f"{name}: corrupt or truncated blob: {what}"
    else:
        assert msg == f"{name}: corrupt or truncated blob: {what}; re-encode the mask"


def test_mask_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^mask: expected a bool array \(or integers 0/1\), got dtype float64"):
        CODECS["bitpack"].encode(np.array([0.5]))
    with pytest.raises(ValueError, match=r"^delta base: expected a bool array"):
        CODECS["delta"].encode(np.ones(3, bool), base=np.array([0, 2, 1]))


def test_entropy_bits_is_quiet_and_keeps_the_input_kind():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log2(0) must not warn at the ends of [0, 1]
        h = entropy_bits(np.array([0.0, 1.0, 0.25]))
        assert type(entropy_bits(0.0)) is float and entropy_bits(0.0) == 0.0  # not a numpy scalar
    assert isinstance(h, np.ndarray) and h.shape == (3,)
    np.testing.assert_allclose(h, [0.0, 0.0, -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))])


def _trained_like(rng, shape):
    """Initial scores, base weights and a mask whose flips follow what training does: rare where
    |s0| is large, mostly in the direction the weight's sign favours."""
    scores = rng.uniform(-1, 1, shape).astype(np.float32)
    weights = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
    favoured = (scores >= 0) ^ (weights > 0)
    p = np.where(favoured, 0.5, 0.05) * np.exp(-6 * np.abs(scores))
    return (scores >= 0) ^ (rng.random(shape) < p), (scores, weights)


def test_delta_context_beats_delta_on_trained_like_masks_and_round_trips():
    rng = np.random.default_rng(5)
    mask, base = _trained_like(rng, (300, 784))
    blob = CODECS["delta-context"].encode(mask, base=base)
    assert np.array_equal(CODECS["delta-context"].decode(blob, base=base), mask)
    plain = CODECS["delta"].encode(mask, base=base[0] >= 0)
    flips = float((mask ^ (base[0] >= 0)).mean())
    assert len(blob) < 0.8 * len(plain) and 8 * len(plain) / mask.size == pytest.approx(entropy_bits(flips), rel=0.02)
    # the contexts the decoder rebuilds are a function of the base alone
    a, b = CODECS["delta-context"].parts(mask.shape, base), CODECS["delta-context"].parts(mask.shape, tuple(np.copy(x) for x in base))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert set(np.unique(a[1])) == set(range(16))


def test_delta_context_refuses_damage_and_the_wrong_base():
    rng = np.random.default_rng(6)
    mask, base = _trained_like(rng, (40, 50))
    blob = CODECS["delta-context"].encode(mask, base=base)
    refused = 0
    for i in range(14, len(blob)):  # every byte after the shared header (magic, version, shape), one bit flipped
        bad = bytearray(blob)
        bad[i] ^= 0x10
        try:
            out = CODECS["delta-context"].decode(bytes(bad), base=base)
        except ValueError as e:
            assert str(e).startswith("delta-context: corrupt or truncated blob") and "\n" not in str(e)
            refused += 1
        else:
            assert np.array_equal(out, mask)  # an unused padding bit or probability byte: same mask
    assert refused >= 0.9 * (len(blob) - 14)
    other = (base[0], -base[1])  # another seed's weights: the stream or the checksum disagrees
    with pytest.raises(ValueError, match="^delta-context: corrupt or truncated blob: .*another base"):
        CODECS["delta-context"].decode(blob, base=other)
    with pytest.raises(ValueError, match=r"expected base=\(initial scores, base weights\)"):
        CODECS["delta-context"].encode(mask, base=mask)
    with pytest.raises(ValueError, match="expected initial scores and weights of shape"):
        CODECS["delta-context"].encode(mask, base=(base[0][:2], base[1]))
