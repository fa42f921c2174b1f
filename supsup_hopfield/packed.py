"""Bit-packed mask stacks: the one home of masks kept at one bit per entry.

A layer's masks for many tasks are a `PackedMasks`: row t is `np.packbits(mask_t.ravel())`
(big-endian bit order: entry 0 is the most significant bit of byte 0; the last byte padded with
zero bits), `packed_bytes(entries)` bytes long. That is exactly how an archive stores them
(docs/ARCHIVE.md), how `mask_sha256` hashes a task, and what the inference kernels read: a run
appends each finished mask to its layers' `PackedMasks`, the archive writes and reads them, and
evaluation hands them to inference unchanged, 8x smaller than bool arrays at every step.

A `PackedMaskBank` is the masks of all masked layers, indexed by layer number (`layers[l]`) and
task (row t of every layer), with the two products task inference needs: superpositions
Σ_i α_i M_i and inner products ⟨G, M_i⟩, computed from the bits (`_packed_kernels.py`, beside its
plain references).
"""
from __future__ import annotations

import hashlib
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from supsup_hopfield import _packed_kernels as K
from supsup_hopfield.errors import UserError


def packed_bytes(entries: int) -> int:
    """Bytes of one packed row of `entries` bits."""
    return (int(entries) + 7) // 8


def check_bool(m, name: str) -> np.ndarray:
    """`m` as a bool array; 0/1 numbers are accepted, anything else is refused."""
    a = np.asarray(m)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.number) and ((a == 0) | (a == 1)).all():
        return a.astype(bool)
    raise UserError(f"{name}: expected a boolean (or 0/1) mask, got dtype {a.dtype}")


def mask_sha256(layer_masks) -> str:
    """sha256 (hex) of one task's mask bits.

    For each layer in order: the layer's boolean mask flattened in C order and packed as a row
    of a `PackedMasks`; the packed bytes of all layers are concatenated and hashed:

        sha256(b"".join(np.packbits(m.ravel()).tobytes() for m in layer_masks)).hexdigest()
    """
    h = hashlib.sha256()
    for i, m in enumerate(layer_masks):
        h.update(np.packbits(check_bool(m, f"layer_masks[{i}]").ravel()).tobytes())
    return h.hexdigest()


def _words(rows: int, n_bytes: int) -> np.ndarray:
    """Zeroed storage for `rows` packed rows, each padded with zero bytes to whole 64-bit words
    (the count kernel reads words)."""
    return np.zeros((rows, (n_bytes + 7) // 8), np.uint64)


class PackedMasks:
    """One layer's masks of many tasks, one bit per entry (module docstring). `bits` is the
    (tasks, packed_bytes(entries)) uint8 matrix; `masks[t]` unpacks task t's mask, `masks[a:b]` and
    `np.asarray(masks)` unpack to bool; `append` adds a task.

    Stored as 64-bit words, each row padded with zero bytes to a multiple of 8. Input rows that
    already are whole words (C-contiguous, aligned) are shared, not copied: do not modify them
    while these masks are in use. `append` grows the storage geometrically."""

    def __init__(self, bits, mask_shape):
        bits = np.asarray(bits)
        self.mask_shape = tuple(int(n) for n in mask_shape)
        self.n_bits = math.prod(self.mask_shape)
        self.n_bytes = packed_bytes(self.n_bits)
        if bits.dtype != np.uint8 or bits.ndim != 2 or bits.shape[1] != self.n_bytes:
            raise UserError(f"packed masks: expected uint8 bits of shape (tasks, {self.n_bytes}) for masks of "
                            f"shape {self.mask_shape}, got {bits.dtype} {bits.shape}; pack each mask with "
                            "np.packbits(mask.ravel())")
        pad = 8 * self.n_bytes - self.n_bits
        if pad and bits.shape[0] and (bits[:, -1] & ((1 << pad) - 1)).any():
            raise UserError("packed masks: the padding bits of each row must be zero (as np.packbits writes them)")
        self._n = bits.shape[0]
        if self._n and self.n_bytes % 8 == 0 and bits.flags.c_contiguous and bits.ctypes.data % 8 == 0:
            self._store = bits.view(np.uint64)  # whole words already: share, no copy
        else:
            self._store = _words(max(self._n, 1), self.n_bytes)
            self._store.view(np.uint8)[: self._n, : self.n_bytes] = bits

    @classmethod
    def pack(cls, masks) -> "PackedMasks":
        """Pack bool masks (tasks, *mask_shape)."""
        a = check_bool(masks, "masks")
        if a.ndim < 2:
            raise UserError(f"masks: expected shape (tasks, *mask_shape), got {a.shape}")
        n_bits = math.prod(a.shape[1:])
        return cls(np.packbits(a.reshape(a.shape[0], n_bits), axis=1), a.shape[1:])

    @classmethod
    def empty(cls, mask_shape) -> "PackedMasks":
        """No tasks yet, masks of `mask_shape` to come (`append`)."""
        return cls(np.zeros((0, packed_bytes(math.prod(mask_shape))), np.uint8), mask_shape)

    def append(self, mask) -> int:
        """Add one task's mask (bool, `mask_shape`); returns its row."""
        m = check_bool(mask, "mask")
        if m.shape != self.mask_shape:
            raise UserError(f"mask: expected shape {self.mask_shape}, got {m.shape}; pass masks learned on this "
                            "base network")
        self.reserve(self._n + 1)
        self._store.view(np.uint8)[self._n, : self.n_bytes] = np.packbits(m.reshape(-1))
        self._n += 1
        return self._n - 1

    def reserve(self, rows: int) -> None:
        """Room for `rows` tasks without reallocating (grows to at least twice the rows in use)."""
        if rows <= self._store.shape[0]:
            return
        grown = _words(max(rows, 8, 2 * self._n), self.n_bytes)
        grown[: self._n] = self._store[: self._n]
        self._store = grown

    @property
    def bits(self) -> np.ndarray:
        """(tasks, packed_bytes) uint8: the rows as an archive stores them (a view)."""
        return self._store.view(np.uint8)[: self._n, : self.n_bytes]

    @property
    def nbytes(self) -> int:
        """Bytes of packed rows in use (the padding to whole words not counted)."""
        return self._n * self.n_bytes

    @property
    def shape(self) -> tuple:
        return (self._n, *self.mask_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.mask_shape)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        rows = self.bits[index]
        if rows.ndim == 1:
            return np.unpackbits(rows, count=self.n_bits).astype(bool).reshape(self.mask_shape)
        return np.unpackbits(rows, axis=1, count=self.n_bits).astype(bool).reshape((len(rows), *self.mask_shape))

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise UserError("packed masks: unpacking to bool always copies; call np.asarray without copy=False")
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    # -- the products, over rows (int64 row indices, checked by the bank)
    def counts(self, rows: np.ndarray) -> np.ndarray:
        """How many of `rows` set each entry: int32 (entries,), exact."""
        out = np.empty(64 * self._store.shape[1], np.int32)
        high_planes = max(0, int(rows.size).bit_length() - 4)  # planes 16, 32, ... up to the count
        K.run(K.count_kernel, K.threads(rows, 8 * self._store.shape[1]), self._store, rows, high_planes, out)
        return out[: self.n_bits]

    def weighted(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Σ_r weights[r]·M_rows[r] for any float weights: float64 (entries,)."""
        full = self._store.view(np.uint8)  # (capacity, 8 * words) C-contiguous, zero padding
        acc = np.empty(8 * full.shape[1], np.float64)
        K.run(K.weighted_kernel, K.threads(rows, full.shape[1]), full, rows, weights, K.BITS, acc)
        return acc[: self.n_bits]

    def inner(self, g: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """⟨g, M_r⟩ for every r in `rows` (g: float32 (entries,)): float64 (len(rows),)."""
        full = self._store.view(np.uint8)
        padded = np.zeros(8 * full.shape[1], np.float32)
        padded[: self.n_bits] = g
        threads = K.threads(rows, full.shape[1])
        if rows.size < K.TABLE_ROWS:
            return K.run(K.inner_direct_kernel, threads, full, rows, padded, K.BITS, threads).sum(axis=0)
        return K.run(K.inner_kernel, threads, full, rows, padded, K.LOWBIT, threads).sum(axis=0)


class PackedMaskBank:
    """The masks of k tasks over all masked layers: `layers[l]` is layer l's `PackedMasks`, row t
    of every layer is task t. Build it from PackedMasks (`PackedMaskBank(layers)`, shared, not
    copied), from packed uint8 rows and shapes (`PackedMaskBank(packed, shapes)`), or from bool
    masks (`from_masks`)."""

    def __init__(self, layers: Sequence, shapes: Optional[Sequence[Sequence[int]]] = None):
        layers = list(layers)
        if shapes is not None:
            shapes = list(shapes)
            if len(layers) != len(shapes):
                raise UserError(f"mask bank: expected {len(shapes)} packed layers (one per shape), got {len(layers)};"
                                " pass one (k, ceil(entries/8)) uint8 array per masked layer")
            wrapped = []
            for l, (p, shape) in enumerate(zip(layers, shapes)):
                try:
                    wrapped.append(PackedMasks(p, shape))
                except UserError as e:
                    raise UserError(f"packed[{l}]: {e}") from None
            layers = wrapped
        if not layers:
            raise UserError("mask bank: expected at least one masked layer, got none; pass net.mask_shapes")
        for l, p in enumerate(layers):
            if not isinstance(p, PackedMasks):
                raise UserError(f"layers[{l}]: expected PackedMasks, got {type(p).__name__}; pass shapes= with "
                                "packed uint8 rows")
            if len(p) != len(layers[0]):
                raise UserError(f"packed[{l}]: expected {len(layers[0])} tasks like packed[0], got {len(p)}; "
                                "pass the same tasks for every layer")
        self.layers: List[PackedMasks] = layers

    @classmethod
    def from_masks(cls, masks: Sequence[Sequence[np.ndarray]], shapes: Optional[Sequence] = None) -> "PackedMaskBank":
        """A bank from per-task lists of per-layer bool masks (`shapes` defaults to the first
        task's; with no tasks it is required)."""
        masks = list(masks)
        if shapes is None:
            if not masks:
                raise UserError("mask bank: expected masks or shapes, got neither; pass shapes=net.mask_shapes")
            shapes = [np.shape(m) for m in masks[0]]
        bank = cls([PackedMasks.empty(s) for s in shapes])
        for layer in bank.layers:
            layer.reserve(len(masks))
        for task in masks:
            bank.append(task)
        return bank

    def append(self, masks: Sequence[np.ndarray]) -> int:
        """Add one task's masks (one bool array per layer); returns its row index."""
        if len(masks) != len(self.layers):
            raise UserError(f"masks: expected {len(self.layers)} layer masks, got {len(masks)}; "
                            "pass one mask per masked layer")
        for l, (m, layer) in enumerate(zip(masks, self.layers)):
            if tuple(np.shape(m)) != layer.mask_shape:
                raise UserError(f"masks[{l}]: expected shape {layer.mask_shape}, got {tuple(np.shape(m))}; "
                                "pass masks learned on this base network")
        for m, layer in zip(masks, self.layers):
            layer.append(m)
        return self.k - 1

    # -- views
    @property
    def k(self) -> int:
        return len(self.layers[0])

    def __len__(self) -> int:
        return self.k

    @property
    def shapes(self) -> List[Tuple[int, ...]]:
        return [p.mask_shape for p in self.layers]

    @property
    def entries(self) -> List[int]:
        return [p.n_bits for p in self.layers]

    @property
    def packed(self) -> List[np.ndarray]:
        """Per layer, the (k, ceil(entries/8)) uint8 bit matrix (a view, not a copy)."""
        return [p.bits for p in self.layers]

    @property
    def nbytes(self) -> int:
        """Bytes of packed masks in use (the padding to whole words not counted)."""
        return sum(p.nbytes for p in self.layers)

    def unpack(self, task: int) -> List[np.ndarray]:
        """Task `task`'s masks as bool arrays of the layer shapes."""
        return [p[self.check_task(task)] for p in self.layers]

    def check_task(self, task) -> int:
        """`task` as a row index of this bank, or a UserError saying which rows exist."""
        task = int(task)
        if not 0 <= task < self.k:
            raise UserError(f"task: expected a row 0..{self.k - 1} of the mask bank, got {task}; "
                            "pass the index of a stored task")
        return task

    def task_sha256(self, task: int) -> str:
        """`mask_sha256` of task `task`, hashed from its packed rows (no unpacking)."""
        self.check_task(task)
        h = hashlib.sha256()
        for p in self.layers:
            h.update(p.bits[task].tobytes())
        return h.hexdigest()

    def check_rows(self, rows) -> np.ndarray:
        """`rows` (default: every task) as int64 row indices of this bank, checked."""
        if self.k == 0:
            raise UserError("mask bank: expected at least one stored task, got none; learn a task first")
        if rows is None:
            return np.arange(self.k, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            raise UserError(f"rows: expected one or more task rows in 0..{self.k - 1}, got none; "
                            "pass rows of stored tasks")
        if rows.min() < 0 or rows.max() >= self.k:
            raise UserError(f"rows: expected task rows in 0..{self.k - 1}, got rows from {rows.min()} to "
                            f"{rows.max()}; pass rows of stored tasks")
        return rows

    # -- the two products
    def superpose(self, weights=None, rows=None) -> List[np.ndarray]:
        """S_l = sum_r weights[r] M_{rows[r], l} per layer, float32 (entries,).

        `rows` defaults to every task, `weights` to uniform 1/len(rows). Uniform weights (the
        inference case) take the exact count kernel; other weights are grouped by value when
        they take few values, else go to the float kernel."""
        rows = self.check_rows(rows)
        if weights is None:
            weights = np.full(rows.size, 1.0 / rows.size)
        weights = np.asarray(weights, np.float64).reshape(-1)
        if weights.shape != rows.shape or not np.all(np.isfinite(weights)):
            raise UserError(f"weights: expected {rows.size} finite weights (one per row), got "
                            f"{weights.size}; pass one weight per task row")
        values = np.unique(weights[weights != 0.0])
        out = []
        for layer in self.layers:
            if values.size == 0:
                out.append(np.zeros(layer.n_bits, np.float32))
            elif values.size == 1:  # the inference case: exact counts times the weight
                out.append(np.multiply(layer.counts(rows[weights == values[0]]), values[0], dtype=np.float32))
            elif values.size <= 4:  # counts of each group of equal weight, exact
                s = np.zeros(layer.n_bits, np.float64)
                for v in values:
                    s += v * layer.counts(rows[weights == v])
                out.append(s.astype(np.float32))
            else:
                out.append(layer.weighted(rows, weights).astype(np.float32))
        return out

    def counts(self, rows=None) -> List[np.ndarray]:
        """Per layer, how many of `rows` set each entry: int32 (entries,)."""
        rows = self.check_rows(rows)
        return [layer.counts(rows) for layer in self.layers]

    def inner(self, grads: Sequence[np.ndarray], rows=None) -> np.ndarray:
        """sum_l <grads[l], M_{r,l}> for every r in rows (default all): float64 (len(rows),)."""
        rows = self.check_rows(rows)
        if len(grads) != len(self.layers):
            raise UserError(f"grads: expected {len(self.layers)} layer vectors, got {len(grads)}; "
                            "pass one per masked layer")
        total = np.zeros(rows.size, np.float64)
        for l, (g, layer) in enumerate(zip(grads, self.layers)):
            g = np.asarray(g, np.float32).reshape(-1)
            if g.size != layer.n_bits:
                raise UserError(f"grads[{l}]: expected {layer.n_bits} entries, got {g.size}; "
                                "pass the layer's flattened gradient")
            total += layer.inner(g, rows)
        return total
