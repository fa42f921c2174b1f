"""Scenario NNs: learning supermasks with no task labels and no task boundaries (Wortsman et al.
2020, scenario NNs, "when to allocate a new supermask"; docs/METHOD.md §6).

The learner sees one stream of labelled batches (x, y) and is never told which task a batch comes
from or when the task changes. It keeps one mask SLOT per task it believes it has seen (own scores
and optimiser state each; slot j's scores start as `training.train_task` seeds task j) and trains
the CURRENT slot on every batch. After every `check_every` trained batches it tests the incoming
batch before training on it (so that batch's task decides which slot learns from it):

  1. The paper's test. M_j = the binarised masks of the k slots; g = dH/dalpha at alpha uniform
     1/k (`inference.alpha_gradient` on a `PackedMaskBank` of the M_j), H = the mean softmax
     entropy of the outputs on the batch; nu = softmax(-g). If k * max nu >= 1 + 2^-3 and the
     argmax is the current slot: continue with it.
  2. If the argmax is another slot (a task seen before): switch to it (its scores and optimiser
     state) if it passes the fresh test below; otherwise go to 3.
  3. No slot confident: continue with the current slot if it passes the fresh test, else
     allocate a new slot (within the budget; past it, take the argmax of nu as the best guess).
  Fresh test = the paper's test over TWO candidates: the slot's mask and the mask a new slot
  would start from (its seeded initial mask, exactly what allocation would train); it passes when
  2 * nu(slot) >= 1 + 2^-3, i.e. the slot explains the batch confidently better than starting over.

The fresh test and the rollback are this package's additions to the paper's rule; why, and
what they change, measured against the rule as written (`rollback=False, fresh_check=False`), is
in docs/METHOD.md §6. A boundary is found at the first check after it, at most `check_every` − 1
batches late.

`train_nns` feeds tasks 0..n-1 of a stream in order, `steps_per_task` batches each (task t's
batches drawn exactly as `train_task` draws them), to an `NNsLearner`; only the report written
afterwards looks at the true tasks.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from supsup_hopfield.basenet import BATCH_TAG, BaseNet, derive_seed
from supsup_hopfield.errors import UserError
from supsup_hopfield.inference import OBJECTIVES, alpha_gradient, infer_task
from supsup_hopfield.masks import binarize, init_scores
from supsup_hopfield.packed import PackedMaskBank
from supsup_hopfield.training import TrainConfig, make_optimizer, predict, resolve_device, train_step


@dataclass(frozen=True)
class NNsConfig:
    """How the NNs learner decides when to allocate a mask. Defaults: the paper's."""

    check_every: int = 100  # batches between two task-inference tests
    threshold: float = 1 + 2 ** -3  # allocate when k * max nu falls below this
    budget: Optional[int] = None  # most masks the learner may allocate; None: no cap
    objective: str = "entropy"  # what the alpha gradient differentiates ("entropy" or "g")
    rollback: bool = True  # test the current slot as last confirmed; undo its training since on leaving it
    fresh_check: bool = True  # keep/switch to a slot only if it beats the mask a new slot would start from
    train: TrainConfig = field(default_factory=TrainConfig)  # its `steps` is unused here

    def __post_init__(self):
        if int(self.check_every) < 1:
            raise UserError(f"check every: expected at least 1 batch, got {self.check_every}; "
                            "pass e.g. `check_every=100`")
        if not float(self.threshold) > 1.0:
            raise UserError(f"threshold: expected a value above 1 (k * max nu is at least 1), got "
                            f"{self.threshold}; pass e.g. 1.125 (the paper's 1 + 2^-3)")
        if self.budget is not None and int(self.budget) < 1:
            raise UserError(f"budget: expected at least 1 mask (or none for no cap), got {self.budget}; "
                            "pass `budget=1` or more")
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {self.objective!r}; "
                            "pick one of those")

    def to_dict(self) -> dict:
        return asdict(self)


class _Slot:
    """One mask slot: its scores (one leaf per masked layer), their optimiser, and its anchor:
    a copy of both taken when a check last confirmed the slot (None until then)."""

    def __init__(self, net: BaseNet, train: TrainConfig, index: int, device):
        self.scores = init_scores(net, train.mask_config, train.seed, index, device=device)
        self.optimizer = make_optimizer(self.scores, train)
        self._masks: Optional[List[np.ndarray]] = None  # binarised masks, cached until trained
        self.anchor = None  # (scores, optimiser state, masks, step) at the last confirmation

    def masks(self, train: TrainConfig) -> List[np.ndarray]:
        if self._masks is None:
            self._masks = binarize(self.scores, train.mask_config)
        return self._masks

    def step(self, net: BaseNet, x: torch.Tensor, y: torch.Tensor, train: TrainConfig) -> torch.Tensor:
        self._masks = None
        return train_step(net, self.scores, self.optimizer, train, x, y)

    def confirm(self, train: TrainConfig, step: int) -> None:
        """Remember the slot as it is at `step`: a check found it explains the data it trains on."""
        self.anchor = ([s.detach().clone() for s in self.scores], copy.deepcopy(self.optimizer.state_dict()),
                       self.masks(train), step)

    def roll_back(self, step: int) -> int:
        """Undo the training since the last confirmation (if any); returns the batches undone."""
        if self.anchor is None:
            return 0
        scores, state, masks, anchor_step = self.anchor
        with torch.no_grad():
            for s, a in zip(self.scores, scores):
                s.copy_(a)
        self.optimizer.load_state_dict(copy.deepcopy(state))
        self._masks = masks
        return step - anchor_step


class NNsLearner:
    """Learns supermasks from unlabelled-task batches: `observe(x, y)` per batch.

    The learner holds only what it decided itself: its slots, the current slot, and a log of
    `checks` (step, k, k_max_nu, best, decision) and `events` (step, kind "allocate"/"switch",
    slot). `step` counts the batches observed before the one concerned (0-based).
    """

    def __init__(self, net: BaseNet, config: NNsConfig, n_classes: int = 10):
        self.net = net
        self.config = config
        self.n_classes = int(n_classes)
        self.device = resolve_device(config.train.device)
        net.to(self.device)
        self.slots: List[_Slot] = [_Slot(net, config.train, 0, self.device)]
        self.current = 0
        self.seen = 0
        self.checks: List[dict] = []
        self.events: List[dict] = [{"step": 0, "kind": "allocate", "slot": 0}]
        self.trained: List[int] = []  # per batch, the slot it trained (-1: training later undone)
        self._fresh: Tuple[int, Optional[List[np.ndarray]]] = (-1, None)  # (slot, its initial mask)

    @property
    def k(self) -> int:
        return len(self.slots)

    def masks(self) -> List[List[np.ndarray]]:
        """Every slot's binarised masks (one numpy bool array per masked layer), in slot order."""
        return [[m.copy() for m in s.masks(self.config.train)] for s in self.slots]

    def _can_allocate(self) -> bool:
        return self.config.budget is None or self.k < int(self.config.budget)

    def _confidence(self, candidates: List[List[np.ndarray]], x: torch.Tensor) -> Tuple[int, float]:
        """(argmax nu, len * max nu), nu = softmax(-dH/dalpha) at alpha uniform over candidates."""
        bank = PackedMaskBank.from_masks(candidates)
        grad = alpha_gradient(self.net, bank, x, objective=self.config.objective, n_classes=self.n_classes)
        nu = np.exp(-(grad - grad.min()))
        nu /= nu.sum()
        best = int(np.argmax(nu))
        return best, float(len(candidates) * nu[best])

    def _beats_fresh(self, masks: List[np.ndarray], x: torch.Tensor, log: List[float]) -> float:
        """The two-candidate test [masks, the mask a new slot would start from]: 2 * nu of
        `masks` (>= threshold: `masks` explains x confidently better than starting over).
        Appends the value to `log`."""
        train = self.config.train
        if self._fresh[0] != self.k:
            self._fresh = (self.k, binarize(init_scores(self.net, train.mask_config, train.seed, self.k),
                                            train.mask_config))
        best, score = self._confidence([masks, self._fresh[1]], x)
        log.append(score if best == 0 else 2.0 - score)
        return log[-1]

    def _check(self, x: torch.Tensor) -> None:
        """The task-inference test on batch x; allocates, switches or confirms a slot."""
        cfg, train = self.config, self.config.train
        threshold = float(cfg.threshold)
        k, current = self.k, self.slots[self.current]
        # the current slot as last confirmed (as it is now if never confirmed, or without rollback)
        reference = current.anchor[2] if (cfg.rollback and current.anchor is not None) else current.masks(train)
        candidates = [s.masks(train) for s in self.slots]
        candidates[self.current] = reference
        # 1. the paper's test over the k slots (with one slot nu = (1): never confident)
        best, score = self._confidence(candidates, x) if self.k > 1 else (0, 1.0)
        verify = (self.k == 1 or cfg.fresh_check) and self._can_allocate()
        fresh_tests = []
        if score >= threshold and best == self.current:
            decision = "continue"
        elif score >= threshold and (not verify or self._beats_fresh(candidates[best], x, fresh_tests) >= threshold):
            decision = "switch"  # 2. (verified: the slot picked explains x better than a fresh mask)
        elif not self._can_allocate():
            decision = "over-budget"  # the best guess: the slot of the largest nu
        elif verify and self._beats_fresh(reference, x, fresh_tests) >= threshold:
            best, decision = self.current, "continue"  # 3. no slot picked, but the current one still fits
        else:
            decision = "allocate"
        # 4. act; leaving the current slot undoes its training since its last confirmation
        rolled = 0
        if cfg.rollback and (decision == "allocate" or best != self.current):
            rolled = current.roll_back(self.seen)
            self.trained[self.seen - rolled:] = [-1] * rolled
        if decision == "allocate":
            self.slots.append(_Slot(self.net, train, self.k, self.device))
            self.current = self.k - 1
            self.events.append({"step": self.seen, "kind": "allocate", "slot": self.current})
        else:
            if best != self.current:
                self.events.append({"step": self.seen, "kind": "switch", "slot": best, "from": self.current})
                self.current = best
            self.slots[self.current].confirm(train, self.seen)
        self.checks.append({"step": self.seen, "k": k, "k_max_nu": score, "best": best,
                            "fresh_tests": fresh_tests, "decision": decision, "slot": self.current,
                            "undone_batches": rolled})

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[int, torch.Tensor]:
        """One labelled batch x (B, 784), y (B,): test first when a check is due, then train the
        current slot on it. Returns (slot trained, loss as a 0-dim tensor: no device sync)."""
        if x.device != self.device:
            x, y = x.to(self.device), y.to(self.device)
        if self.seen > 0 and self.seen % int(self.config.check_every) == 0:
            self._check(x)
        loss = self.slots[self.current].step(self.net, x, y, self.config.train)
        self.trained.append(self.current)
        self.seen += 1
        return self.current, loss


def train_nns(net: BaseNet, stream, n_tasks: int, steps_per_task: int, config: NNsConfig,
              progress: Optional[Callable[[int, torch.Tensor, int], None]] = None) -> Tuple[List[List[np.ndarray]], dict]:
    """Feed tasks 0..n_tasks-1 of `stream` in order, `steps_per_task` batches each, to an
    `NNsLearner` that is told neither the task nor its boundaries.

    Returns (masks, report): masks holds one entry per allocated slot (a list of numpy bool
    arrays, one per masked layer); the report compares the learner's decisions with the truth
    (`_report`). `progress(step, loss, slot)` is called after every batch (1-based step), the loss
    a 0-dim tensor on the device (see `training.train_task`).
    """
    if int(n_tasks) < 1 or int(steps_per_task) < 1:
        raise UserError(f"tasks/steps per task: expected at least 1 each, got {n_tasks}/{steps_per_task}; "
                        "pass positive values")
    if getattr(stream, "n_tasks", None) is not None and n_tasks > stream.n_tasks:
        raise UserError(f"tasks: expected at most {stream.n_tasks} (the stream's tasks), got {n_tasks}; "
                        "pass fewer tasks")
    train = config.train
    learner = NNsLearner(net, config, n_classes=stream.n_classes)
    start = time.perf_counter()
    step = 0
    for t in range(n_tasks):  # the truth: only the stream and the report know it
        task = stream.task(t)
        generator = torch.Generator(device=task.device).manual_seed(derive_seed(train.seed, BATCH_TAG, t))
        for x, y in islice(task.batches(train.batch_size, generator), steps_per_task):
            slot, loss = learner.observe(x, y)
            step += 1
            if progress is not None:
                progress(step, loss, slot)
    report = _report(learner, n_tasks, steps_per_task)
    report["seconds"] = time.perf_counter() - start
    return learner.masks(), report


def _report(learner: NNsLearner, n_tasks: int, steps_per_task: int) -> dict:
    """The learner's decisions against the true tasks (JSON-ready: ints, floats, lists, None)."""
    k = learner.k
    trained = np.asarray(learner.trained, np.int64).reshape(n_tasks, steps_per_task)  # (task, batch)
    boundaries = [t * steps_per_task for t in range(n_tasks)]  # first step of every true task
    task_of = lambda s: min(int(s) // steps_per_task, n_tasks - 1)
    allocations = [{"mask": e["slot"], "step": e["step"], "true_task": task_of(e["step"])}
                   for e in learner.events if e["kind"] == "allocate"]
    switches = [{"step": e["step"], "from": e["from"], "to": e["slot"], "true_task": task_of(e["step"])}
                for e in learner.events if e["kind"] == "switch"]
    # per true task t >= 1: batches from its first one to the first allocation inside the task
    delays = []
    for t in range(1, n_tasks):
        inside = [a["step"] - boundaries[t] for a in allocations if a["true_task"] == t]
        delays.append(min(inside) if inside else None)
    # batches of true task t whose training of slot m was kept
    batches = np.stack([np.bincount(row[row >= 0], minlength=k) for row in trained])  # (n_tasks, k)
    return {
        "n_tasks": int(n_tasks), "steps_per_task": int(steps_per_task), "n_masks": int(k),
        "budget": learner.config.budget, "check_every": int(learner.config.check_every),
        "threshold": float(learner.config.threshold),
        "boundaries": boundaries, "allocations": allocations, "switches": switches,
        "detection_delay": delays,  # None: no mask allocated inside that task
        "batches": batches.tolist(),
        "undone_batches": (trained < 0).sum(axis=1).tolist(),  # per task: training undone by rollback
        # the mask that kept most of the task's batches (None if none kept)
        "task_to_mask": [int(np.argmax(row)) if row.any() else None for row in batches],
        "checks": [dict(c) for c in learner.checks],
    }


def evaluate_nns(net: BaseNet, masks, stream, tasks: Sequence[int],
                 task_to_mask: Optional[Sequence[int]] = None, method: str = "oneshot",
                 batch_size: int = 128, progress=None) -> Dict[int, dict]:
    """Test accuracy of NNs masks with the mask inferred per batch (`inference.infer_task` over
    all learned masks, whatever their number). `masks`: a `PackedMaskBank` (row j = learned
    mask j, e.g. an archive's rows as they are) or per-mask lists of per-layer bool arrays.
    Per task t: accuracy (predictions of the inferred mask; there is no task id to be right or
    wrong about), inferred ({mask: batches}), batches, and with `task_to_mask` given,
    mapped_fraction (batches whose inferred mask is t's). `progress(done, total)` is called
    after every task."""
    if not isinstance(masks, PackedMaskBank):
        masks = list(masks)
        if not masks:
            raise UserError("masks: expected one or more learned masks, got none; run train_nns first")
        masks = PackedMaskBank.from_masks(masks)
    bank = masks
    tasks = list(tasks)
    results = {}
    for k, t in enumerate(tasks):
        correct = samples = 0
        inferred: Dict[int, int] = {}
        for x, y in stream.task(t).test_batches(batch_size):
            guess = infer_task(net, bank, x, method, stream.n_classes)
            inferred[guess] = inferred.get(guess, 0) + 1
            correct += int((predict(net, bank.unpack(guess), x) == y.to(net.device)).sum())
            samples += int(y.shape[0])
        n = sum(inferred.values())
        r = {"accuracy": correct / samples, "inferred": dict(sorted(inferred.items())), "batches": n}
        if task_to_mask is not None:
            r["mapped_fraction"] = inferred.get(int(task_to_mask[t]), 0) / n
        results[int(t)] = r
        if progress is not None:
            progress(k + 1, len(tasks))
    return results
