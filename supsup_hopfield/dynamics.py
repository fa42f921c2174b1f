"""Hopfield recall dynamics: sign updates s_i ← sign(Σ_j Ψ_ij s_j), sign(0) = +1 (docs/METHOD.md §1).

* synchronous: every neuron at once, s ← sign(Ψs), batched over cues with one matrix product;
* asynchronous: one neuron at a time in a fresh random order each sweep. The Numba kernel keeps
  the field Ψs up to date incrementally (O(d) per flipped neuron instead of O(d) per visited
  neuron); ``plain_async`` is the obvious per-neuron loop, kept as the reference. Every rule
  builds a symmetric Ψ (exactly so in real arithmetic, to the last bit or so in floating point),
  so when neuron j flips the kernel adds row j, contiguous in memory, as the column it equals.

* annealed (mean-field): soft states x ∈ [−1, 1]^d, x ← tanh(β·h/rms(h)) with h = Jx, β raised
  from 0.5 to 3 in 50 steps (batched over cues: one GEMM a step), then sign and asynchronous
  recall to an exact fixed point. A soft state keeps the cue's weak evidence instead of
  committing every neuron at its first visit, and the normalisation by the field's rms makes
  the schedule independent of the rule's scale. From cues far from their pattern it recalls
  what hard dynamics miss: cued with their seeded initial masks (≈ 35% of bits away), 249 of
  250 trained hopnet tasks came back exact from projection-zd memories, against 137 with
  asynchronous recall alone (`bench/recovery.py`, docs/METHOD.md).

J is the matrix a memory's dynamics use (`HopfieldMemory.couplings`: Ψ, or Ψ without its
diagonal for the rules that drop the self-coupling). Positions where `clamp` is True are never
updated (content-addressed recall from a partial cue). Each stops at the first sweep that changes
nothing, or after `max_sweeps`.
"""
import numba
import numpy as np

MODES = ("sync", "async", "anneal")
ANNEAL_BETAS = np.linspace(0.5, 3.0, 50)  # the mean-field schedule (module docstring)


def sign(x):
    """±1 int8 with sign(0) = +1."""
    return np.where(x >= 0, 1, -1).astype(np.int8)


def recall_sync(W, S, clamp, max_sweeps):
    """Synchronous recall of the ±1 states S (n, d) in place; returns sweeps used per cue."""
    n = S.shape[0]
    sweeps = np.zeros(n, np.int64)
    active = np.arange(n)
    for _ in range(max_sweeps):
        if active.size == 0:
            break
        cur = S[active]
        new = sign(cur.astype(W.dtype) @ W.T)
        new[:, clamp] = cur[:, clamp]
        changed = (new != cur).any(axis=1)
        S[active] = new
        sweeps[active] += 1
        active = active[changed]
    return sweeps


@numba.njit(cache=True)
def _async_sweeps(W, s, field, free, orders):
    """Run sweeps (one row of `orders` each) on one state; returns (sweeps run, converged)."""
    d = s.shape[0]
    for t in range(orders.shape[0]):
        flips = 0
        for idx in orders[t]:
            if not free[idx]:
                continue
            new = 1 if field[idx] >= 0.0 else -1
            if new != s[idx]:
                step = 2.0 * new
                col = W[idx]  # = column idx: Ψ is symmetric (see module docstring)
                for i in range(d):
                    field[i] += step * col[i]
                s[idx] = new
                flips += 1
        if flips == 0:
            return t + 1, True
    return orders.shape[0], False


def recall_async(W, S, clamp, max_sweeps, rng, chunk=4):
    """Asynchronous recall of the ±1 int8 states S (n, d) in place; returns sweeps per cue."""
    n, d = S.shape
    free = ~clamp
    sweeps = np.zeros(n, np.int64)
    base = np.arange(d)
    fields = (S.astype(W.dtype) @ W.T).astype(np.float64)  # (n, d), one GEMM
    for c in range(n):
        s = S[c]
        field = fields[c]
        while sweeps[c] < max_sweeps:
            k = min(chunk, max_sweeps - sweeps[c])
            orders = rng.permuted(np.broadcast_to(base, (k, d)), axis=1)
            ran, done = _async_sweeps(W, s, field, free, orders)
            sweeps[c] += ran
            if done:
                break
    return sweeps


def plain_async(W, s, clamp, max_sweeps, rng, chunk=4):
    """Reference asynchronous recall of one state: a per-neuron Python loop, field recomputed at
    every visit. Draws its random orders exactly as `recall_async` does."""
    s = s.copy()
    d = s.shape[0]
    W64 = W.astype(np.float64)
    base = np.arange(d)
    done_sweeps = 0
    while done_sweeps < max_sweeps:
        k = min(chunk, max_sweeps - done_sweeps)
        orders = rng.permuted(np.broadcast_to(base, (k, d)), axis=1)
        for order in orders:
            changed = False
            for i in order:
                if clamp[i]:
                    continue
                new = 1 if W64[i] @ s >= 0 else -1
                if new != s[i]:
                    s[i] = new
                    changed = True
            done_sweeps += 1
            if not changed:
                return s, done_sweeps
    return s, done_sweeps


def anneal(W, S, clamp, betas=ANNEAL_BETAS) -> np.ndarray:
    """Mean-field annealing of the ±1 cues S (n, d): returns the signs of the final soft states
    (int8, clamped positions kept at the cue's values)."""
    X = S.astype(W.dtype)
    free = ~clamp
    for beta in betas:
        H = X @ W.T  # (n, d), one GEMM for all cues (J symmetric, so W.T is free)
        H *= beta / (np.sqrt(np.mean(H * H, axis=1, keepdims=True)) + 1e-30)
        X[:, free] = np.tanh(H[:, free])
    return sign(X)


def recall_anneal(W, S, clamp, max_sweeps, rng):
    """Annealed recall of the ±1 int8 states S (n, d) in place (`anneal`, then `recall_async`
    to an exact fixed point); returns the asynchronous sweeps per cue."""
    S[:] = anneal(W, S, clamp)
    return recall_async(W, S, clamp, max_sweeps, rng)
