"""HopSupSup recovery: a task's masks given back by the Hopfield memory, from the task's unlabelled
test batches, without the task id (Wortsman et al. 2020, §3.5; docs/METHOD.md, "Recovery").

Two methods (`RecoveryConfig.method`):

* ``seeded`` (default). The run's seed rebuilds, for every task j, what the memory needs to give
  task j's mask back: its KEY for a keyed memory (`keyed.py`), or its INITIAL mask
  (`masks.initial_mask`) as a cue for an attractor memory (a trained mask keeps much of its
  start: hopnet, 100 steps, about 63% of its bits). A memory does not know which task it is
  asked about, so recovery asks it about every task it holds:
    1. decode (once per memory, shared by every task evaluated): every stored task's mask,
       j = 0..n_stored−1. A keyed memory completes each from its clamped key, exactly, with one
       matrix product for all of them. An attractor memory recalls from each seeded cue with
       annealed dynamics (`dynamics.recall_anneal`), ending at exact fixed points, which holds
       up to load ≈ 0.12 only. Candidate j is the layer masks given back for task j, put
       together from every memory slot (per-layer, joint or blocked layouts alike);
    2. select (per task): rank the distinct candidates by the mean output entropy of the
       network under them, a cascade on the task's first test batch: past `prescreen_keep`
       candidates, all are scored on `prescreen_samples` images (4: every candidate is one GEMM
       row per image in the second layer, the first layer's output is shared), the best
       `prescreen_keep` on `screen_samples` images, then the `shortlist` best on
       `selection_batches` batches; the lowest wins. Entropy tells a task's own masks from every
       other stored task's by a wide margin (docs/METHOD.md). `superposed` L puts the paper's
       one-shot inference in superposition in front (one forward and backward pass over the
       superposed masks keeps L candidates); measured on neuron masks it loses tasks, so it is
       off by default (docs/METHOD.md, "Recovery").
  The index of the winning candidate is the task the memory thinks the batches come from
  ("chosen"). Limits of the attractor memories' cues: after 1000 steps a hopnet mask keeps ~57%
  of its initial bits (vs 63% after 100), and with score init "zeros" every task starts from the
  same all-ones mask: there, use the descent or a keyed memory.
* ``descent``: the paper's method. Real scores s_l per masked slot; z = 2·1[s ≥ 0] − 1 with a
  straight-through gradient; at step t = 1..T minimise (1 − t/T)·H(outputs) + γ·(t/T)·Σ E(z),
  E(z) = −½ zᵀJz, by SGD (lr 500, momentum 0.9, weight decay 1e-4, γ = 1.5e-3), one test
  batch per step, one pass; `recall` then finishes the last state to a fixed point (or not).
  `RecoveryConfig.paper()` is the paper code's plain method (start from the mean of the stored
  masks, no recall): the baseline in every table. It needs no seed, but it finds the right mask
  only while the memory holds a handful (docs/METHOD.md).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from supsup_hopfield import dynamics
from supsup_hopfield.basenet import BN_EPS, BaseNet, derive_seed
from supsup_hopfield.errors import UserError
from supsup_hopfield.inference import entropy_objective
from supsup_hopfield.masks import threshold
from supsup_hopfield.run import MemorySlot, SavedRun, layer_key, masks_by_layer
from supsup_hopfield.training import autocast, bf16_is_native, evaluate

RECOVERY_TAG = 3  # random-stream tag of recovery (basenet uses 0-2)
METHODS = ("seeded", "descent")
INITS = ("empty", "full", "uniform", "stored-mean")
RECALLS = ("anneal", "async", "none")
_CHUNK = 32  # candidates evaluated together (weight masks: one forward pass each)
_ROWS = 2048  # neuron masks: candidates x images per GEMM of the entropy screen


def _is_int(v, low: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= low


def _is_number(v, low: float, strict: bool) -> bool:
    return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            and (v > low if strict else v >= low))


@dataclass(frozen=True)
class RecoveryConfig:
    """How a task's masks are recovered (module docstring). `paper()` is the paper's method."""

    method: str = "seeded"
    batch_size: int = 64  # the paper's test batch; BatchNorm uses each batch's statistics
    recall: str = "anneal"  # dynamics that finish every cue or descent ("none": keep the state)
    max_sweeps: int = 100  # asynchronous sweeps at most
    # seeded: candidate selection
    superposed: int = 0  # > 0: inference in superposition first keeps this many candidates
    prescreen_samples: int = 4  # past `prescreen_keep` candidates, all are scored on this many images
    prescreen_keep: int = 64  # ... and the best this many go on (docs/METHOD.md, "Recovery")
    screen_samples: int = 32  # the candidates left are scored on this many images
    shortlist: int = 8  # the best this many are scored on `selection_batches` batches
    selection_batches: int = 4
    # descent (the paper's settings)
    lr: float = 500.0  # scores are unbounded, so one step may flip many neurons
    momentum: float = 0.9
    weight_decay: float = 1e-4  # the paper code's; shrinks scores 5% a step at lr 500
    gamma: float = 1.5e-3  # energy weight at the last step (E ≈ −d/2 at a stored mask)
    steps: Optional[int] = None  # None: one pass over the batches (T = their number)
    init: str = "empty"  # the descent's start: empty/full/uniform (from the memory alone),
    #                      or stored-mean (the paper code's; needs the explicit masks)
    init_scale: float = 1e-2  # b of the "empty" (−b) and "uniform" (U(−b, b)) starts

    def __post_init__(self):
        def bad(name, expected, fix):
            raise UserError(f"{name.replace('_', ' ')}: expected {expected}, got {getattr(self, name)!r}; {fix}")

        for name, choices in (("method", METHODS), ("recall", RECALLS), ("init", INITS)):
            if getattr(self, name) not in choices:
                bad(name, f"one of {', '.join(choices)}", "pick one of those")
        if not _is_int(self.batch_size, 2):
            bad("batch_size", "an integer >= 2 (BatchNorm needs two rows)", "pass e.g. 64")
        for name, low in (("max_sweeps", 1), ("screen_samples", 2), ("shortlist", 1), ("selection_batches", 1),
                          ("superposed", 0), ("prescreen_samples", 2), ("prescreen_keep", 1)):
            if not _is_int(getattr(self, name), low):
                bad(name, f"an integer >= {low}", f"pass {low} or more")
        for name in ("lr", "init_scale"):
            if not _is_number(getattr(self, name), 0, strict=True):
                bad(name, "a positive number", "pass e.g. 500 for lr, 1e-2 for init scale")
        for name in ("gamma", "weight_decay"):
            if not _is_number(getattr(self, name), 0, strict=False):
                bad(name, "a number >= 0", "pass e.g. 1.5e-3 for gamma, 1e-4 for weight decay")
        if not (_is_number(self.momentum, 0, strict=False) and self.momentum < 1):
            bad("momentum", "a number in [0, 1)", "pass e.g. 0.9")
        if self.steps is not None and not _is_int(self.steps, 1):
            bad("steps", "None (one pass over the batches) or an integer >= 1", "pass e.g. 32")

    @classmethod
    def paper(cls, **overrides) -> "RecoveryConfig":
        """The paper code's plain method: one descent from the mean of the stored masks (which
        needs the explicit masks), last state kept as it is."""
        return replace(cls(method="descent", init="stored-mean", recall="none"), **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ memory slots
def default_slots(net: BaseNet, memories: dict) -> list:
    """Slots (`run.MemorySlot`: which mask entries a memory holds) for unsplit memories: one per
    masked layer named layer0.., or one joint memory. A run records its own in its archive."""
    sizes = [int(np.prod(s)) for s in net.mask_shapes]
    names = [layer_key(l) for l in range(len(sizes))]
    if sorted(memories) == sorted(names):
        return [MemorySlot(n, l, 0, s) for l, (n, s) in enumerate(zip(names, sizes))]
    if len(memories) == 1:
        (name, mem), = memories.items()
        if mem.dim == sum(sizes):
            return [MemorySlot(name, None, 0, sum(sizes))]
    raise UserError(f"memories: expected one per masked layer ({', '.join(names)}) or one joint memory of "
                    f"dim {sum(sizes)}, got {', '.join(f'{k} (dim {m.dim})' for k, m in memories.items()) or 'none'}; "
                    "pass the slots the run recorded (archive.config['memory_slots'])")


class _Layout:
    """Moves masks between per-layer form (one flat ±1 int8 vector per masked layer) and per-slot
    form (one pattern per memory)."""

    def __init__(self, net: BaseNet, memories: dict, slots: Optional[Sequence]):
        self.shapes = [tuple(s) for s in net.mask_shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        slots = default_slots(net, memories) if slots is None else [
            s if isinstance(s, MemorySlot) else MemorySlot(**{k: s[k] for k in ("name", "layer", "start", "stop")})
            for s in slots]
        offsets = np.cumsum([0, *self.sizes])
        self.slots, self.memories, self.spans = [], [], []
        covered = np.zeros(offsets[-1], int)
        for s in slots:
            if s.name not in memories:
                raise UserError(f"slots: memory {s.name!r} is not among the memories "
                                f"({', '.join(memories)}); pass the run's own memories and slots")
            base = 0 if s.layer is None else int(offsets[s.layer])
            limit = offsets[-1] if s.layer is None else self.sizes[s.layer]
            if not 0 <= s.start < s.stop <= limit or memories[s.name].dim != s.stop - s.start:
                raise UserError(f"slots: {s.name} covers entries {s.start}..{s.stop} of "
                                f"{'all layers' if s.layer is None else f'layer {s.layer}'}, which does not fit "
                                f"a memory of dim {memories[s.name].dim} on this network")
            self.slots.append(s)
            self.memories.append(memories[s.name])
            self.spans.append((base + s.start, base + s.stop))
            covered[base + s.start: base + s.stop] += 1
        if not (covered == 1).all():
            raise UserError("slots: the memories must cover every mask entry exactly once; pass the "
                            "slots the run recorded")
        self.offsets = offsets
        kinds = {m.rule == "keyed" for m in self.memories}
        if len(kinds) > 1:
            raise UserError("memories: a run keeps keyed memories or attractor memories, not both; pass the run's own")
        self.keyed = kinds == {True}  # keyed memories: every stored mask comes back from its key
        if self.keyed and len({m.n_stored for m in self.memories}) > 1:
            raise UserError(f"memories: the keyed memories of a run hold as many masks each, got "
                            f"{sorted({m.n_stored for m in self.memories})}; pass the run's own")

    def to_slots(self, flat: np.ndarray) -> List[np.ndarray]:
        """flat (..., entries) over all layers -> one (..., dim) array per slot."""
        return [flat[..., a:b] for a, b in self.spans]

    def from_slots(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty(parts[0].shape[:-1] + (int(self.offsets[-1]),), parts[0].dtype)
        for (a, b), p in zip(self.spans, parts):
            out[..., a:b] = p
        return out

    def layers(self, flat: np.ndarray) -> List[np.ndarray]:
        """flat (entries,) -> one array per masked layer, in the layer's shape."""
        return [flat[a:b].reshape(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def flatten(self, layer_masks: Sequence) -> np.ndarray:
        return np.concatenate([np.asarray(m).reshape(-1) for m in layer_masks])


# --------------------------------------------------------------------------------- candidates
def seeded_cues(net: BaseNet, mask_config, seed: int, tasks: Iterable[int]) -> np.ndarray:
    """The initial masks of `tasks` (bool (len(tasks), entries), layers concatenated), rebuilt
    from the run's seed and mask config: the seeded method's cues."""
    from supsup_hopfield.masks import initial_mask

    return np.stack([np.concatenate([m.reshape(-1) for m in initial_mask(net, mask_config, seed, t)])
                     for t in tasks])


@dataclass
class Candidates:
    """Masks decoded from the memories: row j was recalled from cue j (bool (K, entries), layers
    concatenated), with whether it is an exact fixed point of every memory."""

    masks: np.ndarray
    fixed: np.ndarray  # (K, n_slots) bool
    seconds: float


def decode(net: BaseNet, memories: dict, cues: Optional[np.ndarray] = None,
           config: RecoveryConfig = RecoveryConfig(), slots: Optional[Sequence] = None, seed: int = 0) -> Candidates:
    """Every stored task's masks as the memories give them back, put together per task: a keyed
    memory completes each task's mask from its key (no cue needed); an attractor memory recalls
    from every cue (bool (K, entries), layers concatenated). Done once and shared by all the tasks
    recovered from them."""
    start = time.perf_counter()
    layout = _Layout(net, memories, slots)
    if layout.keyed:  # every task's mask completed from its key: [z_j; k_j] is a fixed point by construction
        parts = [mem.recall() > 0 for mem in layout.memories]
        fixed = np.ones((len(parts[0]), len(parts)), bool)
        return Candidates(layout.from_slots(parts), fixed, time.perf_counter() - start)
    if cues is None:
        raise UserError("cues: attractor memories recall from cues; pass seeded_cues(...)")
    cues = np.asarray(cues)
    if cues.ndim != 2 or cues.shape[1] != layout.offsets[-1] or cues.dtype != bool:
        raise UserError(f"cues: expected a bool array (K, {layout.offsets[-1]}), got {cues.dtype} {cues.shape}; "
                        "pass seeded_cues(...)")
    parts, fixed = [], []
    for k, (mem, cue) in enumerate(zip(layout.memories, layout.to_slots(cues))):
        rng_seed = derive_seed(seed, RECOVERY_TAG, 1, k)
        if config.recall == "none":
            out = np.where(cue, 1, -1).astype(np.int8)
        elif config.recall == "anneal" and mem.rule in SPAN_RULES:
            out = _decode_by_cancellation(mem, cue, config, np.random.default_rng(rng_seed))
        else:
            out = mem.recall(cue, mode=config.recall, max_sweeps=config.max_sweeps, seed=rng_seed)
        parts.append(out > 0)
        fixed.append(mem.stable(out))
    return Candidates(layout.from_slots(parts), np.stack(fixed, axis=1), time.perf_counter() - start)


SPAN_RULES = ("projection", "projection-zd")  # Ψ is the projector onto the stored masks' span
_SPAN_TOL = 1e-3  # ‖Ψs − s‖² ≤ tol·d: s lies in the span, i.e. it is a stored mask (or ±)
_MAX_ROUNDS = 12


def _decode_by_cancellation(mem, cues: np.ndarray, config: RecoveryConfig, rng) -> np.ndarray:
    """Recall every cue (bool (K, d)) from a projection memory by successive cancellation.

    Round 1 anneals every cue on the couplings and finishes it by asynchronous recall. A state
    s with Ψs = s lies in the span of the stored masks, so it IS one of them or a complement:
    a found direction ±s. The found directions are then shared out, one per cue, by the
    assignment that maximises the total |overlap| between cues and their directions
    (Hungarian method), each with the sign its overlap has: a cue that fell on another task's
    mask or on a complement gives it up to the cue it belongs to. Each later round takes the
    found directions out of the couplings the annealing uses (J_r = Ψ − QQᵀ without its
    diagonal, Q an orthonormal basis of them): the crosstalk they caused is gone, so cues too
    weak before now reach their own mask; recall still finishes on the whole memory. The cues
    left without a direction try again; it stops when a round finds nothing new (at most 12
    rounds). What each step buys is measured in docs/METHOD.md (`bench/recovery.py`)."""
    K, d = cues.shape
    signs = np.where(cues, 1, -1).astype(np.int8)
    out = signs.copy()
    P = np.asarray(mem.weights, np.float64)
    J = mem.couplings
    found = {}  # canonical direction bytes -> int8 (d,)
    todo = np.arange(K)
    basis = np.zeros((d, 0))
    for _ in range(_MAX_ROUNDS):
        Jr = P - basis @ basis.T  # (d, d) projector onto what is not found yet
        np.fill_diagonal(Jr, 0)
        S = dynamics.anneal(Jr.astype(J.dtype), signs[todo], np.zeros(d, bool))
        dynamics.recall_async(J, S, np.zeros(d, bool), config.max_sweeps, rng)
        out[todo] = S
        Sf = S.astype(np.float64)
        in_span = ((Sf @ P - Sf) ** 2).sum(axis=1) <= _SPAN_TOL * d
        before = len(found)
        for s in S[in_span]:
            c = s if s[0] > 0 else -s  # a mask and its complement: one direction
            found.setdefault(c.tobytes(), c)
        if len(found) == before:
            break
        dirs = np.stack(list(found.values()))  # (D, d)
        overlaps = signs.astype(np.int32) @ dirs.T.astype(np.int32)  # (K, D)
        rows, cols = linear_sum_assignment(-np.abs(overlaps))  # one direction per cue, most overlap in all
        cue_free = np.ones(K, bool)
        for i, k in zip(rows, cols):
            if overlaps[i, k] != 0:
                out[i] = dirs[k] if overlaps[i, k] > 0 else -dirs[k]
                cue_free[i] = False
        todo = np.flatnonzero(cue_free)
        if todo.size == 0:
            break
        q, r = np.linalg.qr(dirs.T.astype(np.float64))
        basis = q[:, np.abs(np.diag(r)) > 1e-8 * np.sqrt(d)]
    return out


@torch.no_grad()
def candidate_entropies(net: BaseNet, x: torch.Tensor, masks: np.ndarray, shapes: Sequence) -> torch.Tensor:
    """Mean output entropy of `net` on the batch x under every candidate (bool (K, entries),
    layers concatenated): a (K,) tensor. The same arithmetic as `BaseNet.forward`, batched over
    candidates; for neuron masks the first layer's normalised pre-activation is shared and each
    later layer is one GEMM over (candidates x images) rows."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0, *sizes])
    device = net.device
    chunk_size = _CHUNK if net.mask_kind == "weight" else max(1, _ROWS // len(x))
    out = []
    for c0 in range(0, len(masks), chunk_size):
        chunk = torch.from_numpy(masks[c0:c0 + chunk_size]).to(device=device, dtype=torch.float32)  # (P, entries)
        layer = [chunk[:, a:b].reshape(-1, *s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]
        if net.mask_kind == "weight":
            logits = torch.stack([net(x, [m[p] for m in layer]) for p in range(len(chunk))])  # (P, B, out)
        else:  # images outermost: BatchNorm's reductions and the masks' broadcasts run over contiguous rows
            weights = net.weights
            pre = F.batch_norm(F.linear(x, weights[0]), None, None, training=True, eps=BN_EPS)  # (B, w0)
            h = F.silu(pre.unsqueeze(1) * layer[0].unsqueeze(0))  # (B, P, w0)
            for l in range(1, len(weights) - 1):
                pre = (h @ weights[l].T).float()  # (B, P, w_l), float32 under autocast too: BatchNorm per candidate
                pre -= pre.mean(dim=0)
                var = (pre * pre).mean(dim=0)  # (torch.var_mean over dim 0 is 17x slower here)
                pre *= torch.rsqrt(var + BN_EPS) * layer[l]
                h = F.silu(pre)
            logits = (h @ weights[-1].T).float().transpose(0, 1)  # (P, B, outputs)
        out.append(entropy_objective(logits))  # (P,)
    return torch.cat(out).cpu()


def superposed_shortlist(net: BaseNet, x: torch.Tensor, masks: np.ndarray, shapes, keep: int) -> np.ndarray:
    """The `keep` candidates (rows of the bool (K, entries) masks) that one-shot inference in
    superposition ranks first on the batch x: the gradient of the output entropy with respect to
    each candidate's weight α_i in the mask Σ α_i M_i, at α uniform (inference.alpha_gradient,
    the paper's one-shot). Sorted row indices."""
    from supsup_hopfield.inference import alpha_gradient
    from supsup_hopfield.packed import PackedMaskBank, PackedMasks

    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0, *sizes])
    bank = PackedMaskBank([PackedMasks.pack(masks[:, a:b].reshape(-1, *s))
                           for a, b, s in zip(offsets[:-1], offsets[1:], shapes)])
    g = alpha_gradient(net, bank, x)
    return np.sort(np.argsort(g, kind="stable")[:keep])


def _ranking_precision(net: BaseNet):
    """The prescreen's precision: its products in bfloat16 where the device multiplies bfloat16 in
    hardware, else float32. It only ranks thousands of candidates to keep 64; on the 2500-task run
    its ranks of every sampled task's own mask were those of float32 (first, 50 of 50 tasks), in
    0.32 s instead of 0.59 (docs/METHOD.md §4)."""
    return autocast(net.device, "bf16-mixed" if bf16_is_native(net.device) else "32")


def _select(net: BaseNet, xs: List[torch.Tensor], masks: np.ndarray, shapes, config: RecoveryConfig):
    """Index of the lowest-entropy candidate (module docstring, step 2), its entropy, and how
    many distinct candidates were scored. With `config.superposed` L, inference in superposition
    first keeps the L candidates it ranks best, and only those are screened."""
    if len(masks) == 0:
        raise UserError("candidates: none to choose from; decode them from cues of the tasks the memory holds")
    packed = np.packbits(masks, axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)  # one of each distinct candidate
    first = np.sort(first)
    distinct = len(first)
    if config.superposed and len(first) > config.superposed:
        first = first[superposed_shortlist(net, xs[0], masks[first], shapes, config.superposed)]
    stages = ((config.prescreen_samples, config.prescreen_keep, _ranking_precision(net)),
              (config.screen_samples, config.shortlist, contextlib.nullcontext()))
    for samples, keep, precision in stages:
        if len(first) > keep:  # score every candidate left on `samples` images, keep the best `keep`
            with precision:
                h = candidate_entropies(net, xs[0][:samples], masks[first], shapes)
            first = first[np.sort(np.argsort(h.numpy(), kind="stable")[:keep])]
    selection = xs[: config.selection_batches]
    h = sum(candidate_entropies(net, x, masks[first], shapes) for x in selection) / len(selection)
    best = int(torch.argmin(h))
    return int(first[best]), float(h[best]), distinct


# ------------------------------------------------------------------------ the paper's descent
def _sign(scores: torch.Tensor) -> torch.Tensor:
    """z = 2·1[s >= 0] − 1 as float, straight through the threshold (dz/ds = 2)."""
    return 2.0 * threshold(scores) - 1.0


def energy(J: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """E(z) = −½ zᵀJz at z = 2·1[scores >= 0] − 1, differentiable in `scores` by the straight-
    through estimator: ∂E/∂scores = −2Jz (J symmetric), the descent direction +Jz."""
    z = _sign(scores)
    return -0.5 * (z @ (J @ z))


def _initial_scores(layout: _Layout, config: RecoveryConfig, seed: int, device, given) -> torch.Tensor:
    n = int(layout.offsets[-1])
    if config.init == "stored-mean":
        if given is None or np.asarray(given).size != n:
            raise UserError(f"init scores: init 'stored-mean' needs one score per mask entry ({n}); pass "
                            "init_scores (evaluate_recovery builds them from the archive's explicit masks) "
                            "or pick another init")
        s = torch.as_tensor(np.asarray(given, np.float32).reshape(-1))
    elif config.init == "full":
        s = torch.zeros(n)  # 1[0 >= 0]: every neuron on
    elif config.init == "empty":
        s = torch.full((n,), -config.init_scale)  # every neuron off
    else:
        g = torch.Generator().manual_seed(derive_seed(seed, RECOVERY_TAG, 0))
        s = torch.empty(n).uniform_(-config.init_scale, config.init_scale, generator=g)
    return s.to(device).requires_grad_(True)


def _descend(net: BaseNet, layout: _Layout, xs, config: RecoveryConfig, seed: int, given):
    """The paper's annealed descent; returns (±1 int8 flat state, trace, settled step, steps)."""
    device = net.device
    Js = [torch.from_numpy(np.array(m.couplings, np.float32)).to(device) for m in layout.memories]
    scores = _initial_scores(layout, config, seed, device, given)
    optimizer = torch.optim.SGD([scores], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = int(config.steps) if config.steps is not None else len(xs)
    trace = {"objective": [], "entropy": [], "energy": []}
    previous, settled = None, 0
    with torch.enable_grad():
        for t in range(1, steps + 1):
            z = _sign(scores)  # (entries,) ±1
            masks = [((z[a:b] + 1.0) / 2.0).reshape(s)
                     for a, b, s in zip(layout.offsets[:-1], layout.offsets[1:], layout.shapes)]
            h = entropy_objective(net(xs[(t - 1) % len(xs)], masks))
            e = sum(-0.5 * (z[a:b] @ (J @ z[a:b])) for (a, b), J in zip(layout.spans, Js))
            frac = t / steps
            objective = (1.0 - frac) * h + config.gamma * frac * e
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            for key, v in (("objective", objective), ("entropy", h), ("energy", e)):
                trace[key].append(float(v.detach()))
            state = scores.detach() >= 0
            if previous is None or not torch.equal(state, previous):
                settled = t  # the last step that changed the binary state
            previous = state
    return np.where(scores.detach().cpu().numpy() >= 0, 1, -1).astype(np.int8), trace, settled, steps


# ------------------------------------------------------------------------------ public API
def _check_batches(net: BaseNet, batches) -> List[torch.Tensor]:
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
    return xs


def recover_masks(net: BaseNet, memories: dict, batches: Iterable, config: RecoveryConfig = RecoveryConfig(),
                  seed: int = 0, slots: Optional[Sequence] = None, cues: Optional[np.ndarray] = None,
                  candidates: Optional[Candidates] = None, init_scores=None):
    """Recover one task's masks from `memories` (name -> HopfieldMemory; `slots` say which mask
    entries each holds, default one per masked layer or one joint memory) and the task's
    unlabelled `batches` (tensors (B, inputs), or (x, y) pairs whose y is ignored). No task id
    and no label is used.

    seeded: pass `cues` (`seeded_cues`) or `candidates` already decoded from them (`decode`,
    shared by many tasks). descent: `init_scores` (flat, every entry) only for init stored-mean.

    Returns (masks, info): masks, one numpy bool array per masked layer; info: `chosen` (the cue
    the masks came from, or "descent"), `candidates` (distinct candidates scored), `entropy` (mean
    output entropy on the selection batches), `fixed_point` and `energy` per memory slot,
    `steps` and `settled` (descent only), `seconds`.
    """
    if not isinstance(config, RecoveryConfig):
        raise UserError(f"config: expected a RecoveryConfig, got {type(config).__name__}; "
                        "pass RecoveryConfig() or RecoveryConfig.paper()")
    if not isinstance(net, BaseNet):
        raise UserError(f"net: expected a BaseNet, got {type(net).__name__}; pass build_basenet(...)")
    if not isinstance(memories, dict) or not memories:
        raise UserError(f"memories: expected a dict of name -> HopfieldMemory, got {type(memories).__name__}; "
                        "pass archive.memories")
    start = time.perf_counter()
    layout = _Layout(net, memories, slots)
    xs = _check_batches(net, batches)
    info = {"steps": 0, "settled": None}
    if config.method == "seeded":
        if candidates is None:
            if cues is None and not layout.keyed:
                raise UserError("cues: the seeded method needs the run's seeded initial masks; pass "
                                "cues=seeded_cues(...) (evaluate_recovery does), or use method 'descent'")
            candidates = decode(net, memories, cues, config, slots, seed)
        j, h, n = _select(net, xs, candidates.masks, layout.shapes, config)
        flat = np.where(candidates.masks[j], 1, -1).astype(np.int8)
        info.update(chosen=f"{'key' if layout.keyed else 'cue'} {j}", candidates=n, entropy=h)
    else:
        if layout.keyed:
            raise UserError("recovery: the descent runs on an attractor memory's energy, and this memory is keyed; "
                            "use method 'seeded' (every mask completed from its key), or replay the masks into an "
                            "attractor rule (`supsup-hf eval --memory-rule storkey-paper --recovery paper`)")
        flat, trace, settled, steps = _descend(net, layout, xs, config, seed, init_scores)
        if config.recall != "none":
            parts = [m.recall(p, mode=config.recall, max_sweeps=config.max_sweeps,
                              seed=derive_seed(seed, RECOVERY_TAG, 2, k))
                     for k, (m, p) in enumerate(zip(layout.memories, layout.to_slots(flat)))]
            flat = layout.from_slots(parts)
        chosen = (flat > 0)[None]
        h = float(sum(candidate_entropies(net, x, chosen, layout.shapes)[0] for x in xs[: config.selection_batches])
                  / min(len(xs), config.selection_batches))
        info.update(chosen="descent", candidates=1, entropy=h, steps=steps, settled=settled, trace=trace)
    parts = layout.to_slots(flat)
    if config.method == "seeded" and layout.keyed:  # task j's key clamped: the candidate is its fixed point
        info["fixed_point"] = [bool(f) for f in candidates.fixed[j]]
        info["energy"] = [m.energy(p, j) for m, p in zip(layout.memories, parts)]
    else:
        info["fixed_point"] = [bool(m.stable(p)) for m, p in zip(layout.memories, parts)]
        info["energy"] = [float(m.energy(p)) for m, p in zip(layout.memories, parts)]
    info["seconds"] = time.perf_counter() - start
    return [m > 0 for m in layout.layers(flat)], info


def evaluate_recovery(net: BaseNet, archive, stream, tasks: Optional[Iterable[int]] = None,
                      config: RecoveryConfig = RecoveryConfig(), seed: int = 0, memories: Optional[dict] = None,
                      progress=None, gg_cache: Optional[dict] = None) -> List[dict]:
    """Recover every task in `tasks` (default: all the archive's tasks) from the archive's
    memories (or `memories`, e.g. rebuilt from its explicit masks under another rule) and the
    task's test batches (labels dropped), then score it with the labels. The seeded cues of
    every stored task are decoded once and shared. `progress(done, total)` after each task.

    Per task a dict: task, accuracy (recovered masks on the task's test set, as
    `training.evaluate`), gg_accuracy (the true masks, the same evaluation; None without explicit
    masks), hamming (per masked layer, vs archive.masks; None without them), chosen, candidates,
    entropy, fixed_point, steps, seconds (this task's selection plus an equal share of the
    shared decoding). `gg_cache` (task -> gg_accuracy) lets calls on the same run share the
    task-given accuracies, which do not depend on the memory."""
    if not isinstance(config, RecoveryConfig):
        raise UserError(f"config: expected a RecoveryConfig, got {type(config).__name__}; "
                        "pass RecoveryConfig() or RecoveryConfig.paper()")
    memories = archive.memories if memories is None else memories
    saved = SavedRun.from_config(archive.config) if "run" in archive.config else None
    slots = list(saved.slots) if saved is not None and saved.slots else None
    layout = _Layout(net, memories, slots)
    n_tasks = len(archive.per_task)
    tasks = list(range(n_tasks)) if tasks is None else [int(t) for t in tasks]
    bad = [t for t in tasks if not 0 <= t < n_tasks]
    if bad:
        raise UserError(f"tasks: expected indices in 0..{n_tasks - 1} (the archive's tasks), got {bad[:5]}; "
                        "pass tasks the archive holds")
    masks = archive.masks
    init_scores = candidates = None
    if config.method == "descent" and config.init == "stored-mean":  # the paper code's start
        if masks is None:
            raise UserError("init 'stored-mean' needs the archive's explicit masks, and this archive has "
                            "none (trained with `keep_masks=False`); pick init 'empty'")
        stored = max(m.n_stored for m in layout.memories)
        init_scores = 2.0 * layout.flatten([np.asarray(m[:stored], np.float32).mean(axis=0)
                                            for m in masks_by_layer(masks)]) - 1.0
    if config.method == "seeded":
        if saved is None:
            raise UserError("the seeded method rebuilds each task's initial mask from the run's config, and "
                            "this archive has none; use method 'descent'")
        train = saved.run.train
        stored = max(m.n_stored for m in layout.memories)
        cues = None if layout.keyed else seeded_cues(net, train.mask_config, train.seed, range(stored))
        if not layout.keyed and stored > 1 and (cues == cues[0]).all():
            raise UserError("seeded cues: every task of this run started from the same mask (score init "
                            f"{train.score_init!r}), so they cannot tell the tasks apart; use the descent "
                            "(RecoveryConfig(method='descent'); supsup-hf eval --recovery descent)")
        candidates = decode(net, memories, cues, config, slots, seed)
    shared = candidates.seconds / max(1, len(tasks)) if candidates is not None else 0.0
    out = []
    for k, t in enumerate(tasks):
        task = stream.task(t)
        batches = [x for x, _ in task.test_batches(config.batch_size)]  # labels dropped here
        rec, info = recover_masks(net, memories, batches, config, seed=derive_seed(seed, t), slots=slots,
                                  candidates=candidates, init_scores=init_scores)
        record = {"task": t, "accuracy": None, "gg_accuracy": None, "hamming": None}
        if masks is not None:
            true = [m[t] for m in masks_by_layer(masks)]
            cache = {} if gg_cache is None else gg_cache
            if t not in cache:
                cache[t] = evaluate(net, true, task)
            record["gg_accuracy"] = cache[t]
            record["hamming"] = [int(np.count_nonzero(a != b)) for a, b in zip(rec, true)]
            if not any(record["hamming"]):  # the same masks on the same batches: the same accuracy
                record["accuracy"] = record["gg_accuracy"]
        if record["accuracy"] is None:
            record["accuracy"] = evaluate(net, rec, task)
        record.update({key: info[key] for key in ("chosen", "candidates", "entropy", "fixed_point", "steps")})
        record["seconds"] = info["seconds"] + shared
        out.append(record)
        if progress is not None:
            progress(k + 1, len(tasks))
    return out
