"""Task inference over explicit, bit-packed masks (Wortsman et al. 2020, §3.3 "Task inference";
docs/METHOD.md §6).

The k learned masks are held PACKED, one bit per entry: per masked layer a uint8 matrix
(k, ceil(entries/8)), row i = `np.packbits(mask_i.ravel())` (big-endian bit order: entry 0 is the
most significant bit of byte 0). Inference never builds a float copy of all masks. It needs two
products, both Numba kernels that stream the packed bits once:

  (a) superposition  S = sum_i alpha_i M_i            (k packed rows x alpha -> float (entries,))
  (b) inner products g_i = <G, M_i> for a float G     (k packed rows . G     -> float (k,))

With alpha uniform over a set of rows (every method here), (a) is an exact integer column count
times alpha: a Harley-Seal carry-save tree over 64-bit words, 16 rows at a time. (b) builds, for
each byte column, the 256 partial sums of G over that byte's 8 entries, then costs one table
lookup per byte per row (the "four Russians" trick), 8 rows at a time for independent add chains
(below 64 rows the tables do not pay: 8 multiply-adds per byte instead). Both run on numba's
threads, or on one thread for products under 1 MB of packed bits. On cores shared with other
busy processes, run with OMP_WAIT_POLICY=PASSIVE (see bench/infer.py): spinning OpenMP threads
(torch's and numba's) otherwise stall each other.

One-shot inference (the paper's `se_oneshot_*_minimization`):
  1. S_l = (1/k) sum_i M_{i,l} for every masked layer l (kernel (a)).
  2. Forward the batch with the masks replaced by S_l (weights * S_l for weight masks, S_l as
     the BatchNorm scale for hopnet's neuron masks); objective E on the logits.
  3. dE/dS_l by autograd on the (entries,) leaf tensors S_l.
  4. dE/dalpha_i = sum_l <dE/dS_l, M_{i,l}> (kernel (b)): the chain rule through S = sum alpha M.
  5. task = argmin_i dE/dalpha_i, i.e. argmax of -dE/dalpha (the mask whose weight, raised,
     lowers E fastest).
Objectives: `entropy` H = mean over the batch of the softmax entropy over ALL outputs; `g` =
mean over the batch of logsumexp over all s outputs, with the ell real outputs' logits detached, so
only the s - ell superfluous outputs carry gradient. Training by cross-entropy pushes the
superfluous logits down under the right mask, so the right task is again the one whose alpha
lowers the objective most (the same argmin as for H; the paper's code minimises both).
`binary`: ceil(log2 k) rounds, alpha uniform over the remaining candidates, each round keeps the
ceil(half) with the lowest gradient.

Scoring (docs/METHOD.md §6): inference is per batch; a batch whose task is inferred wrongly counts all its
samples as wrong (the paper's `unshared_labels`). The accuracy of the predictions made with the
inferred mask (what the paper reports when labels are shared) is returned beside it.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numba
import numpy as np
import torch
from numba import njit, prange

from supsup_hopfield.errors import UserError
from supsup_hopfield.masks import masks_to_tensors

METHODS = ("oneshot", "binary", "g", "binary-g")
OBJECTIVES = ("entropy", "g")
_METHOD_OBJECTIVE = {"oneshot": "entropy", "binary": "entropy", "g": "g", "binary-g": "g"}

# ------------------------------------------------------------------------------- lookup tables
# _LOWBIT[b]: the entry (0 = most significant bit) of the lowest set bit of byte b (b > 0), so the
# partial-sum table of a byte column is built as T[b] = T[b & (b - 1)] + G[8c + _LOWBIT[b]].
_LOWBIT = np.array([0] + [7 - ((b & -b).bit_length() - 1) for b in range(1, 256)], dtype=np.int64)
# _BITS[b, j] = bit j (big-endian) of byte b, as float32: the general-weights superposition kernel.
_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)

_COUNT_WORDS = 128  # 64-bit words per chunk of the count kernel (1 KB of each row per visit)
_INNER_BYTES = 32  # byte columns per chunk of the inner kernel (32 x 256 float32 = 32 KB, L1)
_SERIAL_BYTES = 1 << 20  # products over fewer packed bytes than this run on one thread
_TABLE_ROWS = 64  # from this many rows on, the inner kernel's lookup tables pay for themselves


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
def _count_kernel(words, rows, n_planes, out):
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
def _weighted_kernel(packed, rows, weights, bits, out):
    """out[e] = sum_r weights[r] * bit e of packed[rows[r]] (float64 accumulation). The general
    (any alpha) superposition: 8 multiply-adds per byte, slower than `_count_kernel`."""
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
def _inner_kernel(packed, rows, g, lowbit, n_threads):
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
def _inner_direct_kernel(packed, rows, g, bits, n_threads):
    """<g, M_r> like `_inner_kernel`, for a few rows: no tables (whose 256 sums per byte column
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


def _run(kernel, threads: int, *args):
    """Call a parallel kernel with `threads` threads (numba's setting is per calling thread)."""
    if threads == numba.get_num_threads():
        return kernel(*args)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(previous)


def _threads(rows: np.ndarray, row_bytes: int) -> int:
    """Threads for a product over `rows` rows of `row_bytes` bytes: one below _SERIAL_BYTES, where
    starting threads costs more than the work (and, on busy shared cores, a barrier can stall)."""
    return 1 if rows.size * row_bytes < _SERIAL_BYTES else numba.get_num_threads()


# ------------------------------------------------------------------ plain references (tests)
def superpose_reference(packed: np.ndarray, weights: np.ndarray, entries: int) -> np.ndarray:
    """sum_i weights[i] * M_i by unpacking to float64: float32 (entries,)."""
    bits = np.unpackbits(packed, axis=1, count=entries).astype(np.float64)  # (k, entries)
    return (np.asarray(weights, np.float64) @ bits).astype(np.float32)


def inner_reference(packed: np.ndarray, g: np.ndarray, entries: int) -> np.ndarray:
    """<g, M_i> for every row by unpacking to float64: float64 (k,)."""
    bits = np.unpackbits(packed, axis=1, count=entries).astype(np.float64)  # (k, entries)
    return bits @ np.asarray(g, np.float64)


# ---------------------------------------------------------------------------------- the bank
def _packed_bytes(entries: int) -> int:
    return (entries + 7) // 8


class PackedMaskBank:
    """The k tasks' masks, one bit per entry: per masked layer a uint8 (k, ceil(entries/8))
    matrix whose row i is `np.packbits(mask_i.ravel())`. Row i is task i.

    Stored as 64-bit words (each row padded with zero bytes to a multiple of 8) so the count
    kernel reads whole words; `packed[l]` is a (k, ceil(entries/8)) uint8 view of that storage.
    A C-contiguous input layer whose rows are already whole words (ceil(entries/8) a multiple of
    8) is shared, not copied: do not modify it while the bank is in use. `append` grows the
    storage geometrically (capacity up to 2x the rows in use).
    """

    def __init__(self, packed: Sequence[np.ndarray], shapes: Sequence[Sequence[int]]):
        shapes = [tuple(int(d) for d in s) for s in shapes]
        if not shapes:
            raise UserError("mask bank: expected at least one masked layer shape, got none; pass net.mask_shapes")
        if len(packed) != len(shapes):
            raise UserError(f"mask bank: expected {len(shapes)} packed layers (one per shape), got {len(packed)}; "
                            "pass one (k, ceil(entries/8)) uint8 array per masked layer")
        k = None
        for l, (p, shape) in enumerate(zip(packed, shapes)):
            p = np.asarray(p)
            want = _packed_bytes(math.prod(shape))
            if p.dtype != np.uint8 or p.ndim != 2 or p.shape[1] != want:
                raise UserError(f"packed[{l}]: expected a uint8 array (k, {want}) for mask shape {shape}, "
                                f"got {p.dtype} {p.shape}; pack each task's mask with np.packbits(mask.ravel())")
            if k is not None and p.shape[0] != k:
                raise UserError(f"packed[{l}]: expected {k} tasks like packed[0], got {p.shape[0]}; "
                                "pass the same tasks for every layer")
            k = p.shape[0]
        self.shapes: List[Tuple[int, ...]] = shapes
        self.entries: List[int] = [math.prod(s) for s in shapes]
        self._k = int(k)
        self._words = []
        for l, p in enumerate(packed):
            p = np.asarray(p)
            if self._k and p.shape[1] % 8 == 0 and p.flags.c_contiguous and p.ctypes.data % 8 == 0:
                self._words.append(p.view(np.uint64))  # whole words already: share, no copy
            else:
                words = self._alloc(max(self._k, 1), self.entries[l])
                self._bytes(l, words)[: self._k] = p
                self._words.append(words)

    # -- construction
    @classmethod
    def from_masks(cls, masks: Sequence[Sequence[np.ndarray]], shapes: Optional[Sequence] = None) -> "PackedMaskBank":
        """A bank from per-task lists of per-layer bool masks (`shapes` defaults to the first
        task's; with no tasks it is required)."""
        masks = list(masks)
        if shapes is None:
            if not masks:
                raise UserError("mask bank: expected masks or shapes, got neither; pass shapes=net.mask_shapes")
            shapes = [np.shape(m) for m in masks[0]]
        bank = cls([np.zeros((0, _packed_bytes(math.prod(s))), np.uint8) for s in shapes], shapes)
        bank._reserve(len(masks))
        for task in masks:
            bank.append(task)
        return bank

    @staticmethod
    def _alloc(rows: int, entries: int) -> np.ndarray:
        return np.zeros((rows, (_packed_bytes(entries) + 7) // 8), np.uint64)

    def _bytes(self, l: int, words: np.ndarray) -> np.ndarray:
        return words.view(np.uint8)[:, : _packed_bytes(self.entries[l])]

    def _reserve(self, rows: int) -> None:
        if rows <= self._words[0].shape[0]:
            return
        for l, n in enumerate(self.entries):
            grown = self._alloc(rows, n)
            grown[: self._k] = self._words[l][: self._k]
            self._words[l] = grown

    def append(self, masks: Sequence[np.ndarray]) -> int:
        """Add one task's masks (one bool array per layer); returns its row index."""
        if len(masks) != len(self.shapes):
            raise UserError(f"masks: expected {len(self.shapes)} layer masks, got {len(masks)}; "
                            "pass one mask per masked layer")
        for l, (m, shape) in enumerate(zip(masks, self.shapes)):
            if tuple(np.shape(m)) != shape:
                raise UserError(f"masks[{l}]: expected shape {shape}, got {tuple(np.shape(m))}; "
                                "pass masks learned on this base network")
        if self._k == self._words[0].shape[0]:
            self._reserve(max(8, 2 * self._k))
        for l, m in enumerate(masks):
            self._bytes(l, self._words[l])[self._k] = np.packbits(np.asarray(m, dtype=bool).reshape(-1))
        self._k += 1
        return self._k - 1

    # -- views
    @property
    def k(self) -> int:
        return self._k

    def __len__(self) -> int:
        return self._k

    @property
    def packed(self) -> List[np.ndarray]:
        """Per layer, the (k, ceil(entries/8)) uint8 bit matrix (a view, not a copy)."""
        return [self._bytes(l, w)[: self._k] for l, w in enumerate(self._words)]

    @property
    def nbytes(self) -> int:
        """Bytes of packed masks in use (the padding to whole words not counted)."""
        return sum(self._k * _packed_bytes(n) for n in self.entries)

    def unpack(self, task: int) -> List[np.ndarray]:
        """Task `task`'s masks as bool arrays of the layer shapes."""
        task = self._check_row(task)
        return [np.unpackbits(p[task], count=n).astype(bool).reshape(s)
                for p, n, s in zip(self.packed, self.entries, self.shapes)]

    def _check_row(self, task) -> int:
        task = int(task)
        if not 0 <= task < self._k:
            raise UserError(f"task: expected a row 0..{self._k - 1} of the mask bank, got {task}; "
                            "pass the index of a stored task")
        return task

    def _rows(self, rows) -> np.ndarray:
        if self._k == 0:
            raise UserError("mask bank: expected at least one stored task, got none; learn a task first")
        if rows is None:
            return np.arange(self._k, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            raise UserError(f"rows: expected one or more task rows in 0..{self._k - 1}, got none; "
                            "pass rows of stored tasks")
        if rows.min() < 0 or rows.max() >= self._k:
            raise UserError(f"rows: expected task rows in 0..{self._k - 1}, got rows from {rows.min()} to "
                            f"{rows.max()}; pass rows of stored tasks")
        return rows

    # -- the two products
    def superpose(self, weights=None, rows=None) -> List[np.ndarray]:
        """S_l = sum_r weights[r] M_{rows[r], l} per layer, float32 (entries,).

        `rows` defaults to every task, `weights` to uniform 1/len(rows). Uniform weights (the
        inference case) take the exact count kernel; other weights are grouped by value when
        they take few values, else go to the float kernel."""
        rows = self._rows(rows)
        if weights is None:
            weights = np.full(rows.size, 1.0 / rows.size)
        weights = np.asarray(weights, np.float64).reshape(-1)
        if weights.shape != rows.shape or not np.all(np.isfinite(weights)):
            raise UserError(f"weights: expected {rows.size} finite weights (one per row), got "
                            f"{weights.size}; pass one weight per task row")
        values = np.unique(weights[weights != 0.0])
        out = []
        for l, n in enumerate(self.entries):
            if values.size == 0:
                out.append(np.zeros(n, np.float32))
            elif values.size == 1:  # the inference case: exact counts times the weight
                counts = self._counts(l, rows[weights == values[0]])
                out.append(np.multiply(counts, values[0], dtype=np.float32))
            elif values.size <= 4:  # counts of each group of equal weight, exact
                s = np.zeros(n, np.float64)
                for v in values:
                    s += v * self._counts(l, rows[weights == v])
                out.append(s.astype(np.float32))
            else:
                full = self._words[l].view(np.uint8)  # (capacity, 8 * words) C-contiguous
                acc = np.empty(8 * full.shape[1], np.float64)
                _run(_weighted_kernel, _threads(rows, full.shape[1]), full, rows, weights, _BITS, acc)
                out.append(acc[:n].astype(np.float32))
        return out

    def counts(self, rows=None) -> List[np.ndarray]:
        """Per layer, how many of `rows` set each entry: int32 (entries,)."""
        rows = self._rows(rows)
        return [self._counts(l, rows) for l in range(len(self.entries))]

    def _counts(self, l: int, rows: np.ndarray) -> np.ndarray:
        words = self._words[l]
        out = np.empty(64 * words.shape[1], np.int32)
        high_planes = max(0, int(rows.size).bit_length() - 4)  # planes 16, 32, ... up to the count
        _run(_count_kernel, _threads(rows, 8 * words.shape[1]), words, rows, high_planes, out)
        return out[: self.entries[l]]

    def inner(self, grads: Sequence[np.ndarray], rows=None) -> np.ndarray:
        """sum_l <grads[l], M_{r,l}> for every r in rows (default all): float64 (len(rows),)."""
        rows = self._rows(rows)
        if len(grads) != len(self.entries):
            raise UserError(f"grads: expected {len(self.entries)} layer vectors, got {len(grads)}; "
                            "pass one per masked layer")
        total = np.zeros(rows.size, np.float64)
        for l, (g, n) in enumerate(zip(grads, self.entries)):
            g = np.asarray(g, np.float32).reshape(-1)
            if g.size != n:
                raise UserError(f"grads[{l}]: expected {n} entries, got {g.size}; pass the layer's flattened gradient")
            full = self._words[l].view(np.uint8)  # (capacity, 8 * words) C-contiguous, zero padding
            padded = np.zeros(8 * full.shape[1], np.float32)
            padded[:n] = g
            threads = _threads(rows, full.shape[1])
            if rows.size < _TABLE_ROWS:
                total += _run(_inner_direct_kernel, threads, full, rows, padded, _BITS, threads).sum(axis=0)
            else:
                total += _run(_inner_kernel, threads, full, rows, padded, _LOWBIT, threads).sum(axis=0)
        return total


# --------------------------------------------------------------------------------- inference
def entropy_objective(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the softmax entropy over all outputs."""
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def g_objective(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean over the batch of logsumexp over all outputs, the first `n_classes` (real) logits
    detached: only the superfluous outputs carry gradient."""
    z = torch.cat([logits[:, :n_classes].detach(), logits[:, n_classes:]], dim=1)
    return torch.logsumexp(z, dim=1).mean()


def _check_inputs(net, bank: PackedMaskBank, objective: str, n_classes: int) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}; pick one of those")
    if [tuple(s) for s in net.mask_shapes] != bank.shapes:
        raise UserError(f"mask bank: expected layer shapes {[tuple(s) for s in net.mask_shapes]} of this "
                        f"network, got {bank.shapes}; pass masks learned on this base network")
    outputs = net.spec.outputs
    if objective == "g" and not 1 <= n_classes < outputs:
        raise UserError(f"g objective: expected superfluous outputs (outputs > n_classes), got outputs={outputs}, "
                        f"n_classes={n_classes}; build the network with more outputs (e.g. `outputs=500`)")


def alpha_gradient(net, bank: PackedMaskBank, x: torch.Tensor, rows=None, objective: str = "entropy",
                   n_classes: int = 10) -> np.ndarray:
    """dE/dalpha_r at alpha uniform (1/len(rows)) over `rows` (default: every task), for the
    objective E ("entropy" or "g") on the batch x (B, 784): float64 (len(rows),)."""
    _check_inputs(net, bank, objective, n_classes)
    rows = bank._rows(rows)
    device = net.device
    # 1. the superposed masks, one (entries,) leaf per layer
    supers = [torch.from_numpy(s).to(device).requires_grad_(True) for s in bank.superpose(rows=rows)]
    # 2. forward under S and the objective
    with torch.enable_grad():
        logits = net(x.to(device), [s.view(shape) for s, shape in zip(supers, bank.shapes)])  # (B, outputs)
        value = entropy_objective(logits) if objective == "entropy" else g_objective(logits, n_classes)
        grads = torch.autograd.grad(value, supers)  # 3. dE/dS_l, (entries,) each
    # 4. dE/dalpha_r = sum_l <dE/dS_l, M_{r,l}>
    return bank.inner([g.detach().cpu().numpy() for g in grads], rows=rows)


def infer_task(net, bank: PackedMaskBank, x: torch.Tensor, method: str = "oneshot", n_classes: int = 10) -> int:
    """The row of `bank` whose mask best explains the batch x (B, 784), by `method`:
    "oneshot" (entropy), "g" (one-shot, g objective), "binary" (entropy), "binary-g"."""
    if method not in METHODS:
        raise UserError(f"method: expected one of {', '.join(METHODS)}, got {method!r}; pick one of those")
    objective = _METHOD_OBJECTIVE[method]
    if not method.startswith("binary"):
        return int(np.argmin(alpha_gradient(net, bank, x, None, objective, n_classes)))
    candidates = np.arange(bank.k, dtype=np.int64)
    while candidates.size > 1:  # ceil(log2 k) rounds, keeping the better half each time
        grad = alpha_gradient(net, bank, x, candidates, objective, n_classes)
        keep = np.argsort(grad, kind="stable")[: (candidates.size + 1) // 2]
        candidates = candidates[np.sort(keep)]
    return int(candidates[0])


@torch.no_grad()
def predict(net, masks: Sequence[np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """Class predictions (argmax over all outputs) of `net` under one task's `masks` for x."""
    return net(x.to(net.device), masks_to_tensors(masks, device=net.device)).argmax(dim=1)


def evaluate_inference(net, bank: PackedMaskBank, stream, tasks: Optional[Iterable[int]] = None,
                       method: str = "oneshot", batch_size: int = 128,
                       n_classes: Optional[int] = None, progress=None) -> Dict[int, dict]:
    """Per task (bank row i is task i of `stream`; default all bank rows): infer the task of every
    test batch of `batch_size`, then score it. Returns {task: dict} with

    - accuracy: correct / samples, a batch with a wrongly inferred task counting as all wrong
      (docs/METHOD.md §6, the paper's unshared-labels scoring);
    - accuracy_inferred_mask: the predictions made with the inferred mask, right or wrong;
    - task_given_accuracy: with the true task's mask (scenario GG), same batches;
    - task_inference_accuracy: fraction of batches whose task was inferred right;
    - seconds_per_batch: mean wall time of `infer_task`; batches.

    `progress(done, total)` is called after every task.
    """
    n_classes = int(stream.n_classes if n_classes is None else n_classes)
    tasks = list(range(bank.k) if tasks is None else tasks)
    results = {}
    for k, t in enumerate(tasks):
        t = bank._check_row(t)
        true_masks = bank.unpack(t)
        correct = inferred_correct = given_correct = samples = right_batches = batches = 0
        seconds = 0.0
        for x, y in stream.task(t).test_batches(batch_size):
            start = time.perf_counter()
            guess = infer_task(net, bank, x, method, n_classes)
            seconds += time.perf_counter() - start
            y = y.to(net.device)
            given = int((predict(net, true_masks, x) == y).sum())
            guessed = given if guess == t else int((predict(net, bank.unpack(guess), x) == y).sum())
            given_correct += given
            inferred_correct += guessed
            correct += given if guess == t else 0
            right_batches += guess == t
            samples += y.shape[0]
            batches += 1
        results[t] = {"accuracy": correct / samples, "accuracy_inferred_mask": inferred_correct / samples,
                      "task_given_accuracy": given_correct / samples,
                      "task_inference_accuracy": right_batches / batches,
                      "seconds_per_batch": seconds / batches, "batches": batches}
        if progress is not None:
            progress(k + 1, len(tasks))
    return results
