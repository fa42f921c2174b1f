"""Learning one task's supermask on the frozen base network, and evaluating it with the task
given (scenario GG) (Wortsman et al. 2020, §3 and §4; docs/METHOD.md §5).

Per task: fresh scores from (seed, task) (`masks.init_scores`), `steps` random batches of
`batch_size` from the task (`streams.Task.batches`, generator seeded from (seed, task)),
cross-entropy over all outputs (superfluous ones included), only the scores trained. The paper's
recipe: 1000 batches of 128, RMSProp lr 1e-4 (no momentum, no weight decay). For the HopSupSup
network the paper's code uses SGD lr 0.1, momentum 0.9, weight decay 1e-4 for one epoch;
`TrainConfig.for_architecture("hopnet")` returns that recipe.

Measured here (CPU, 1 thread, Fashion-MNIST, seed 0):
- lenet 784-300-100-500, threshold weight masks, permuted tasks 0-2, paper recipe:
  test accuracy 0.838 / 0.838 / 0.836 (mean 0.837), 4-6 s per task, 12.2% of mask entries
  flipped from the initial mask.
- hopnet 784-2048-2048-10, neuron masks, split tasks 0-4, 100 steps each: SGD recipe mean 0.987
  (31% flipped), RMSProp lr 1e-4 mean 0.979 (18% flipped); ~6 s per task. Hence SGD for hopnet.

On the CPU a run is deterministic for a seed: same masks bit for bit.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from supsup_hopfield.basenet import BATCH_TAG, BaseNet, derive_seed
from supsup_hopfield.errors import UserError
from supsup_hopfield.masks import (MaskConfig, binarize, check_masks, density, flip_fraction,
                                   init_scores, masks_to_tensors, scores_to_masks)
from supsup_hopfield.streams import Task

OPTIMIZERS = ("rmsprop", "sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """How one task's scores are learned. Defaults: the paper's LeNet recipe."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-4
    optimizer: str = "rmsprop"
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0  # seeds the scores' init and the batch order, per task
    device: str = "auto"
    mask: str = "threshold"  # "threshold" (1[S >= 0]) or "topk"
    density: float = 0.5  # topk only
    score_init: str = "kaiming-uniform"  # or "zeros" (all-ones initial mask)

    def __post_init__(self):
        if int(self.steps) < 1:
            raise UserError(f"steps: expected at least 1, got {self.steps}; pass `steps=1` or more")
        if int(self.batch_size) < 2:
            raise UserError(f"batch size: expected at least 2, got {self.batch_size}; pass `batch_size=2` or more")
        if not float(self.lr) > 0:
            raise UserError(f"lr: expected a positive learning rate, got {self.lr}; pass e.g. `lr=1e-4`")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}; pick one of those")
        if float(self.momentum) < 0 or float(self.weight_decay) < 0:
            raise UserError(f"momentum/weight decay: expected values >= 0, got {self.momentum}/{self.weight_decay}; "
                            "pass non-negative values")
        if self.device not in DEVICES:
            raise UserError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}; pick one of those")
        self.mask_config  # validates mask, density and score_init

    @property
    def mask_config(self) -> MaskConfig:
        return MaskConfig(rule=self.mask, density=self.density, score_init=self.score_init)

    @classmethod
    def for_architecture(cls, architecture: str, **overrides) -> "TrainConfig":
        """The default recipe of an architecture, with `overrides` applied."""
        base = cls()
        if architecture == "hopnet":  # the paper's HopSupSup recipe
            base = replace(base, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-4)
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: expected a CUDA GPU for `device='cuda'`, got none; pass `device='cpu'` or 'auto'")
    return torch.device(device)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def train_task(net: BaseNet, task: Task, config: TrainConfig, task_index: int,
               progress: Optional[Callable[[int, torch.Tensor], None]] = None) -> Tuple[List[np.ndarray], dict]:
    """Learn the supermask of `task` on the frozen `net`.

    Returns (masks, info): masks is one numpy bool array per masked layer (`net.mask_shapes`);
    info holds seconds, steps, final_loss (mean of the last 50 steps), density, flip_fraction
    (entries differing from the initial mask) and samples_per_s. `progress(step, loss)` is
    called after every step (1-based) when given, with the loss as a 0-dim tensor on the
    device: `float(loss)` waits for the GPU, so a progress bar reads it only when it redraws.
    """
    device = resolve_device(config.device)
    net.to(device)
    mask_config = config.mask_config
    start = time.perf_counter()

    # 1. fresh scores for this task, from (seed, task)
    scores = init_scores(net, mask_config, config.seed, task_index, device=device)
    initial = binarize(scores, mask_config)
    optimizer = make_optimizer(scores, config)

    # 2. the batch order, from (seed, task), drawn on the data's device
    generator = torch.Generator(device=task.device).manual_seed(derive_seed(config.seed, BATCH_TAG, task_index))
    batches = islice(task.batches(config.batch_size, generator), config.steps)

    # 3. straight-through training of the scores only
    losses = torch.zeros(config.steps, device=device)
    for step, (x, y) in enumerate(batches):
        if x.device != device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = train_step(net, scores, optimizer, mask_config, x, y)
        losses[step] = loss
        if progress is not None:
            progress(step + 1, loss)

    # 4. export
    masks = binarize(scores, mask_config)
    seconds = time.perf_counter() - start
    tail = losses[max(0, config.steps - 50):]
    info = {
        "task": int(task_index),
        "steps": int(config.steps),
        "seconds": seconds,
        "samples_per_s": config.steps * config.batch_size / seconds,
        "final_loss": float(tail.mean()),
        "density": density(masks),
        "flip_fraction": flip_fraction(masks, initial),
    }
    return masks, info


def train_step(net: BaseNet, scores, optimizer, mask_config: MaskConfig, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """One straight-through step on the batch (x, y): cross-entropy of `net` under the masks of
    `scores`, and the scores updated. Returns the loss, detached, on the device (reading it
    would make the step wait for the GPU). Training, NNs and the benchmark all step this way."""
    logits = net(x, scores_to_masks(scores, mask_config))  # (B, outputs)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def predict(net: BaseNet, masks: Sequence, x: torch.Tensor) -> torch.Tensor:
    """Class predictions (argmax over all outputs, superfluous ones included) of `net` under one
    task's `masks` (numpy bool arrays or tensors) for the batch x."""
    return net(x.to(net.device), masks_to_tensors(masks, device=net.device)).argmax(dim=1)


@torch.no_grad()
def evaluate(net: BaseNet, masks: Sequence, task: Task, batch_size: int = 1000) -> float:
    """Test accuracy of `net` under `masks` on `task`, with the task given (GG). hopnet's
    BatchNorm uses the statistics of each test batch, so `batch_size` matters there."""
    check_masks(net, masks)
    mask_tensors = masks_to_tensors(masks, device=net.device)
    correct = total = 0
    for x, y in task.test_batches(batch_size):
        correct += int((predict(net, mask_tensors, x) == y.to(net.device)).sum())
        total += y.shape[0]
    return correct / total
