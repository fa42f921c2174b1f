"""The Hopfield memory: a fixed-size d×d matrix Ψ holding binary masks as attractors.

HopSupSup (Wortsman et al. 2020, §3.5 and docs/METHOD.md §1–3) stores every task's neuron mask m as
z = 2m − 1 in a Hopfield matrix and later recovers it by descending the energy −½ sᵀΨs. This
module is the public face of that memory; the rules live in `rules.py`, recall in `dynamics.py`.

Conventions (the same for every rule):

* patterns are ±1, or 0/1 / boolean masks converted to z = 2m − 1; an array holding only 1s is
  read as ±1 (it is the same pattern either way);
* the field is Ψs with the diagonal of Ψ included: zero for `hebbian`; small and negative on
  average for `storkey-paper`; kept, as Storkey (1997) defines it, for `storkey`; the projector's
  own diagonal for `projection` (so Ψz = z exactly for a stored pattern). Two rules drop it
  (`couplings` is Ψ − diag Ψ): `projection-zd`, which keeps the projector in Ψ so that the next
  pattern can still be added from Ψ alone, and `margin`, whose Ψ has a zero diagonal;
* sign(0) = +1.

A `margin` memory HOLDS the patterns it stores (`patterns`) and relearns Ψ from all of them
(`rules.learn_margin`) the first time Ψ is read after a `store`: storing is cheap, the next
recall, `stable`, `energy`, `weights` or save pays for the learning. Its archive keeps the
patterns beside Ψ (bit-packed: d/8 bytes each), so it can be resumed and grown.

Example::

    >>> mem = HopfieldMemory(512, rule="storkey").store(patterns)   # (n, 512) of ±1
    >>> mem.stable(patterns).all()
    True
"""
import numpy as np

from supsup_hopfield import dynamics, rules
from supsup_hopfield.errors import UserError
from supsup_hopfield.packed import packed_bytes
from supsup_hopfield.rules import RULES, SELF_COUPLING, MarginConfig

# Below this many patterns per call, the per-pattern Numba kernel beats blocking.
_BLOCK_FROM = 8


def check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise UserError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt


def check_patterns(x, dim: int, name: str = "patterns"):
    """Validate one pattern (dim,) or many (n, dim) of ±1 or 0/1 values.

    Returns (Z, single): Z is a (n, dim) int8 array of ±1, `single` tells whether x was 1-D.
    """
    a = np.asarray(x)
    if a.dtype == object or not (a.dtype == bool or np.issubdtype(a.dtype, np.number)):
        raise UserError(f"{name}: expected a numeric or boolean array, got dtype {a.dtype}")
    if a.ndim not in (1, 2):
        raise UserError(f"{name}: expected shape ({dim},) or (n, {dim}), got {a.shape}")
    single = a.ndim == 1
    a2 = a.reshape(1, -1) if single else a
    if a2.shape[1] != dim:
        raise UserError(f"{name}: expected length {dim}, got {a2.shape[1]}")
    if a.dtype == bool:
        return (2 * a2.astype(np.int8) - 1), single
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a2).any():
        raise UserError(f"{name}: contains NaN; expected only ±1 or 0/1 values")
    pm = (a2 == 1) | (a2 == -1)
    if pm.all():
        return np.where(a2 > 0, 1, -1).astype(np.int8), single
    if ((a2 == 0) | (a2 == 1)).all():
        return (2 * (a2 == 1).astype(np.int8) - 1), single
    bad = a2[~pm & (a2 != 0)].ravel()
    shown = bad[0] if bad.size else "a mix of -1, 0 and 1"
    raise UserError(f"{name}: expected only ±1 values or a 0/1 mask, found {shown}")


def block_edges(length: int, block: int) -> list[int]:
    """Edges [0, b, 2b, ..., length] cutting a mask of `length` entries into memories of at most
    `block` entries; a 1-entry remainder joins the block before it (a memory needs dim >= 2)."""
    edges = list(range(0, length, block)) + [length]
    if len(edges) > 2 and edges[-1] - edges[-2] == 1:
        del edges[-2]
    return edges


class HopfieldMemory:
    """A d×d Hopfield memory with one of the rules `hebbian`, `storkey-paper`, `storkey`,
    `projection`, `projection-zd`, `margin`. Patterns are stored in order, one at a time by
    definition (the fast paths are exact re-arrangements of that); `margin` relearns from all
    the patterns it holds (module docstring), with the settings of `margin` (a MarginConfig)."""

    def __init__(self, dim: int, rule: str = "storkey", dtype="float32", margin: MarginConfig | None = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
            raise UserError(f"dim: expected an integer >= 2, got {dim!r}")
        if rule not in RULES:
            raise UserError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
        if margin is not None and not isinstance(margin, MarginConfig):
            raise UserError(f"margin: expected a MarginConfig or None, got {type(margin).__name__}")
        self.dim = int(dim)
        self.rule = rule
        self.dtype = check_dtype(dtype)
        self.margin = (margin or MarginConfig()) if rule == "margin" else None
        self._W = np.zeros((self.dim, self.dim), self.dtype)
        self._couplings = None  # cache of Ψ without its diagonal, for rules without self-coupling
        self._held = []  # margin: the ±1 int8 patterns held, in blocks
        self._stale = False  # margin: Ψ must be relearned before it is read
        self._learned = {}  # margin: what the last learning reached (rules.learn_margin's info)
        self.n_stored = 0

    @classmethod
    def from_state(cls, weights, rule: str, n_stored: int, patterns=None,
                   margin: MarginConfig | None = None, learned: dict | None = None) -> "HopfieldMemory":
        """Rebuild a memory from saved weights (square float32/float64), its rule and count; a
        `margin` memory also needs the patterns it holds (n_stored of them)."""
        w = np.asarray(weights)
        if w.ndim != 2 or w.shape[0] != w.shape[1]:
            raise UserError(f"weights: expected a square matrix, got shape {w.shape}")
        mem = cls(w.shape[0], rule, w.dtype, margin)
        if not np.isfinite(w).all():
            raise UserError("weights: contain NaN or infinity")
        if not np.allclose(w, w.T, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(w).max()))):
            raise UserError("weights: expected a symmetric matrix (every rule builds one)")
        if int(n_stored) < 0:
            raise UserError(f"n_stored: expected >= 0, got {n_stored}")
        if rule == "margin":
            if patterns is None:
                raise UserError("patterns: a margin memory needs the patterns it holds; pass them "
                                "(e.g. the run's explicit masks)")
            Z, _ = check_patterns(np.asarray(patterns).reshape(-1, mem.dim), mem.dim)
            if len(Z) != int(n_stored):
                raise UserError(f"patterns: expected {n_stored} (n_stored), got {len(Z)}")
            mem._held = [Z]
            mem._learned = dict(learned or {})
        elif patterns is not None:
            raise UserError(f"patterns: only a margin memory holds its patterns, this one is {rule!r}")
        mem._W = np.array(w, dtype=mem.dtype, order="C")
        mem.n_stored = int(n_stored)
        return mem

    def __repr__(self):
        return f"HopfieldMemory(dim={self.dim}, rule={self.rule!r}, dtype='{self.dtype}', n_stored={self.n_stored})"

    def _ready(self) -> np.ndarray:
        """Ψ, relearned first if this margin memory has new patterns."""
        if self._stale:
            self._W, self._learned = rules.learn_margin(self.patterns, self.margin, self.dtype)
            self._couplings = None
            self._stale = False
        return self._W

    @property
    def learned(self) -> dict:
        """margin: what learning reached (`kappa`, the smallest normalised stability; `target`;
        `epochs`; `cue_errors`), learning first if needed; {} for other rules."""
        self._ready()
        return dict(self._learned)

    @property
    def weights(self) -> np.ndarray:
        """Ψ as a read-only (dim, dim) view."""
        v = self._ready().view()
        v.flags.writeable = False
        return v

    @property
    def couplings(self) -> np.ndarray:
        """The matrix the dynamics use: Ψ, or Ψ without its diagonal for rules that drop the
        self-coupling (`projection-zd`). Read-only."""
        W = self._ready()
        if SELF_COUPLING[self.rule]:
            v = W.view()
        else:
            if self._couplings is None:
                self._couplings = W.copy()
                np.fill_diagonal(self._couplings, 0)
            v = self._couplings.view()
        v.flags.writeable = False
        return v

    @property
    def patterns(self) -> np.ndarray | None:
        """The ±1 int8 patterns (n_stored, dim) a `margin` memory holds; None for other rules."""
        if self.rule != "margin":
            return None
        if len(self._held) != 1:
            self._held = [np.concatenate(self._held) if self._held else np.zeros((0, self.dim), np.int8)]
        v = self._held[0].view()
        v.flags.writeable = False
        return v

    @property
    def nbytes(self) -> int:
        """Bytes the memory keeps: Ψ, and for `margin` the patterns it holds, bit-packed."""
        held = self.n_stored * packed_bytes(self.dim) if self.rule == "margin" else 0
        return self._W.nbytes + held

    def store(self, patterns) -> "HopfieldMemory":
        """Store one pattern (dim,) or many (n, dim), in order. Returns the memory.

        `n_stored` counts every pattern given, including ones the projection rule found
        already in its span (those change nothing: they are fixed points already).
        """
        Z, _ = check_patterns(patterns, self.dim)
        self._couplings = None
        if self.rule == "margin":
            self._held.append(Z)
            self._stale = True
            self.n_stored += len(Z)
            return self
        Zf = Z.astype(self.dtype)
        if len(Zf) >= _BLOCK_FROM:
            rules.store_blocked(self.rule, self._W, Zf)
        else:
            for z in Zf:
                rules.update_one(self.rule, self._W, z)
        self.n_stored += len(Zf)
        return self

    def energy(self, states):
        """E(s) = −½ sᵀJs per state (float64), J = `couplings`; a scalar for one state."""
        Z, single = check_patterns(states, self.dim, "states")
        Zd = Z.astype(np.float64)
        E = -0.5 * np.einsum("nd,nd->n", Zd @ self.couplings.T.astype(np.float64), Zd)
        return float(E[0]) if single else E

    def stable(self, patterns):
        """True where a pattern is a fixed point of one synchronous update sign(Jz)."""
        Z, single = check_patterns(patterns, self.dim)
        ok = (dynamics.sign(Z.astype(self.dtype) @ self.couplings.T) == Z).all(axis=1)
        return bool(ok[0]) if single else ok

    def recall(self, cues, mode: str = "sync", max_sweeps: int = 100, clamp=None, seed=None,
               return_sweeps: bool = False):
        """Run the dynamics from each cue until a fixed point (or `max_sweeps`).

        cues: (dim,) or (n, dim), ±1 or 0/1. mode: "sync" (all neurons at once), "async"
        (random order each sweep, drawn from `seed`) or "anneal" (mean-field annealing of soft
        states, then "async" to an exact fixed point: `dynamics.recall_anneal`; far larger
        basins from weak cues). clamp: boolean (dim,) of positions held at the cue's values.
        Returns int8 ±1 states of the cues' shape (and the sweeps used per cue with
        return_sweeps=True).
        """
        S, single = check_patterns(cues, self.dim, "cues")
        if mode not in dynamics.MODES:
            raise UserError(f"mode: expected one of {', '.join(dynamics.MODES)}, got {mode!r}")
        if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, (int, np.integer)) or max_sweeps < 1:
            raise UserError(f"max_sweeps: expected an integer >= 1, got {max_sweeps!r}")
        if clamp is None:
            clamp = np.zeros(self.dim, bool)
        else:
            clamp = np.asarray(clamp)
            if clamp.dtype != bool or clamp.shape != (self.dim,):
                raise UserError(f"clamp: expected a boolean array of shape ({self.dim},), "
                                f"got {clamp.dtype} {clamp.shape}")
        S = S.copy()
        J = self.couplings
        if mode == "sync":
            sweeps = dynamics.recall_sync(J, S, clamp, int(max_sweeps))
        elif mode == "async":
            sweeps = dynamics.recall_async(J, S, clamp, int(max_sweeps), np.random.default_rng(seed))
        else:
            sweeps = dynamics.recall_anneal(J, S, clamp, int(max_sweeps), np.random.default_rng(seed))
        out = S[0] if single else S
        if return_sweeps:
            return out, (int(sweeps[0]) if single else sweeps)
        return out
