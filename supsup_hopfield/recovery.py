"""HopSupSup recovery: a task's neuron masks recovered from the Hopfield memories and the task's
unlabelled test batches, without the task id (Wortsman et al. 2020, §3.5 and Appendix; DESIGN.md
§1 "HopSupSup").

The paper's method (`_descend`): learn real scores s_l per masked layer; the state is
z_l = 2·1[s_l >= 0] − 1 with a straight-through gradient (dz/ds = 2) and the network runs under the
float mask 1[s_l >= 0]. At step t = 1..T minimise

    (1 − t/T)·H(outputs) + γ·(t/T)·Σ_l E_Ψl(z_l),      E_Ψ(z) = −½ zᵀΨz,

H the mean softmax entropy over the batch, by SGD (lr 500, momentum 0.9, weight decay 1e-4 as in
the paper's code, γ = 1.5e-3), one test batch per step, one pass (T = number of batches). Entropy
pulls towards a mask that makes the outputs confident; the energy, ramped in, pulls the state into
an attractor: ∂E/∂s_l = −2Ψ_l z_l, every score moves towards the sign of its field.

Initial scores (`init`). The paper's code starts from the mean of the stored ±1 masks
(`"stored-mean"`): a memory does not hold it, so it needs the explicit masks and serves as the
paper baseline only. From the memory alone: `"empty"` (every score −b: no neuron on), `"full"`
(scores 0: every neuron on) or `"uniform"` (U(−b, b): a random half). Ψ cannot tell a mask from
its complement (Ψ(−z) = −Ψz), so the start decides which side the descent falls on: trained
threshold masks are below 50% dense (~42% measured), so the empty mask overlaps every stored
mask positively (a symmetric mixture, much like the paper's start) while the full mask overlaps
every one negatively and is pulled towards complements.

Measured (split Fashion-MNIST, hopnet 784-2048-2048-10, 5 tasks × 100 steps, archives of seeds
0-2, storkey per-layer memories; 15 tasks; exact = Hamming 0 on both layers):

  | method                                         | exact | accuracy gap to GG, seeds 0/1/2 |
  | paper: stored-mean start, last state kept      | 14/15 | 4.11 / 0.00 / 0.00 points       |
  |   the same + recall finish                     | 14/15 | 0.64 / 0.00 / 0.00              |
  | paper descent from empty / uniform / full      | 9 / 3 / 1 | 20-59 / 58-96 / 79 points   |
  | paper descent from empty, no weight decay      |  1/15 | 39-49 points                    |
  | empty + recall, 3 descents, entropy selection  | 12/15 | 0.39 / 39.58 / 0.00             |
  | empty + recall, 1 descent, cues, selection     | 15/15 | 0 / 0 / 0                       |
  | default (3 descents, recall, cues, selection)  | 15/15 | 0 / 0 / 0 (~5 s per task, CPU)  |

The descent's failures settle on ANOTHER task's exact mask (Hamming ~1000 to the right one) or
on a spurious fixed point; weight decay matters (scores stay small, so the ramped-in energy can
overrule the early entropy steps).

What makes it reliable. The stored masks are easy to tell apart by the output entropy on the
task's own batches (the right one lowest, by 0.14 nats or more, on every task and seed
measured), and a memory of a few masks has few other attractors (random cues land exactly on
±a stored mask 55-65% of the time, measured; 8 cues per mask miss a given ±pair w.p. < 1%).
So after the paper's descent:

  1. `restarts` descents (the first from `init`, the others from seeded uniform scores), each
     finished by asynchronous Hopfield recall (`finish="recall"`): an exact attractor;
  2. `cues × n_stored` random ±1 cues per memory recalled to attractors, and the complement of
     every attractor found (a fixed point too): the pool of candidates per memory;
  3. every combination of one attractor per memory scored by the mean output entropy on the
     first `selection_batches` batches (no labels, no task id); the lowest wins. With per-layer
     memories the layers must be chosen JOINTLY (the right layer-0 mask beside a wrong layer-1
     mask gives entropy as high as a wrong pair), so the search is exhaustive while the pools'
     product is at most `max_combinations` (a staged forward shares each layer's work over the
     next layer's candidates, so ~40 × 40 pairs cost little), else coordinate search from every
     descent's result.
Every result is then an exact fixed point of its memory. `RecoveryConfig.paper()` is the plain
method: one descent from the stored-mean start, no recall, no selection.

Limits. Entropy must identify the task: on small networks it does not (hopnet 64-64 trained 100
steps: another task's mask gives lower entropy than the right one), and no search fixes that.
Cues enumerate a memory's attractors only while it holds few masks (~8 cues per mask); with
hundreds of masks the pools outgrow the exhaustive search and the coordinate search can stop at
a matched wrong pair of layers.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from supsup_hopfield.basenet import BN_EPS, BaseNet, derive_seed
from supsup_hopfield.errors import UserError
from supsup_hopfield.inference import entropy_objective

RECOVERY_TAG = 3  # random-stream tag of recovery (basenet uses 0-2)
INITS = ("empty", "full", "uniform", "stored-mean")
FINISHES = ("recall", "none")
_CHUNK = 32  # last-layer candidates evaluated together by the staged search


def _is_int(v, low: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= low


@dataclass(frozen=True)
class RecoveryConfig:
    """How a task's masks are recovered. Defaults: the paper's descent plus the reliability
    steps measured to help (module docstring); `paper()` gives the plain method."""

    lr: float = 500.0  # the paper's; scores are unbounded, so one step may flip many neurons
    momentum: float = 0.9
    weight_decay: float = 1e-4  # the paper code's; with lr 500 it shrinks scores by 5% a step,
    #                             which lets the ramped-in energy overrule early entropy steps
    gamma: float = 1.5e-3  # energy weight at the last step (E ≈ −d/2 at a stored mask)
    batch_size: int = 64  # the paper's test batch; BatchNorm uses each batch's statistics
    steps: Optional[int] = None  # None: one pass over the batches (T = their number)
    init: str = "empty"  # first descent's start (module docstring)
    init_scale: float = 1e-2  # b of the "empty" (−b) and "uniform" (U(−b, b)) starts
    restarts: int = 3  # descents; the second and later start from seeded uniform scores
    finish: str = "recall"  # "recall": async Hopfield recall from each descent's last state
    cues: int = 8  # random cues per stored pattern and memory (~coupon collector: 2k basins)
    selection_batches: int = 4  # batches whose mean output entropy ranks the candidates
    max_combinations: int = 4096  # exhaustive joint search up to this many, else coordinate
    max_sweeps: int = 100  # recall limit

    def __post_init__(self):
        def bad(name, expected, got, fix):
            raise UserError(f"{name}: expected {expected}, got {got!r}; {fix}")

        for name in ("lr", "init_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                bad(name.replace("_", " "), "a positive number", v, "pass e.g. 500 for lr, 1e-2 for init scale")
        for name in ("gamma", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                bad(name.replace("_", " "), "a number >= 0", v, "pass e.g. 1.5e-3 for gamma, 1e-4 for weight decay")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            bad("momentum", "a number in [0, 1)", self.momentum, "pass e.g. 0.9")
        if not _is_int(self.batch_size, 2):
            bad("batch size", "an integer >= 2 (BatchNorm needs two rows)", self.batch_size, "pass e.g. 64")
        if self.steps is not None and not _is_int(self.steps, 1):
            bad("steps", "None (one pass over the batches) or an integer >= 1", self.steps, "pass e.g. 32")
        if self.init not in INITS:
            bad("init", f"one of {', '.join(INITS)}", self.init, "pick one of those")
        if not _is_int(self.restarts, 1):
            bad("restarts", "an integer >= 1", self.restarts, "pass 1 for a single descent")
        if self.finish not in FINISHES:
            bad("finish", f"one of {', '.join(FINISHES)}", self.finish, "pick one of those")
        for name, low in (("cues", 0), ("selection_batches", 1), ("max_combinations", 1), ("max_sweeps", 1)):
            if not _is_int(getattr(self, name), low):
                bad(name.replace("_", " "), f"an integer >= {low}", getattr(self, name), f"pass {low} or more")

    @classmethod
    def paper(cls, **overrides) -> "RecoveryConfig":
        """The paper code's plain method: one descent from the mean of the stored masks (needs
        the explicit masks: `evaluate_recovery` builds the start from the archive), last state
        kept as it is."""
        return replace(cls(init="stored-mean", restarts=1, finish="none", cues=0), **overrides)

    @property
    def selects(self) -> bool:
        """Whether candidates are compared (more than one descent's state)."""
        return self.restarts > 1 or self.cues > 0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- the problem
def _check_inputs(net: BaseNet, memories, batches) -> Tuple[List[int], List[torch.Tensor], bool]:
    """Returns (layer widths, input batches with any labels dropped, joint layout?)."""
    if not isinstance(net, BaseNet) or net.mask_kind != "neuron":
        got = net.spec.architecture if isinstance(net, BaseNet) else type(net).__name__
        raise UserError(f"net: expected a base network with neuron masks (hopnet), got {got}; "
                        "recovery works on hopnet's per-neuron masks")
    widths = [int(s[0]) for s in net.mask_shapes]
    try:
        dims = [int(m.dim) for m in memories]
    except (TypeError, AttributeError):
        raise UserError(f"memories: expected a list of HopfieldMemory, got {type(memories).__name__}; "
                        "pass e.g. [archive.memories['layer0'], archive.memories['layer1']]") from None
    joint = len(dims) == 1 and len(widths) > 1 and dims[0] == sum(widths)
    if dims != widths and not joint:
        raise UserError(f"memories: expected one memory per masked layer with dims {widths} (per-layer) "
                        f"or one of dim {sum(widths)} (joint), got dims {dims}; pass the memories of "
                        "the run that trained this network")
    xs = []
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else b  # labels, if given, are never looked at
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != net.spec.sizes[0] or x.shape[0] < 2:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise UserError(f"batches: expected tensors of shape (B >= 2, {net.spec.sizes[0]}), got {got}; "
                            "pass the task's test batches")
        xs.append(x.to(net.device))
    if not xs:
        raise UserError("batches: expected at least one batch, got none; pass the task's test batches")
    return widths, xs, joint


class _Problem:
    """One recovery: the network, the memories (and Ψ as torch tensors), the input batches."""

    def __init__(self, net, memories, xs, widths, joint, config):
        self.net, self.memories, self.xs, self.widths, self.joint = net, memories, xs, widths, joint
        self.config = config
        self.psis = [torch.from_numpy(np.array(m.weights, np.float32)).to(net.device) for m in memories]
        self.selection = xs[: config.selection_batches]

    # States are per-layer ±1 int8 arrays; memory patterns are per memory (one, if joint).
    def to_memory(self, states: Sequence[np.ndarray]) -> List[np.ndarray]:
        return [np.concatenate(states)] if self.joint else list(states)

    def from_memory(self, pats: Sequence[np.ndarray]) -> List[np.ndarray]:
        if not self.joint:
            return list(pats)
        edges = np.cumsum([0, *self.widths])
        return [pats[0][a:b] for a, b in zip(edges[:-1], edges[1:])]

    def energy(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ over memories of −½ zᵀΨz (zs: per-layer ±1 float tensors, differentiable)."""
        parts = [torch.cat(list(zs))] if self.joint else list(zs)
        return sum(-0.5 * (z @ (psi @ z)) for z, psi in zip(parts, self.psis))

    @torch.no_grad()
    def entropy(self, states: Sequence[np.ndarray]) -> float:
        """Mean output entropy over the selection batches under the masks of `states`."""
        masks = [torch.from_numpy((s > 0).astype(np.float32)).to(self.net.device) for s in states]
        return float(np.mean([entropy_objective(self.net(x, masks)).item() for x in self.selection]))

    def recall(self, states: Sequence[np.ndarray], seed: int) -> List[np.ndarray]:
        pats = [m.recall(p, mode="async", max_sweeps=self.config.max_sweeps, seed=derive_seed(seed, k))
                for k, (m, p) in enumerate(zip(self.memories, self.to_memory(states)))]
        return self.from_memory(pats)


# ------------------------------------------------------------------------ the paper's descent
class _SignST(torch.autograd.Function):
    """z = 2·1[s >= 0] − 1 as float; backward straight through the threshold (dz/ds = 2)."""

    @staticmethod
    def forward(ctx, scores):
        return 2.0 * (scores >= 0).to(scores.dtype) - 1.0

    @staticmethod
    def backward(ctx, grad):
        return 2.0 * grad


def energy(psi: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """E_Ψ(z) = −½ zᵀΨz at z = 2·1[scores >= 0] − 1, differentiable in `scores` by the straight-
    through estimator: ∂E/∂scores = −2Ψz (Ψ symmetric), the descent direction +Ψz."""
    z = _SignST.apply(scores)
    return -0.5 * (z @ (psi @ z))


def _initial_scores(widths, init: str, scale: float, seed: int, run: int, device,
                    given: Optional[Sequence] = None) -> List[torch.Tensor]:
    if init == "stored-mean":
        if given is None or len(given) != len(widths) or [int(np.asarray(s).size) for s in given] != widths:
            raise UserError(f"init scores: init 'stored-mean' needs one score vector per masked layer of "
                            f"sizes {widths}; pass init_scores (evaluate_recovery builds them from the "
                            "archive's explicit masks) or pick another init")
        return [torch.as_tensor(np.asarray(s, np.float32)).reshape(-1).to(device).requires_grad_(True)
                for s in given]
    out = []
    for l, w in enumerate(widths):
        if init == "full":
            s = torch.zeros(w)  # 1[0 >= 0]: every neuron on
        elif init == "empty":
            s = torch.full((w,), -scale)  # every neuron off
        else:
            g = torch.Generator().manual_seed(derive_seed(seed, RECOVERY_TAG, run, l))
            s = torch.empty(w).uniform_(-scale, scale, generator=g)
        out.append(s.to(device).requires_grad_(True))
    return out


def _descend(problem: _Problem, scores: List[torch.Tensor], steps: int):
    """The paper's annealed descent; returns (±1 states per layer, trace, settled step)."""
    cfg = problem.config
    optimizer = torch.optim.SGD(scores, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    trace = {"objective": [], "entropy": [], "energy": []}
    previous, settled = None, 0
    for t in range(1, steps + 1):
        x = problem.xs[(t - 1) % len(problem.xs)]  # (B, 784)
        zs = [_SignST.apply(s) for s in scores]  # (width,) of ±1 each
        h = entropy_objective(problem.net(x, [(z + 1.0) / 2.0 for z in zs]))
        e = problem.energy(zs)
        frac = t / steps
        objective = (1.0 - frac) * h + cfg.gamma * frac * e
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        trace["objective"].append(objective.item())
        trace["entropy"].append(h.item())
        trace["energy"].append(e.item())
        state = torch.cat([s.detach() >= 0 for s in scores])
        if previous is None or not torch.equal(state, previous):
            settled = t  # the last step that changed the binary state
        previous = state
    states = [np.where(s.detach().cpu().numpy() >= 0, 1, -1).astype(np.int8) for s in scores]
    return states, trace, settled


# ---------------------------------------------------------------------------------- selection
def _pools(problem: _Problem, runs, seed) -> List[List[np.ndarray]]:
    """Per memory, the distinct candidate patterns: the descents' results, the attractors of
    random cues, and the complements of all of these that are fixed points too."""
    pools: List[List[np.ndarray]] = [[] for _ in problem.memories]
    seen = [set() for _ in problem.memories]  # the patterns' bytes, for O(1) deduplication

    def add(k, p):
        key = p.astype(np.int8).tobytes()
        if key not in seen[k]:
            seen[k].add(key)
            pools[k].append(p.astype(np.int8))

    for states in runs:
        for k, p in enumerate(problem.to_memory(states)):
            add(k, p)
    rng = np.random.default_rng(derive_seed(seed, RECOVERY_TAG, 2000))
    for k, (pool, m) in enumerate(zip(pools, problem.memories)):
        n = problem.config.cues * max(1, m.n_stored)
        if n:
            cues = np.where(rng.random((n, m.dim)) < 0.5, 1, -1).astype(np.int8)  # (n, dim)
            for p in m.recall(cues, mode="async", max_sweeps=problem.config.max_sweeps,
                              seed=derive_seed(seed, RECOVERY_TAG, 3000, k)):
                add(k, p)
        found = np.stack(pool)
        for p in -found[m.stable(-found)]:  # Ψ(−z) = −Ψz: a mask and its complement look alike
            add(k, p)
    return pools


@torch.no_grad()
def _staged_entropies(net: BaseNet, xs: Sequence[torch.Tensor], pools: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean output entropy over `xs` of EVERY combination of one mask per layer: a tensor of shape
    (len(pools[0]), ..., len(pools[-1])). pools[l] is (P_l, width_l) of float 0/1 masks.

    The same arithmetic as hopnet's forward (Linear, BatchNorm with batch statistics scaled by the
    mask, SiLU; last layer unmasked), arranged as a tree: layer l's normalised pre-activation is
    computed once per choice of the layers before it, and the last layer runs all its candidates
    in one batched product."""
    weights = net.weights
    last = len(pools) - 1

    def tree(l: int, h: torch.Tensor) -> torch.Tensor:
        pre = F.batch_norm(F.linear(h, weights[l]), None, None, training=True, eps=BN_EPS)  # (B, w)
        if l == last:
            out = []
            for chunk in pools[l].split(_CHUNK):  # (P, w) each; (P, B, w) activations at a time
                act = F.silu(pre.unsqueeze(0) * chunk.unsqueeze(1))  # (P, B, w)
                logp = torch.log_softmax(act @ weights[-1].T, dim=2)  # (P, B, outputs)
                out.append(-(logp.exp() * logp).sum(dim=2).mean(dim=1))  # (P,)
            return torch.cat(out)
        return torch.stack([tree(l + 1, F.silu(pre * m)) for m in pools[l]])

    return sum(tree(0, x) for x in xs) / len(xs)


def _select(problem: _Problem, runs, seed):
    """The lowest-entropy combination of candidate attractors (module docstring, step 3).
    Returns (states, source, entropy, combinations scored, pool sizes, search)."""
    pools = _pools(problem, runs, seed)
    sizes = [len(p) for p in pools]
    starts = [tuple(next(i for i, q in enumerate(pool) if np.array_equal(p, q))
                    for pool, p in zip(pools, problem.to_memory(states))) for states in runs]

    def states_of(choice):
        return problem.from_memory([pools[k][i] for k, i in enumerate(choice)])

    if math.prod(sizes) <= problem.config.max_combinations:
        search = "exhaustive"
        if problem.joint:  # one memory: each candidate is already a whole state
            table = torch.tensor([problem.entropy(states_of((i,))) for i in range(sizes[0])])
        else:
            device = problem.net.device
            masks = [torch.from_numpy(np.stack(pool) > 0).to(device=device, dtype=torch.float32) for pool in pools]
            table = _staged_entropies(problem.net, problem.selection, masks).cpu()
        flat = int(torch.argmin(table))
        choice = tuple(int(i) for i in np.unravel_index(flat, tuple(sizes)))
        best_h, n_scored = float(table.reshape(-1)[flat]), int(table.numel())
    else:  # coordinate search from every descent's result: one memory's pattern at a time
        search = "coordinate"
        scored = {}

        def score(c):
            if c not in scored:
                scored[c] = problem.entropy(states_of(c))
            return scored[c]

        choice = None
        for c in starts:
            improved = True
            while improved:
                improved = False
                for k, size in enumerate(sizes):
                    for i in range(size):
                        trial = c[:k] + (i,) + c[k + 1:]
                        if score(trial) < score(c) - 1e-9:
                            c, improved = trial, True
            if choice is None or score(c) < score(choice) - 1e-9:
                choice = c
        best_h, n_scored = score(choice), len(scored)
    source = f"descent {starts.index(choice)}" if choice in starts else "cue"
    return states_of(choice), source, best_h, n_scored, sizes, search


# ------------------------------------------------------------------------------ public API
def recover_masks(net: BaseNet, memories: Sequence, batches: Iterable,
                  config: RecoveryConfig = RecoveryConfig(), seed: int = 0,
                  init_scores: Optional[Sequence] = None) -> Tuple[List[np.ndarray], dict]:
    """Recover one task's masks from `memories` (one HopfieldMemory per masked layer, or one
    joint memory over all layers' masks concatenated) and the task's unlabelled `batches`
    (tensors (B, 784), or (x, y) pairs whose y is ignored). No task id and no label is used.
    `init_scores` (one vector per layer) is needed by init "stored-mean" only.

    Returns (masks, info). masks: one numpy bool array per masked layer. info: `steps` (descent
    steps, per restart), `settled` (per restart, the last step that changed the binary state),
    `trace` (per restart, per step: `objective`, `entropy`, `energy`), `chosen` ("descent r" or
    "cue"), `search` ("none", "exhaustive" or "coordinate"), `pool_sizes`, `candidates`
    (combinations scored), `entropy` (the result's mean output entropy on the selection
    batches), `energy` and `fixed_point` (per memory), `seconds`.
    """
    if not isinstance(config, RecoveryConfig):
        raise UserError(f"config: expected a RecoveryConfig, got {type(config).__name__}; "
                        "pass RecoveryConfig() or RecoveryConfig.paper()")
    start = time.perf_counter()
    widths, xs, joint = _check_inputs(net, memories, batches)
    problem = _Problem(net, list(memories), xs, widths, joint, config)
    steps = int(config.steps) if config.steps is not None else len(xs)

    # 1. descents, each finished by recall (or not)
    runs, traces, settled = [], [], []
    with torch.enable_grad():
        for r in range(config.restarts):
            init = config.init if r == 0 else "uniform"
            scores = _initial_scores(widths, init, config.init_scale, seed, r, net.device, init_scores)
            states, trace, settle = _descend(problem, scores, steps)
            if config.finish == "recall":
                states = problem.recall(states, derive_seed(seed, RECOVERY_TAG, 1000, r))
            runs.append(states)
            traces.append(trace)
            settled.append(settle)

    # 2-3. candidates and selection
    best, chosen, best_h, n_scored, sizes, search = runs[0], "descent 0", None, 1, [1] * len(memories), "none"
    if config.selects:
        best, chosen, best_h, n_scored, sizes, search = _select(problem, runs, seed)
    pats = problem.to_memory(best)
    info = {
        "steps": steps,
        "settled": settled,
        "trace": traces,
        "chosen": chosen,
        "search": search,
        "pool_sizes": sizes,
        "candidates": n_scored,
        "entropy": best_h if best_h is not None else problem.entropy(best),
        "energy": [float(m.energy(p)) for m, p in zip(problem.memories, pats)],
        "fixed_point": [bool(m.stable(p)) for m, p in zip(problem.memories, pats)],
        "seconds": time.perf_counter() - start,
    }
    return [s > 0 for s in best], info


def evaluate_recovery(net: BaseNet, archive, stream, tasks: Optional[Iterable[int]] = None,
                      config: RecoveryConfig = RecoveryConfig(), seed: int = 0) -> List[dict]:
    """Recover every task in `tasks` (default: all the archive's tasks) from the archive's
    memories and the task's test batches (labels dropped), then score it with the labels.

    Per task a dict: task, accuracy (recovered masks on the task's test set, as
    `training.evaluate`), gg_accuracy (the true masks, the same evaluation; None without explicit
    masks), hamming (per layer, vs archive.masks; None without them), steps, settled, chosen,
    search, candidates, entropy, fixed_point, seconds."""
    from supsup_hopfield.training import evaluate

    if not isinstance(config, RecoveryConfig):
        raise UserError(f"config: expected a RecoveryConfig, got {type(config).__name__}; "
                        "pass RecoveryConfig() or RecoveryConfig.paper()")
    n_layers = len(net.mask_shapes)
    memories = _archive_memories(archive, n_layers)
    n_tasks = len(archive.per_task) if archive.per_task else int(archive.config.get("tasks", 0))
    tasks = list(range(n_tasks)) if tasks is None else [int(t) for t in tasks]
    bad = [t for t in tasks if not 0 <= t < n_tasks]
    if bad:
        raise UserError(f"tasks: expected indices in 0..{n_tasks - 1} (the archive's tasks), got {bad}; "
                        "pass tasks the archive holds")
    init_scores = None
    if config.init == "stored-mean":  # the paper code's start: the mean of the stored ±1 masks
        if archive.masks is None:
            raise UserError("init 'stored-mean' needs the archive's explicit masks, and this archive has "
                            "none (trained with --no-keep-masks); pick init 'empty'")
        init_scores = [2.0 * archive.masks[f"layer{l}"][:n_tasks].mean(axis=0) - 1.0 for l in range(n_layers)]
    out = []
    for t in tasks:
        task = stream.task(t)
        batches = [x for x, _ in task.test_batches(config.batch_size)]  # labels dropped here
        masks, info = recover_masks(net, memories, batches, config, seed=derive_seed(seed, t),
                                    init_scores=init_scores)
        record = {"task": t, "accuracy": evaluate(net, masks, task), "gg_accuracy": None, "hamming": None}
        if archive.masks is not None:
            true = [archive.masks[f"layer{l}"][t] for l in range(n_layers)]
            record["gg_accuracy"] = evaluate(net, true, task)
            record["hamming"] = [int(np.count_nonzero(m != q)) for m, q in zip(masks, true)]
        record.update({k: info[k] for k in ("steps", "settled", "chosen", "search", "candidates", "entropy",
                                            "fixed_point", "seconds")})
        out.append(record)
    return out


def _archive_memories(archive, n_layers: int) -> list:
    """The archive's memories in recovery order: layer0..layerN−1, or the one joint memory."""
    mems = archive.memories
    names = [f"layer{l}" for l in range(n_layers)]
    if sorted(mems) == sorted(names):
        return [mems[n] for n in names]
    if list(mems) == ["joint"]:
        return [mems["joint"]]
    raise UserError(f"archive memories: expected per-layer memories {', '.join(names)} or one 'joint' "
                    f"memory, got {', '.join(mems) or 'none'}; recovery needs unsplit memories "
                    "(train without --hopfield-dim)")
