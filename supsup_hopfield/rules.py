"""Hopfield learning rules: how one ±1 pattern z changes the weight matrix Ψ (docs/METHOD.md §1–2).

Each rule exists three times, and the tests hold them equal:

* ``plain_update(rule, W, z)`` — the definition, written as directly as possible with full
  d×d temporaries, one pattern at a time (the way the paper's public code does it). Reference.
* ``_update_one`` — a Numba kernel for a single pattern: one pass to get the field Ψz, one pass
  to update Ψ in place. Memory-bandwidth bound; used when only a few patterns arrive at once.
* ``store_blocked`` — exact blocked insertion for many patterns. Over a block of b patterns the
  pending change is low rank, so Ψ is written once per block with one matrix product (GEMM):
  b bandwidth-bound passes become one compute-bound pass, about 6·d² flops per pattern.

The rules, for z ∈ {−1,+1}^d and field f = Ψz:

    hebbian        Ψ += (z zᵀ − I)/d
    storkey-paper  Ψ += (z zᵀ − I − z fᵀ − f zᵀ)/d                  (the paper's simplified rule)
    storkey        w_ij += (z_i z_j − z_i h_ji − h_ij z_j)/d,  h_ij = Σ_{k≠i,j} w_ik z_k,
                   for every i, j including the diagonal (Storkey 1997)
    projection     r = z − f;  Ψ += r rᵀ/(rᵀr)                      (incremental pseudo-inverse)

For symmetric Ψ the Storkey-1997 rule has the closed form used by the fast paths (a = diag Ψ,
g = f − a⊙z is the field without self-coupling):

    Ψ ← (1 + 2/d)·Ψ − (2/d)·diag(a) + ((z − g)(z − g)ᵀ − g gᵀ)/d

and the simplified rule is Ψ += ((z − f)(z − f)ᵀ − f fᵀ − I)/d. Both are a rank-2 change plus a
diagonal (and, for Storkey, a scale), which is what makes them blockable.

The projection rule skips a pattern whose residual is numerically zero (it is already a linear
combination of the stored ones, hence already a fixed point): ‖r‖² ≤ tol·d with tol = 1e-4
(float32) or 1e-10 (float64).

Two rules are about basins, not just fixed points (docs/METHOD.md, "Rules with basins"):

* ``projection-zd`` learns exactly as ``projection`` (Ψ is the projector onto the stored masks'
  span, updated from Ψ and the new pattern alone) but its dynamics drop the self-coupling:
  the field is (Ψ − diag Ψ)s (Kanter & Sompolinsky 1987). A stored pattern then has the
  normalised stability (1 − Ψ_ii)/‖Ψ_i‖ ≈ sqrt((1 − α)/α) at load α = n/d, within a few
  percent of Gardner's bound for α ≤ 0.5, and the basins are large (`supsup-hf basins`).
* ``margin`` is not incremental: it needs the patterns it holds (`learn_margin`). A symmetric,
  zero-diagonal Ψ is learned by whole-matrix perceptron epochs (Krauth & Mézard 1987; Diederich
  & Opper 1987) from the projection-zd start so that every stored pattern z has
  z_i·(Ψz)_i ≥ κ·‖Ψ_i‖ for every unit i, while cues with a fraction `noise` of flipped bits are
  trained to map back to their pattern in one step (training with noise, Gardner, Stroud &
  Wallace 1989), which is what widens the basins at high load. κ is CHOSEN, not maximised:
  by default 0.8 × Gardner's bound α_c⁻¹(n/d) (`gardner_kappa`), lowered by 20% at a time while
  1000 epochs cannot reach it; the κ reached is reported.
"""
import math
from dataclasses import asdict, dataclass

import numba
import numpy as np

from supsup_hopfield.errors import UserError

RULES = ("hebbian", "storkey-paper", "storkey", "projection", "projection-zd", "margin")
# The incremental update each rule learns with ("margin" learns from all its patterns at once).
_LEARNS_AS = {"hebbian": "hebbian", "storkey-paper": "storkey-paper", "storkey": "storkey",
              "projection": "projection", "projection-zd": "projection", "margin": None}
_RULE_ID = {"hebbian": 0, "storkey-paper": 1, "storkey": 2, "projection": 3}
# Whether the dynamics' field includes Ψ's diagonal (the self-coupling).
SELF_COUPLING = {"hebbian": True, "storkey-paper": True, "storkey": True, "projection": True,
                 "projection-zd": False, "margin": False}


def projection_tol(dtype) -> float:
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-10


def theoretical_capacity(rule: str, d: int):
    """Patterns a rule holds as fixed points by theory (random unbiased ±1 patterns), or None.

    hebbian d/(2 ln d) and storkey d/sqrt(2 ln d) are the classical asymptotic results;
    projection holds any d linearly independent patterns; margin, Gardner's 2d; the simplified
    rule has no published closed form.
    """
    if rule == "hebbian":
        return d / (2 * math.log(d))
    if rule == "storkey":
        return d / math.sqrt(2 * math.log(d))
    if rule in ("projection", "projection-zd"):
        return float(d)
    if rule == "margin":  # Gardner's bound at κ = 0 (unconstrained couplings; symmetric ones hold less)
        return 2.0 * d
    return None


def gardner_kappa(alpha: float) -> float:
    """The largest normalised stability κ at which n = alpha·d unbiased random patterns can all
    be stored (Gardner 1988, unconstrained couplings): the κ that solves
    α⁻¹ = ∫_{−κ}^{∞} Dt (t + κ)² = (1 + κ²)Φ(κ) + κφ(κ). 0 for alpha >= 2."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if not alpha > 0:
        raise UserError(f"alpha: expected a load > 0, got {alpha}")
    if alpha >= 2.0:
        return 0.0

    def excess(k):
        return (1 + k * k) * norm.cdf(k) + k * norm.pdf(k) - 1.0 / alpha

    return float(brentq(excess, 0.0, 50.0))


# --------------------------------------------------------------------------------------------
# 1. Plain per-pattern definitions (the reference; full-matrix temporaries)
# --------------------------------------------------------------------------------------------
def plain_update(rule: str, W: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Return Ψ after storing one ±1 pattern z, straight from the rule's definition
    (incremental rules only: `margin` learns with `learn_margin`)."""
    rule = _incremental(rule)
    d = z.shape[0]
    eye = np.eye(d, dtype=W.dtype)
    if rule == "hebbian":
        return W + (np.outer(z, z) - eye) / d
    if rule == "storkey-paper":
        h = W @ z
        return W + (np.outer(z, z) - eye - np.outer(z, h) - np.outer(h, z)) / d
    if rule == "storkey":
        f = W @ z
        a = np.diag(W)
        # H[i, j] = h_ij = sum over k not in {i, j} of w_ik z_k
        H = f[:, None] - (a * z)[:, None] - W * z[None, :]
        np.fill_diagonal(H, f - a * z)
        return W + (np.outer(z, z) - z[:, None] * H.T - H * z[None, :]) / d
    if rule == "projection":
        r = z - W @ z
        rr = float(r @ r)
        if rr <= projection_tol(W.dtype) * d:
            return W
        return W + np.outer(r, r) / rr
    raise UserError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")


# --------------------------------------------------------------------------------------------
# 2. One pattern, in place: Numba kernel (two passes over Ψ)
# --------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _update_one(W, z, rule_id, tol):
    d = W.shape[0]
    f = np.empty(d, dtype=W.dtype)
    for i in numba.prange(d):  # pass 1: field f = Ψz
        acc = 0.0
        for j in range(d):
            acc += W[i, j] * z[j]
        f[i] = acc
    # u uᵀ·su + v vᵀ·sv is the rank-2 change; c scales Ψ; e[i] is added to the diagonal.
    u = np.empty(d, dtype=W.dtype)
    v = np.empty(d, dtype=W.dtype)
    e = np.zeros(d, dtype=W.dtype)
    c = 1.0
    su = 1.0 / d
    sv = -1.0 / d
    if rule_id == 1:  # storkey-paper
        for i in range(d):
            u[i] = z[i] - f[i]
            v[i] = f[i]
            e[i] = -1.0 / d
    elif rule_id == 2:  # storkey
        c = 1.0 + 2.0 / d
        for i in range(d):
            g = f[i] - W[i, i] * z[i]
            u[i] = z[i] - g
            v[i] = g
            e[i] = -2.0 / d * W[i, i]
    else:  # projection
        rr = 0.0
        for i in range(d):
            u[i] = z[i] - f[i]
            v[i] = 0.0
            rr += float(u[i]) * float(u[i])
        if rr <= tol * d:
            return False
        su = 1.0 / rr
        sv = 0.0
    for i in numba.prange(d):  # pass 2: Ψ ← cΨ + su·u uᵀ + sv·v vᵀ + diag(e)
        ui = u[i] * su
        vi = v[i] * sv
        for j in range(d):
            W[i, j] = c * W[i, j] + ui * u[j] + vi * v[j]
        W[i, i] += e[i]
    return True


def _incremental(rule: str) -> str:
    learns = _LEARNS_AS.get(rule)
    if learns is None:
        raise UserError(f"rule: expected an incremental rule ({', '.join(r for r in RULES if _LEARNS_AS[r])}), "
                        f"got {rule!r}; a margin memory learns from all its patterns (learn_margin)")
    return learns


def update_one(rule: str, W: np.ndarray, z: np.ndarray) -> None:
    """Store one ±1 pattern (same dtype as W) into W in place (projection skips a pattern
    already in its span: it is a fixed point already)."""
    rule = _incremental(rule)
    if rule == "hebbian":  # rank one, no field needed
        W += np.outer(z, z / W.shape[0])
        W[np.diag_indices_from(W)] -= 1.0 / W.shape[0]
    else:
        _update_one(W, z, _RULE_ID[rule], projection_tol(W.dtype))


# --------------------------------------------------------------------------------------------
# 3. Many patterns: exact blocked insertion
# --------------------------------------------------------------------------------------------
def _apply_low_rank(W, A, B, sigma):
    """W ← σ·(W + AᵀB) in place, AᵀB as one GEMM (A, B: (m, d))."""
    if sigma != 1.0:
        W *= sigma
        A = A * sigma
    W += A.T @ B


def store_blocked(rule: str, W: np.ndarray, Z: np.ndarray, block: int = 256, inner: int = 8) -> int:
    """Store the ±1 patterns Z (n, d), in order, into W in place; returns how many were stored.

    Two levels: every `block` patterns W is written once (one GEMM of rank 2·block); inside a
    block the fields of each run of `inner` patterns are corrected for the earlier runs with two
    small GEMMs, and only the run's own terms are applied one by one (Numba, `_run`).
    """
    rule = _incremental(rule)
    n, d = Z.shape
    if rule == "hebbian":  # the sum of outer products is the whole story
        for s in range(0, n, block):
            Zb = Z[s:s + block]
            G = Zb.T @ Zb  # integer sums, exact
            G /= d  # one rounding
            W += G
            W[np.diag_indices_from(W)] -= len(Zb) / d
        return n
    stored = 0
    for s in range(0, n, block):
        stored += _store_block(rule, W, np.ascontiguousarray(Z[s:s + block]), inner)
    return stored


def _store_block(rule, W, Z, inner):
    """One block. Ψ_k = σ_k (Ψ0 + AᵀB + diag δ): Ψ0 = W is untouched until the block ends."""
    b, d = Z.shape
    dt = W.dtype
    Q = Z @ W.T  # (b, d): Ψ0 z_k for every pattern of the block, one GEMM
    A = np.zeros((2 * b, d), dt)  # pending low-rank change, up to two rows per pattern
    B = np.zeros((2 * b, d), dt)
    delta = np.zeros(d, np.float64)  # pending diagonal change
    diag = np.diag(W).astype(np.float64)  # diag(Ψ0 + AᵀB + diag δ), kept up to date
    c = 1.0 + 2.0 / d if rule == "storkey" else 1.0
    m, sigma, stored = 0, 1.0, 0
    for r0 in range(0, b, inner):
        r1 = min(r0 + inner, b)
        if m:  # correct this run's fields for the rows added by earlier runs: two GEMMs
            Q[r0:r1] += (Z[r0:r1] @ B[:m].T) @ A[:m]
        m, sigma, k = _run(_RULE_ID[rule], Z, Q, A, B, m, delta, diag, sigma, c,
                           projection_tol(dt), r0, r1)
        stored += k
    if m:  # Ψ ← σ (Ψ0 + AᵀB + diag δ): one GEMM
        W[np.diag_indices_from(W)] += delta.astype(dt)
        _apply_low_rank(W, A[:m], B[:m], sigma)
    return stored


@numba.njit(cache=True)
def _run(rule_id, Z, Q, A, B, m, delta, diag, sigma, c, tol, r0, r1):
    """Store patterns r0..r1 of a block, given their fields corrected up to row m of A, B.
    Appends their rows to A, B and updates delta, diag in place. Returns (m, σ, stored)."""
    d = Z.shape[1]
    m_run = m
    stored = 0
    f = np.empty(d)
    for k in range(r0, r1):
        for j in range(d):
            f[j] = Q[k, j] + delta[j] * Z[k, j]
        for r in range(m_run, m):  # rows added earlier in this run
            coef = np.dot(B[r], Z[k])  # BLAS dot: a plain loop here would not vectorise
            for j in range(d):
                f[j] += coef * A[r, j]
        for j in range(d):
            f[j] *= sigma  # now the field Ψ_k z_k
        if rule_id == 3:  # projection: r = z − f, rows r/σ and r/rᵀr
            rr = 0.0
            for j in range(d):
                rr += (Z[k, j] - f[j]) ** 2
            if rr <= tol * d:
                continue
            for j in range(d):
                rj = Z[k, j] - f[j]
                A[m, j] = rj / sigma
                B[m, j] = rj / rr
                diag[j] += float(A[m, j]) * float(B[m, j])
            m += 1
        else:  # storkey-paper / storkey: rows u/σ', u/d and v/σ', −v/d; diagonal e
            sigma_next = sigma * c
            for j in range(d):
                if rule_id == 1:
                    v = f[j]
                    e = -1.0 / d
                else:
                    a = sigma * diag[j]  # diag Ψ_k
                    v = f[j] - a * Z[k, j]
                    e = -2.0 / d * a
                u = Z[k, j] - v
                A[m, j] = u / sigma_next
                B[m, j] = u / d
                A[m + 1, j] = v / sigma_next
                B[m + 1, j] = -v / d
                delta[j] += e / sigma_next
                diag[j] += (float(A[m, j]) * float(B[m, j]) + float(A[m + 1, j]) * float(B[m + 1, j])
                            + e / sigma_next)
            sigma = sigma_next
            m += 2
        stored += 1
    return m, sigma, stored


# --------------------------------------------------------------------------------------------
# 4. The margin rule: whole-matrix perceptron epochs over all held patterns
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarginConfig:
    """How a `margin` memory learns (module docstring). Defaults measured at d = 512 with random
    patterns: at load 0.5, 300 epochs with 10% training noise recall 98% of 10%-noise cues."""

    kappa: float | None = None  # None: 0.8 × gardner_kappa(n/d); lowered 20% at a time if out of reach
    noise: float = 0.1  # fraction of bits flipped in the training cues (0: margin only)
    epochs: int = 300  # most epochs with noisy cues (stops early once they are all recalled)
    lr: float = 1.0  # step, relative to the row norms of Ψ
    seed: int = 0  # the noisy cues' generator

    def __post_init__(self):
        if self.kappa is not None and not (isinstance(self.kappa, (int, float)) and self.kappa >= 0
                                           and math.isfinite(self.kappa)):
            raise UserError(f"kappa: expected None (automatic) or a number >= 0, got {self.kappa!r}")
        if not (isinstance(self.noise, (int, float)) and 0 <= self.noise < 0.5):
            raise UserError(f"noise: expected a fraction in [0, 0.5), got {self.noise!r}")
        for name in ("epochs", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise UserError(f"{name}: expected an integer >= 0, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise UserError(f"lr: expected a positive number, got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def stabilities(W: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Normalised stabilities z_i (Ψz)_i / ‖Ψ_i‖ of the ±1 patterns Z (n, d): (n, d) float64."""
    Zf = Z.astype(W.dtype)
    norms = np.linalg.norm(W, axis=1).astype(np.float64)
    norms[norms == 0] = 1.0
    return (Zf * (Zf @ W)).astype(np.float64) / norms


def flip_bits(Z: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of the ±1 patterns Z with exactly round(fraction·d) random bits flipped per row."""
    n, d = Z.shape
    k = int(round(fraction * d))
    out = Z.copy()
    if k:
        idx = np.argpartition(rng.random((n, d)), k - 1, axis=1)[:, :k]  # k distinct per row
        np.negative.at(out, (np.arange(n)[:, None], idx))
    return out


def plain_margin_epoch(W: np.ndarray, Z: np.ndarray, cues: np.ndarray | None, kappa: float,
                       lr: float) -> np.ndarray:
    """One epoch of the margin rule written unit by unit and pattern by pattern (the reference
    for `_margin_epoch`). For every unit i and pattern μ below the margin, row i gains
    z^μ_i z^μ (and, for a training cue z̃^μ whose unit i comes out wrong, z^μ_i z̃^μ), scaled by
    lr·‖Ψ_i‖/(d·√d); the change is symmetrised and the diagonal kept at zero."""
    n, d = Z.shape
    norms = [math.sqrt(sum(float(W[i, j]) ** 2 for j in range(d))) or 1.0 for i in range(d)]
    # (the whole-matrix version also rescales Ψ to a mean row norm of 1 after each epoch, which
    # changes no stability and keeps long runs finite)
    D = np.zeros((d, d))
    for i in range(d):
        for mu in range(n):
            z = Z[mu].astype(np.float64)
            if z[i] * float(W[i] @ z) / norms[i] < kappa:
                D[i] += z[i] * z
            if cues is not None:
                c = cues[mu].astype(np.float64)
                if z[i] * float(W[i] @ c) / norms[i] < 0:
                    D[i] += z[i] * c
        D[i] *= lr * norms[i] / (d * math.sqrt(d))
    W = W + ((D + D.T) / 2).astype(W.dtype)
    np.fill_diagonal(W, 0)
    return W


def _margin_epoch(W: np.ndarray, Zf: np.ndarray, cues: np.ndarray | None, kappa: float, lr: float):
    """`plain_margin_epoch` as whole-matrix steps, in place: the fields of all patterns (and
    cues) are one GEMM each, the change two more. Returns (clean violations, cue violations)."""
    d = W.shape[0]
    norms = np.linalg.norm(W, axis=1)
    norms[norms == 0] = 1.0
    A = (Zf * (Zf @ W) / norms < kappa) * Zf  # (n, d): z^μ_i where unit i of pattern μ is short
    D = A.T @ Zf  # (d, d), row i = Σ_μ z^μ_i z^μ over the short ones
    wrong = 0
    if cues is not None:
        Ac = (Zf * (cues @ W) / norms < 0) * Zf
        D += Ac.T @ cues
        wrong = int(np.count_nonzero(Ac))
    D *= (lr / (d * math.sqrt(d))) * norms[:, None]
    D += D.T
    D *= 0.5
    W += D
    np.fill_diagonal(W, 0)
    W /= np.sqrt(np.mean(W * W)) * math.sqrt(d) or 1.0  # stabilities are scale-free: keep ‖Ψ_i‖ ≈ 1
    return int(np.count_nonzero(A)), wrong


def learn_margin(Z: np.ndarray, config: MarginConfig = MarginConfig(), dtype=np.float32,
                 start: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Learn a symmetric zero-diagonal Ψ holding the ±1 patterns Z (n, d) with margin (module
    docstring). `start`: Ψ to continue from (default: the projection-zd matrix of Z).
    Returns (Ψ, info): info has `kappa` (the smallest normalised stability reached), `target`
    (the κ asked for, after any lowering), `epochs`, `cue_errors` (fraction of units of the last
    epoch's training cues that came out wrong)."""
    n, d = Z.shape
    if start is None:
        W = np.zeros((d, d), dtype)
        store_blocked("projection", W, Z.astype(dtype))
    else:
        W = np.array(start, dtype=dtype)
    np.fill_diagonal(W, 0)
    info = {"kappa": 0.0, "target": 0.0, "epochs": 0, "cue_errors": 0.0}
    if n == 0:
        return W, info
    kappa = config.kappa if config.kappa is not None else 0.8 * gardner_kappa(n / d)
    Zf = Z.astype(dtype)
    rng = np.random.default_rng(config.seed)
    epochs, wrong = 0, 0
    for epochs in range(1, config.epochs + 1):  # 1. margin and noisy cues together
        cues = flip_bits(Z, config.noise, rng).astype(dtype) if config.noise > 0 else None
        short, wrong = _margin_epoch(W, Zf, cues, kappa, config.lr)
        if short == 0 and wrong <= 1e-4 * n * d:
            break
    while True:  # 2. the margin alone, lowering κ by 20% while it stays out of reach
        for _ in range(1000):
            short, _ = _margin_epoch(W, Zf, None, kappa, config.lr)
            epochs += 1
            if short == 0:
                break
        if short == 0 or kappa < 1e-3:
            break
        kappa *= 0.8
    info.update(kappa=float(stabilities(W, Z).min()), target=float(kappa), epochs=epochs,
                cue_errors=wrong / (n * d))
    return W, info
