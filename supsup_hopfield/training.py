"""Learning one task's supermask on the frozen base network, and evaluating it with the task
given (scenario GG) (Wortsman et al. 2020, §3 and §4; docs/METHOD.md §5).

Per task: fresh scores from (seed, task) (`masks.init_scores`), `steps` random batches of
`batch_size` from the task (`streams.Task.batches`, generator seeded from (seed, task)),
cross-entropy over all outputs (superfluous ones included), only the scores trained. The paper's
recipe: 1000 batches of 128, RMSProp lr 1e-4 (no momentum, no weight decay). For the HopSupSup
network the paper's code uses SGD lr 0.1, momentum 0.9, weight decay 1e-4 for one epoch;
`TrainConfig.for_architecture("hopnet")` returns that recipe; for resnet18 on SplitCIFAR100 it
uses Adam lr 1e-3 (`for_architecture("resnet18")`).

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
# Lightning's names: float32 throughout, or matrix products in bfloat16 under autocast (scores,
# their gradients, optimiser state and masks stay float32)
PRECISIONS = ("32", "bf16-mixed")


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
    precision: str = "32"  # or "bf16-mixed" (PRECISIONS)

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
        check_precision(self.precision)
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
        if architecture == "resnet18":  # the paper's SplitCIFAR100 recipe
            base = replace(base, lr=1e-3, optimizer="adam")
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


def batchnorm_lists(stats) -> list:
    """A task's BatchNorm running statistics as plain lists, [[mean, var] per BatchNorm]: how a
    run records them beside the task's metrics (float32 values, exact through JSON)."""
    return [[mean.float().cpu().tolist(), var.float().cpu().tolist()] for mean, var in stats]


def batchnorm_tensors(lists, device) -> list:
    """`batchnorm_lists` back to [(mean, var)] float32 tensors on `device`."""
    return [(torch.tensor(mean, device=device), torch.tensor(var, device=device)) for mean, var in lists]


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}; pick one of those")


def bf16_is_native(device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware (CPU: AVX-512 BF16 or AMX; CUDA: what
    torch reports without emulation). Without it bf16-mixed is emulated and SLOWER than 32:
    a hopnet step took 1.8x (AVX-512 without BF16) and 130x (AVX2) as long as in float32."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no `including_emulation`
            return torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if p is not None]
    return not probes or any(p() for p in probes)  # a torch without the probes: assume native


def autocast(device: torch.device, precision: str):
    """The context a forward pass runs in at `precision` on `device` (CPU or CUDA)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def train_task(net: BaseNet, task: Task, config: TrainConfig, task_index: int,
               progress: Optional[Callable[[int, torch.Tensor], None]] = None) -> Tuple[List[np.ndarray], dict]:
    """Learn the supermask of `task` on the frozen `net`: `train_tasks` with one task.

    Returns (masks, info): masks is one numpy bool array per masked layer (`net.mask_shapes`);
    info holds seconds, steps, final_loss (mean of the last 50 steps), density, flip_fraction
    (entries differing from the initial mask) and samples_per_s. `progress(step, loss)` is
    called after every step (1-based) when given, with the loss as a 0-dim tensor on the
    device: `float(loss)` waits for the GPU, so a progress bar reads it only when it redraws.
    """
    return train_tasks(net, [task], config, [task_index],
                       progress=None if progress is None else lambda step, losses: progress(step, losses[0]))[0]


def train_tasks(net: BaseNet, tasks: Sequence[Task], config: TrainConfig, task_indices: Sequence[int],
                progress: Optional[Callable[[int, torch.Tensor], None]] = None) -> List[Tuple[List[np.ndarray], dict]]:
    """Learn the supermasks of K tasks together, one batched step for all of them per batch.

    Each task keeps what it would have alone: scores seeded from (seed, its index), its own batch
    order, its own optimiser state (the optimisers are elementwise, so one optimiser over the
    K tasks' stacked scores updates each task's entries as its own optimiser would; the summed
    loss gives each task's scores exactly its own gradient). So a task's mask does not depend on
    K beyond floating-point rounding. Training runs in `net`'s dtype (float64 after
    `net.double()`). Returns (masks, info) per task as `train_task` does; `seconds` and
    `samples_per_s` are the group's, shared out over its K tasks. `progress(step, losses)` gets
    the K losses (tensor on the device) after every step.
    """
    if len(tasks) != len(task_indices) or not tasks:
        raise UserError(f"tasks: expected one index per task, got {len(tasks)} tasks and {len(task_indices)} "
                        "indices; pass as many of each (one or more)")
    device = resolve_device(config.device)
    net.to(device)
    mask_config = config.mask_config
    k, steps = len(tasks), config.steps
    start = time.perf_counter()

    # 1. fresh scores of every task, from (seed, task), stacked layer by layer: (K, *mask shape)
    seeded = [init_scores(net, mask_config, config.seed, i, device=device) for i in task_indices]
    scores = [torch.stack([s[l].detach() for s in seeded]).to(net.dtype).requires_grad_(True)
              for l in range(len(net.mask_shapes))]
    initial = binarize(scores, mask_config, stacked=True)
    optimizer = make_optimizer(scores, config)
    # each task's BatchNorm running statistics (resnet18; none elsewhere), kept for evaluation
    batchnorm = [net.new_batchnorm() for _ in tasks] if net.spec.batchnorm_widths else None

    # 2. each task's batch order, from (seed, task), drawn on the data's device
    streams = [islice(task.batches(config.batch_size, torch.Generator(device=task.device).manual_seed(
        derive_seed(config.seed, BATCH_TAG, i))), steps) for task, i in zip(tasks, task_indices)]

    # 3. straight-through training of the scores only
    losses = torch.zeros(steps, k, device=device, dtype=net.dtype)
    for step, batches in enumerate(zip(*streams)):
        x = torch.stack([b[0] for b in batches]).to(device, net.dtype, non_blocking=True)  # (K, B, 784)
        y = torch.stack([b[1] for b in batches]).to(device, non_blocking=True)  # (K, B)
        losses[step] = train_step(net, scores, optimizer, config, x, y, batchnorm)
        if progress is not None:
            progress(step + 1, losses[step])

    # 4. export
    masks = binarize(scores, mask_config, stacked=True)
    seconds = (time.perf_counter() - start) / k
    tail = losses[max(0, steps - 50):].mean(0).tolist()
    out = []
    for t, i in enumerate(task_indices):
        task_masks, task_initial = [m[t] for m in masks], [m[t] for m in initial]
        out.append((task_masks, {
            "task": int(i),
            "steps": int(steps),
            "seconds": seconds,
            "samples_per_s": steps * config.batch_size / seconds,
            "final_loss": tail[t],
            "density": density(task_masks),
            "flip_fraction": flip_fraction(task_masks, task_initial),
            **({} if batchnorm is None else {"batchnorm": batchnorm_lists(batchnorm[t])}),
        }))
    return out


def train_step(net: BaseNet, scores, optimizer, config: TrainConfig, x: torch.Tensor,
               y: torch.Tensor, batchnorm=None) -> torch.Tensor:
    """One straight-through step on the batch (x, y): cross-entropy of `net` under the masks of
    `scores`, and the scores updated, the forward pass at `config.precision`. With one task's
    scores x is (B, 784) and the loss a 0-dim tensor; with K tasks' scores stacked (K, ...), x is
    (K, B, 784), y (K, B), and the K losses come back. The loss is detached, on the device
    (reading it would make the step wait for the GPU). `batchnorm`: the task's (K tasks':
    a list) BatchNorm running statistics, updated in place (resnet18). Training, NNs and the
    benchmark all step this way."""
    with autocast(x.device, config.precision):
        masks = scores_to_masks(scores, config.mask_config, stacked=x.dim() == 3)
        logits = net(x, masks, batchnorm, update=batchnorm is not None)  # (..., B, outputs)
    if logits.dtype == torch.bfloat16:
        logits = logits.float()  # the loss in float32 (float64 stays float64)
    per_sample = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    loss = per_sample.view(y.shape).mean(-1)  # per task
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def predict(net: BaseNet, masks: Sequence, x: torch.Tensor, batchnorm=None) -> torch.Tensor:
    """Class predictions (argmax over all outputs, superfluous ones included) of `net` under one
    task's `masks` (numpy bool arrays or tensors) for the batch x, with the task's BatchNorm
    running statistics where it has them (resnet18). Runs at the precision of the caller's
    `autocast` context, if any."""
    masks = masks_to_tensors(masks, device=net.device, dtype=net.dtype)
    return net(x.to(net.device, net.dtype), masks, batchnorm).argmax(dim=1)


@torch.no_grad()
def evaluate(net: BaseNet, masks: Sequence, task: Task, batch_size: int = 1000, batchnorm=None) -> float:
    """Test accuracy of `net` under `masks` on `task`, with the task given (GG), at the
    precision of the caller's `autocast` context, if any. hopnet's BatchNorm uses the statistics
    of each test batch, so `batch_size` matters there; resnet18's uses the task's running
    statistics `batchnorm` (`batchnorm_lists` form, as a run records them) when given."""
    check_masks(net, masks)
    mask_tensors = masks_to_tensors(masks, device=net.device, dtype=net.dtype)
    stats = None if batchnorm is None else batchnorm_tensors(batchnorm, net.device)
    correct = total = 0
    for x, y in task.test_batches(batch_size):
        correct += int((predict(net, mask_tensors, x, stats) == y.to(net.device)).sum())
        total += y.shape[0]
    return correct / total
