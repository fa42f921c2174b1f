"""Numba kernels over bit-packed mask rows, beside their plain NumPy references (`packed.py` is
the public face; see its docstring for the layout).

Two products, both streaming the packed bits once:

  (a) superposition  S = sum_i alpha_i M_i            (k packed rows x alpha -> float (entries,))
  (b) inner products g_i = <G, M_i> for a float G     (k packed rows . G     -> float (k,))

With alpha uniform over a set of rows (every inference method), (a) is an exact integer column
count times alpha: a Harley-Seal carry-save tree over 64-bit words, 16 rows at a time. (b) builds,
for each byte column, the 256 partial sums of G over that byte's 8 entries, then costs one table
lookup per byte per row (the "four Russians" trick), 8 rows at a time for independent add chains
(below 64 rows the tables do not pay: 8 multiply-adds per byte instead). Both run on numba's
threads, or on one thread for products under 1 MB of packed bits. On cores shared with other
busy processes, run with OMP_WAIT_POLICY=PASSIVE (see bench/infer.py): spinning OpenMP threads
(torch's and numba's) otherwise stall each other.
"""
import numba
import numpy as np
from numba import njit, prange

# ------------------------------------------------------------------------------- lookup tables
# LOWBIT[b]: the entry (0 = most significant bit) of the lowest set bit of byte b (b > 0), so the
# partial-sum table of a byte column is built as T[b] = T[b & (b - 1)] + G[8c + LOWBIT[b]].
LOWBIT = np.array([0] + [7 - ((b & -b).bit_length() - 1) for b in range(1, 256)], dtype=np.int64)
# BITS[b, j] = bit j (big-endian) of byte b, as float32: the general-weights superposition kernel.
BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)

_COUNT_WORDS = 128  # 64-bit words per chunk of the count kernel (1 KB of each row per visit)
_INNER_BYTES = 32  # byte columns per chunk of the inner kernel (32 x 256 float32 = 32 KB, L1)
SERIAL_BYTES = 1 << 20  # products over fewer packed bytes than this run on one thread
TABLE_ROWS = 64  # from this many rows on, the inner kernel's lookup tables pay for themselves


# ------------------------------------------------------------------------------------ kernels
@njit(inline="always")
def _csa(a, b, c):
    """Carry-save adder on 64 lanes: (carry, sum) of the three bit vectors."""
    u = a ^ b
    return (a & b) | (u & c), u ^ c


@njit(inline="always")
def _ripple(high, c, carry, n_planes):
    """Add the bit vector `carry` into the bit-sliced counter high[:, c]."""
    for p in range(n_planes):
        h = high[p, c]
        high[p, c] = h ^ carry
        carry = h & carry
        if carry == 0:
            break


@njit(parallel=True, cache=True)
def count_kernel(words, rows, n_planes, out):
    """out[e] = number of rows r with bit e set in words[rows[r]] (int32, length 64 * n_words).

    words (k, n_words) uint64 are the packed bytes read as little-endian words: word bit q is
    byte q // 8, bit q % 8 counted from the least significant, i.e. entry 8 (q // 8) + 7 - q % 8.
    Parallel over chunks of word columns; inside a chunk a Harley-Seal tree adds 16 rows into
    bit planes (ones, twos, fours, eights) and ripples the 'sixteens' into `n_planes` more.
    """
    n_words = words.shape[1]
    k = rows.size
    n_chunks = (n_words + _COUNT_WORDS - 1) // _COUNT_WORDS
    for ch in prange(n_chunks):
        c0 = ch * _COUNT_WORDS
        w = min(_COUNT_WORDS, n_words - c0)
        ones = np.zeros(w, np.uint64)
        twos = np.zeros(w, np.uint64)
        fours = np.zeros(w, np.uint64)
        eights = np.zeros(w, np.uint64)
        high = np.zeros((n_planes, w), np.uint64)
        r = 0
        while r + 16 <= k:  # 1. sixteen rows at a time: 15 carry-save adders per word
            for c in range(w):
                cc = c0 + c
                o, t, f, e = ones[c], twos[c], fours[c], eights[c]
                ta, o = _csa(o, words[rows[r], cc], words[rows[r + 1], cc])
                tb, o = _csa(o, words[rows[r + 2], cc], words[rows[r + 3], cc])
                fa, t = _csa(t, ta, tb)
                ta, o = _csa(o, words[rows[r + 4], cc], words[rows[r + 5], cc])
                tb, o = _csa(o, words[rows[r + 6], cc], words[rows[r + 7], cc])
                fb, t = _csa(t, ta, tb)
                ea, f = _csa(f, fa, fb)
                ta, o = _csa(o, words[rows[r + 8], cc], words[rows[r + 9], cc])
                tb, o = _csa(o, words[rows[r + 10], cc], words[rows[r + 11], cc])
                fa, t = _csa(t, ta, tb)
                ta, o = _csa(o, words[rows[r + 12], cc], words[rows[r + 13], cc])
                tb, o = _csa(o, words[rows[r + 14], cc], words[rows[r + 15], cc])
                fb, t = _csa(t, ta, tb)
                eb, f = _csa(f, fa, fb)
                sixteens, e = _csa(e, ea, eb)
                ones[c], twos[c], fours[c], eights[c] = o, t, f, e
                _ripple(high, c, sixteens, n_planes)
            r += 16
        while r < k:  # 2. the remaining rows one at a time
            for c in range(w):
                carry = words[rows[r], c0 + c]
                x = ones[c]
                ones[c] = x ^ carry
                carry = x & carry
                x = twos[c]
                twos[c] = x ^ carry
                carry = x & carry
                x = fours[c]
                fours[c] = x ^ carry
                carry = x & carry
                x = eights[c]
                eights[c] = x ^ carry
                carry = x & carry
                _ripple(high, c, carry, n_planes)
            r += 1
        for c in range(w):  # 3. bit planes -> counts, in entry order
            base = 64 * (c0 + c)
            for q in range(64):
                s = np.uint64(q)
                one = np.uint64(1)
                v = (np.int64((ones[c] >> s) & one) + 2 * np.int64((twos[c] >> s) & one)
                     + 4 * np.int64((fours[c] >> s) & one) + 8 * np.int64((eights[c] >> s) & one))
                for p in range(n_planes):
                    v += np.int64((high[p, c] >> s) & one) << (4 + p)
                out[base + 8 * (q >> 3) + 7 - (q & 7)] = np.int32(v)


@njit(parallel=True, cache=True)
def weighted_kernel(packed, rows, weights, bits, out):
    """out[e] = sum_r weights[r] * bit e of packed[rows[r]] (float64 accumulation). The general
    (any alpha) superposition: 8 multiply-adds per byte, slower than `count_kernel`."""
    n_bytes = packed.shape[1]
    chunk = 512
    n_chunks = (n_bytes + chunk - 1) // chunk
    for ch in prange(n_chunks):
        c0 = ch * chunk
        w = min(chunk, n_bytes - c0)
        acc = np.zeros(8 * w, np.float64)
        for r in range(rows.size):
            a = weights[r]
            row = rows[r]
            for c in range(w):
                b = packed[row, c0 + c]
                if b != 0:
                    for j in range(8):
                        acc[8 * c + j] += a * bits[b, j]
        for e in range(8 * w):
            out[8 * c0 + e] = acc[e]


@njit(inline="always")
def _span(t, n_threads, n):
    """Thread t's contiguous share [s0, s1) of n columns split over n_threads."""
    per = (n + n_threads - 1) // n_threads
    s0 = t * per
    return s0, min(s0 + per, n)


@njit(parallel=True, cache=True)
def inner_kernel(packed, rows, g, lowbit, n_threads):
    """<g, M_r> for every r in rows, as per-thread partial sums: float64 (n_threads, rows.size).
    g is float32 of length 8 * n_bytes (zero past the last entry, so padding bits add nothing).

    The byte columns are split into `n_threads` contiguous ranges (one per thread, each with its
    own partial sums); a range is walked in chunks of `_INNER_BYTES` columns: build each column's
    256 partial sums of g, then one lookup per byte per row, 8 rows at a time.
    """
    k = rows.size
    partial = np.zeros((n_threads, k), np.float64)
    for t in prange(n_threads):
        s0, s1 = _span(t, n_threads, packed.shape[1])
        table = np.zeros(_INNER_BYTES * 256, np.float32)
        for c0 in range(s0, s1, _INNER_BYTES):
            w = min(_INNER_BYTES, s1 - c0)
            for c in range(w):  # 1. partial sums of g over every subset of the byte's 8 entries
                base = 8 * (c0 + c)
                tb = 256 * c
                table[tb] = 0.0
                for b in range(1, 256):
                    table[tb + b] = table[tb + (b & (b - 1))] + g[base + lowbit[b]]
            r = 0
            while r + 8 <= k:  # 2. eight rows at a time: eight independent add chains
                r0, r1, r2, r3 = rows[r], rows[r + 1], rows[r + 2], rows[r + 3]
                r4, r5, r6, r7 = rows[r + 4], rows[r + 5], rows[r + 6], rows[r + 7]
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                for c in range(w):
                    cc = c0 + c
                    tb = 256 * c
                    a0 += table[tb + packed[r0, cc]]
                    a1 += table[tb + packed[r1, cc]]
                    a2 += table[tb + packed[r2, cc]]
                    a3 += table[tb + packed[r3, cc]]
                    a4 += table[tb + packed[r4, cc]]
                    a5 += table[tb + packed[r5, cc]]
                    a6 += table[tb + packed[r6, cc]]
                    a7 += table[tb + packed[r7, cc]]
                partial[t, r] += a0
                partial[t, r + 1] += a1
                partial[t, r + 2] += a2
                partial[t, r + 3] += a3
                partial[t, r + 4] += a4
                partial[t, r + 5] += a5
                partial[t, r + 6] += a6
                partial[t, r + 7] += a7
                r += 8
            while r < k:
                a0 = np.float32(0.0)
                for c in range(w):
                    a0 += table[256 * c + packed[rows[r], c0 + c]]
                partial[t, r] += a0
                r += 1
    return partial  # (n_threads, k): summed over threads by the caller


@njit(parallel=True, cache=True)
def inner_direct_kernel(packed, rows, g, bits, n_threads):
    """<g, M_r> like `inner_kernel`, for a few rows: no tables (whose 256 sums per byte column
    only pay off over many rows), 8 multiply-adds per byte per row instead."""
    k = rows.size
    partial = np.zeros((n_threads, k), np.float64)
    for t in prange(n_threads):
        s0, s1 = _span(t, n_threads, packed.shape[1])
        for r in range(k):
            row = rows[r]
            acc = np.zeros(8, np.float32)
            for c in range(s0, s1):
                b = packed[row, c]
                for j in range(8):
                    acc[j] += bits[b, j] * g[8 * c + j]
            partial[t, r] = acc.astype(np.float64).sum()
    return partial  # (n_threads, k): summed over threads by the caller


def run(kernel, threads: int, *args):
    """Call a parallel kernel with `threads` threads (numba's setting is per calling thread)."""
    if threads == numba.get_num_threads():
        return kernel(*args)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(previous)


def threads(rows: np.ndarray, row_bytes: int) -> int:
    """Threads for a product over `rows` rows of `row_bytes` bytes: one below SERIAL_BYTES, where
    starting threads costs more than the work (and, on busy shared cores, a barrier can stall)."""
    return 1 if rows.size * row_bytes < SERIAL_BYTES else numba.get_num_threads()


# ------------------------------------------------------------------ plain references (tests)
def superpose_reference(packed: np.ndarray, weights: np.ndarray, entries: int) -> np.ndarray:
    """sum_i weights[i] * M_i by unpacking to float64: float32 (entries,)."""
    bits = np.unpackbits(packed, axis=1, count=entries).astype(np.float64)  # (k, entries)
    return (np.asarray(weights, np.float64) @ bits).astype(np.float32)


def inner_reference(packed: np.ndarray, g: np.ndarray, entries: int) -> np.ndarray:
    """<g, M_i> for every row by unpacking to float64: float64 (k,)."""
    bits = np.unpackbits(packed, axis=1, count=entries).astype(np.float64)  # (k, entries)
    return bits @ np.asarray(g, np.float64)
