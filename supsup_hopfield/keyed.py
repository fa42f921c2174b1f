"""The keyed memory: every task's mask stored against a seeded key, given back by pattern
completion with the key clamped (docs/METHOD.md §4, "The keyed memory").

Why. An attractor memory (`memory.HopfieldMemory`) has to pull a task's mask in from a cue, and
the only cue recovery has without the task id is the task's seeded initial mask, which a trained
mask overlaps by m₀ ≈ 0.1–0.3. At load α = n/d the best pairwise couplings give a stored unit a
stability of about sqrt((1 − α)/α); one step from overlap m₀ leaves a unit wrong with probability
H(m₀·Δ/sqrt(1 − m₀²)), so past α ≈ 0.12 the cue is pushed away from its mask, not towards it, and
no learning rule changes that. What the run's seed gives for free is better used as a KEY: a
known part of the state that is clamped, never updated. Recall is then completion of the rest,
the classical Hopfield task, and its limit is the memory's capacity, not the cue's weakness.

The memory. Task j's key is k_j ∈ {−1, +1}^K, row π(j) of the Sylvester–Hadamard matrix of order
K (a power of two), its entries multiplied by a seeded sign vector D: k_j = D ⊙ h_π(j), with D and
the permutation π drawn from `seed`. Distinct keys are exactly orthogonal (k_i·k_j = K·δ_ij), and
they look like random ±1 vectors. A mask m_j enters as z_j = 2m_j − 1 (d entries):

    W ← W + z_j k_jᵀ                     (W: d × K integers, |W| <= n <= K)

This is the Hebbian rule of a Hopfield network over the d + K units [mask; key] with couplings
only between the two halves (J = [[0, W], [Wᵀ, 0]] / K, energy E = −zᵀWk/K: a bidirectional
associative memory, Kosko 1988). With the key half clamped at k_j, the mask half's field is

    W k_j / K = Σ_i z_i (k_i·k_j)/K = z_j,

exactly: orthogonal keys leave no crosstalk at all, so one update sets the mask half to z_j and
[z_j; k_j] is a fixed point of the clamped dynamics, for ANY masks (correlated, biased or equal)
up to n = K of them. The capacity is K by construction (K mutually orthogonal vectors exist in
R^K, no more) and the recall is exact by algebra, with integer weights: no rounding anywhere.
With random keys instead, this is Kohonen's optimal linear associative memory only through the
pseudo-inverse W = Z·K⁺, whose incremental (Greville) update needs the keys' projector as well,
another K × K matrix; orthogonal keys make the pseudo-inverse the transpose.

Insertion is order-free integer addition, so storing one pattern at a time, in blocks (one GEMM)
or all at once gives the same W bit for bit. `recall` decodes the masks of any tasks with one
matrix product W·Kᵀ; `plain_store` and `plain_key` are the definitions, kept for the tests.

Precision. W holds integers up to n (int16 while K <= 16384, else int32): 2·d·K bytes. Rounded
to b bits per entry with one scale per row (`quantize`), a decoded unit is z_ij + ε with
ε = Σ_l e_il k_jl/K; with the rounding errors e roughly uniform, std(ε) ≈ max_l|W_il| /
((2^(b−1) − 1)·sqrt(12·K)). For unbiased masks max_l|W_il| ≈ 4.5·sqrt(n): 0.008 at 8 bits and
0.14 at 4 bits for n = 2500, K = 4096. A unit that is on in most tasks puts its bias into the
one column where every key has the same sign (the Hadamard matrix's column of ones), up to n,
which widens its row's range: the 2500 trained masks of the main job need 6 bits. `compression`
measures which precision keeps every mask of a run.
"""
from __future__ import annotations

import numba
import numpy as np

from supsup_hopfield.basenet import derive_seed
from supsup_hopfield.errors import UserError
from supsup_hopfield.memory import check_patterns

RULE = "keyed"
KEY_TAG = 4  # random-stream tag of the keys (basenet uses 0-2, recovery 3)
MAX_KEYS = 1 << 20
_BLOCK_FROM = 4  # below this many patterns per call, the per-pattern kernel beats one GEMM


def check_keys(keys) -> int:
    """Validate a key count: a power of two in 2..2^20 (the Sylvester–Hadamard orders)."""
    if isinstance(keys, bool) or not isinstance(keys, (int, np.integer)) or not 2 <= keys <= MAX_KEYS \
            or keys & (keys - 1):
        raise UserError(f"keys: expected a power of two from 2 to {MAX_KEYS} (the number of masks the "
                        f"memory can hold), got {keys!r}; pass e.g. 4096")
    return int(keys)


def weight_dtype(keys: int):
    """The integer type of W: int16 while |W| <= n <= keys fits it, else int32."""
    return np.int16 if keys <= 1 << 14 else np.int32


def memory_bytes(dim: int, keys: int) -> int:
    """Bytes of a keyed memory's W (dim, keys)."""
    return dim * keys * np.dtype(weight_dtype(keys)).itemsize


def keys_for(n: int) -> int:
    """The smallest key count (a power of two, at least 2) that holds n masks."""
    return max(2, 1 << max(0, int(n) - 1).bit_length())


def _key_recipe(keys: int, seed: int):
    """The seeded sign vector D (int8 (K,)) and row permutation π (int64 (K,)) of the keys."""
    rng = np.random.default_rng(derive_seed(seed, KEY_TAG))
    signs = np.where(rng.random(keys) < 0.5, -1, 1).astype(np.int8)
    return signs, rng.permutation(keys)


def _parity(x: np.ndarray) -> np.ndarray:
    """Parity of the number of set bits of each (non-negative, < 2^32) integer."""
    x = x.copy()
    for shift in (16, 8, 4, 2, 1):
        x ^= x >> shift
    return x & 1


def make_keys(tasks, keys: int, seed: int) -> np.ndarray:
    """The keys of `tasks` (int8 (len(tasks), keys) of ±1): D ⊙ (row π(j) of the Hadamard matrix)."""
    signs, perm = _key_recipe(keys, seed)
    rows = perm[np.asarray(tasks, np.int64)]
    h = 1 - 2 * _parity(rows[:, None] & np.arange(keys, dtype=np.int64)[None, :])  # (−1)^popcount(r & c)
    return (h * signs).astype(np.int8)


def plain_key(task: int, keys: int, seed: int) -> np.ndarray:
    """`make_keys` for one task, entry by entry from the definition H_rc = (−1)^popcount(r & c)."""
    signs, perm = _key_recipe(keys, seed)
    r = int(perm[task])
    return np.array([int(signs[c]) * (-1) ** bin(r & c).count("1") for c in range(keys)], np.int8)


def plain_store(patterns: np.ndarray, keys: int, seed: int) -> np.ndarray:
    """W after storing the ±1 patterns (n, d) in order, one outer product at a time (int64)."""
    W = np.zeros((patterns.shape[1], keys), np.int64)
    for j, z in enumerate(patterns):
        W += np.outer(z.astype(np.int64), plain_key(j, keys, seed).astype(np.int64))
    return W


@numba.njit(parallel=True, cache=True)
def _add_outer(W, z, k):
    """W += z kᵀ in place (one pass over W)."""
    for i in numba.prange(W.shape[0]):
        zi = z[i]
        row = W[i]
        for c in range(W.shape[1]):
            row[c] += zi * k[c]


def _exact_dtype(n: int, keys: int):
    """A float type whose products W·kᵀ are exact integers: every partial sum is below n·K."""
    return np.float32 if n * keys < (1 << 24) else np.float64


class KeyedMemory:
    """A d × K keyed memory (module docstring): `store` masks in task order, `recall` any task's
    mask by its key. The same interface as `HopfieldMemory` where the meaning carries over
    (`rule`, `dim`, `n_stored`, `weights`, `nbytes`, `store`, `stable`)."""

    rule = RULE

    def __init__(self, dim: int, keys: int, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise UserError(f"dim: expected an integer >= 1, got {dim!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"seed: expected an integer >= 0, got {seed!r}")
        self.dim, self.keys, self.seed = int(dim), check_keys(keys), int(seed)
        self._W = np.zeros((self.dim, self.keys), weight_dtype(self.keys))
        self.n_stored = 0

    @classmethod
    def from_state(cls, weights, n_stored: int, seed: int) -> "KeyedMemory":
        """Rebuild a memory from its saved integer weights (d, K), count and key seed."""
        w = np.asarray(weights)
        if w.ndim != 2 or w.dtype.kind != "i":
            raise UserError(f"weights: expected a 2-D integer matrix (dim, keys), got {w.dtype} {w.shape}")
        mem = cls(w.shape[0], w.shape[1], seed)
        if not 0 <= int(n_stored) <= mem.keys:
            raise UserError(f"n_stored: expected 0..{mem.keys} (the keys), got {n_stored}")
        if w.size and int(np.abs(w).max()) > int(n_stored):
            raise UserError(f"weights: entries up to {int(np.abs(w).max())} cannot come from {n_stored} masks")
        mem._W = np.array(w, dtype=mem._W.dtype, order="C")
        mem.n_stored = int(n_stored)
        return mem

    def __repr__(self):
        return f"KeyedMemory(dim={self.dim}, keys={self.keys}, seed={self.seed}, n_stored={self.n_stored})"

    @property
    def capacity(self) -> int:
        """How many masks the memory can hold: one per key."""
        return self.keys

    @property
    def weights(self) -> np.ndarray:
        """W as a read-only (dim, keys) integer view."""
        v = self._W.view()
        v.flags.writeable = False
        return v

    @property
    def nbytes(self) -> int:
        return self._W.nbytes

    def key(self, tasks) -> np.ndarray:
        """The keys of `tasks` (int8 (len, keys))."""
        return make_keys(self._check_tasks(tasks, self.keys, "of the keys"), self.keys, self.seed)

    def _check_tasks(self, tasks, limit: int, what: str) -> np.ndarray:
        t = np.atleast_1d(np.asarray(tasks))
        if t.ndim != 1 or (t.size and t.dtype.kind not in "iu"):
            raise UserError(f"tasks: expected task indices, got {t.dtype} {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= limit):
            raise UserError(f"tasks: expected indices in 0..{limit - 1} ({what}), got {t.min()}..{t.max()}")
        return t.astype(np.int64)

    def store(self, patterns) -> "KeyedMemory":
        """Store one pattern (dim,) or many (n, dim) under the next keys, in order."""
        Z, _ = check_patterns(patterns, self.dim)
        n = len(Z)
        if self.n_stored + n > self.keys:
            raise UserError(f"memory: full ({self.n_stored} of {self.keys} keys used), cannot store {n} more; "
                            f"a memory with more keys holds them (`keys={keys_for(self.n_stored + n)}`)")
        K = make_keys(np.arange(self.n_stored, self.n_stored + n), self.keys, self.seed)
        if n < _BLOCK_FROM:
            for z, k in zip(Z, K):
                _add_outer(self._W, z.astype(self._W.dtype), k.astype(self._W.dtype))
        elif n:  # one GEMM; every entry of ZᵀK is an integer of size <= n, exact in float
            dt = _exact_dtype(n, 1)
            self._W += (Z.T.astype(dt) @ K.astype(dt)).astype(self._W.dtype)
        self.n_stored += n
        return self

    def recall(self, tasks=None, weights=None) -> np.ndarray:
        """The ±1 int8 masks (len, dim) of `tasks` (default every stored one), each completed
        from its clamped key: sign(W k_j) = z_j. `weights`: decode from these instead of W
        (e.g. W rounded to fewer bits, as `quantize` gives)."""
        t = self._check_tasks(range(self.n_stored) if tasks is None else tasks, max(self.n_stored, 1),
                              f"the {self.n_stored} stored masks")
        W = self._W if weights is None else np.asarray(weights)
        dt = _exact_dtype(max(self.n_stored, 1), self.keys) if weights is None else np.float64
        out = np.empty((len(t), self.dim), np.int8)
        Wf = W.astype(dt)
        for s in range(0, len(t), 1024):  # (dim, 1024) floats at a time
            field = Wf @ make_keys(t[s:s + 1024], self.keys, self.seed).astype(dt).T
            out[s:s + 1024] = np.where(field.T >= 0, 1, -1)
        return out

    def energy(self, state, task: int) -> float:
        """E = −zᵀ W k / K of the ±1 (or 0/1) state z with task `task`'s key clamped: −dim at the
        mask stored under that key, and higher for every other state."""
        Z, _ = check_patterns(state, self.dim, "state")
        dt = _exact_dtype(max(self.n_stored, 1), self.keys)
        k = self.key(task)[0].astype(dt)
        field = np.concatenate([self._W[s:s + 1024].astype(dt) @ k for s in range(0, self.dim, 1024)])  # W k, exact
        return float(-(Z[0].astype(np.float64) @ field) / self.keys)

    def stable(self, patterns) -> np.ndarray | bool:
        """True where pattern j (row j) is what the memory gives back from key j: [z_j; k_j] is a
        fixed point of the dynamics with the key clamped."""
        Z, single = check_patterns(patterns, self.dim)
        if len(Z) > self.n_stored:
            raise UserError(f"patterns: {len(Z)} given, but the memory holds {self.n_stored}; pass at most that many")
        ok = (self.recall(np.arange(len(Z))) == Z).all(axis=1)
        return bool(ok[0]) if single else ok


def quantize(W: np.ndarray, bits: int) -> np.ndarray:
    """W rounded to signed `bits`-bit integers q with one float32 scale per row, returned as the
    float64 values q·scale that such a copy decodes to: what a lower-precision keyed memory would
    hold (d·(⌈K·bits/8⌉ + 4) bytes)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
        raise UserError(f"bits: expected an integer from 2 to 16, got {bits!r}")
    top = (1 << (bits - 1)) - 1
    W = np.asarray(W, np.float64)
    scale = (np.abs(W).max(axis=1, keepdims=True) / top).astype(np.float32).astype(np.float64)
    scale[scale == 0] = 1.0
    return np.clip(np.round(W / scale), -top, top) * scale
