"""Supermasks: per-task real-valued scores, their binary masks and the straight-through
gradient (Wortsman et al. 2020, §3 "Supermasks"; docs/METHOD.md §5).

Two ways to binarise the scores S of a layer:
- `threshold`: M = 1[S >= 0] (Piggyback style, the paper's GN/NNs runs); with Kaiming-uniform
  scores the initial mask is about 50% dense.
- `topk`: keep the fraction `density` of entries with the largest |S| (edge-popup, the paper's
  GG runs); exactly round(density * numel) ones per layer.
Either way the gradient passes straight through the binarisation: dL/dS = dL/dM (for `topk`
through |S|, i.e. dL/dS = sign(S) dL/dM, as in edge-popup).

Weight masks (lenet, fc1024) have one entry per weight, neuron masks (hopnet) one per hidden unit.

Initial scores of task t, layer l are uniform in [-b, b], b = 1/sqrt(fan_in) (what
`kaiming_uniform_(a=sqrt(5))` gives), drawn on the CPU from a `torch.Generator` seeded with
`derive_seed(seed, SCORE_TAG, t, l)`, so `initial_mask` rebuilds a task's starting mask exactly,
on any device: the base the `delta` codec stores flips against. `score_init="zeros"` starts every
score at 0, i.e. the all-ones mask (the paper's HopSupSup code does this for neuron masks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from supsup_hopfield.basenet import SCORE_TAG, BaseNet, BaseNetSpec, derive_seed
from supsup_hopfield.errors import UserError

MASK_RULES = ("threshold", "topk")
SCORE_INITS = ("kaiming-uniform", "zeros")


@dataclass(frozen=True)
class MaskConfig:
    """How scores become masks and how they start."""

    rule: str = "threshold"
    density: float = 0.5  # topk only: fraction of each layer's entries kept
    score_init: str = "kaiming-uniform"

    def __post_init__(self):
        if self.rule not in MASK_RULES:
            raise UserError(f"mask rule: expected one of {', '.join(MASK_RULES)}, got {self.rule!r}; pick one of those")
        if not 0.0 < float(self.density) <= 1.0:
            raise UserError(f"density: expected a fraction in (0, 1], got {self.density}; pass e.g. `density=0.5`")
        if self.score_init not in SCORE_INITS:
            raise UserError(f"score init: expected one of {', '.join(SCORE_INITS)}, got {self.score_init!r}; "
                            "pick one of those")


def _spec(net_or_spec: Union[BaseNet, BaseNetSpec]) -> BaseNetSpec:
    return net_or_spec.spec if isinstance(net_or_spec, BaseNet) else net_or_spec


# ------------------------------------------------------------------- straight-through binarisers
class _Threshold(torch.autograd.Function):
    """M = 1[S >= 0]; backward passes the gradient straight through."""

    @staticmethod
    def forward(ctx, scores):
        return (scores >= 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def threshold(scores: torch.Tensor) -> torch.Tensor:
    """M = 1[S >= 0] as float, the gradient passed straight through."""
    return _Threshold.apply(scores)


class _TopK(torch.autograd.Function):
    """M = 1 on the k largest entries of each row of `magnitude` (|S|, (rows, n)); gradient
    straight through."""

    @staticmethod
    def forward(ctx, magnitude, k):
        out = torch.zeros_like(magnitude)
        if k > 0:
            out.scatter_(1, torch.topk(magnitude, k, dim=1, sorted=False).indices, 1.0)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _topk_count(numel: int, density: float) -> int:
    return int(round(density * numel))


def scores_to_masks(scores: Sequence[torch.Tensor], config: MaskConfig, stacked: bool = False) -> List[torch.Tensor]:
    """Float masks (0/1) of the scores, differentiable by the straight-through estimator.
    `stacked`: every layer's scores hold K tasks along a leading axis (`topk` keeps the fraction
    `density` of each task's entries)."""
    if config.rule == "threshold":
        return [threshold(s) for s in scores]
    out = []
    for s in scores:
        rows = s.reshape(s.shape[0] if stacked else 1, -1).abs()
        out.append(_TopK.apply(rows, _topk_count(rows.shape[1], config.density)).view(s.shape))
    return out


@torch.no_grad()
def binarize(scores: Sequence[torch.Tensor], config: MaskConfig, stacked: bool = False) -> List[np.ndarray]:
    """The task's final masks: one numpy bool array per masked layer (on the CPU); `stacked`:
    as in `scores_to_masks`, each array then holds the K tasks' masks along its first axis."""
    return [m.bool().cpu().numpy() for m in scores_to_masks([s.detach() for s in scores], config, stacked)]


# ------------------------------------------------------------------------------ initial scores
def init_scores(net_or_spec: Union[BaseNet, BaseNetSpec], config: MaskConfig, seed: int,
                task_index: int, device="cpu", layers: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
    """Initial scores of task `task_index`: one float32 leaf tensor per masked layer (or per
    layer of `layers`: each layer has its own generator, so one is drawn without the others),
    requiring grad. Drawn on the CPU (same values on every device), then moved to `device`."""
    spec = _spec(net_or_spec)
    out = []
    for l in range(len(spec.mask_shapes)) if layers is None else layers:
        shape, fan_in = spec.mask_shapes[l], spec.mask_fan_ins[l]
        if config.score_init == "zeros":
            s = torch.zeros(shape)
        else:
            g = torch.Generator().manual_seed(derive_seed(seed, SCORE_TAG, task_index, l))
            bound = 1.0 / math.sqrt(fan_in)
            s = torch.empty(shape).uniform_(-bound, bound, generator=g)
        out.append(s.to(device).requires_grad_(True))
    return out


def initial_mask(net_or_spec: Union[BaseNet, BaseNetSpec], config: MaskConfig, seed: int,
                 task_index: int, layers: Optional[Sequence[int]] = None) -> List[np.ndarray]:
    """The mask task `task_index` starts from (numpy bool per masked layer, or per layer of
    `layers`), rebuilt exactly."""
    return binarize(init_scores(net_or_spec, config, seed, task_index, layers=layers), config)


# --------------------------------------------------------------------------- checks and helpers
def check_masks(net_or_spec: Union[BaseNet, BaseNetSpec], masks: Sequence) -> None:
    """Raise UserError unless `masks` holds one array of the right shape per masked layer."""
    spec = _spec(net_or_spec)
    shapes = spec.mask_shapes
    if len(masks) != len(shapes):
        raise UserError(f"masks: expected {len(shapes)} layer masks for {spec.architecture}, got "
                        f"{len(masks)}; pass one mask per masked layer")
    for l, (m, shape) in enumerate(zip(masks, shapes)):
        if tuple(m.shape) != tuple(shape):
            raise UserError(f"masks[{l}]: expected shape {tuple(shape)}, got {tuple(m.shape)}; "
                            "pass masks learned on this base network")


def masks_to_tensors(masks: Sequence, device="cpu", dtype=torch.float32) -> List[torch.Tensor]:
    """Numpy bool arrays (or tensors) -> float 0/1 tensors on `device`, ready for BaseNet."""
    return [torch.as_tensor(np.asarray(m) if not torch.is_tensor(m) else m).to(device=device, dtype=dtype)
            for m in masks]


def flip_fraction(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Fraction of all mask entries (every layer together) that differ between a and b."""
    differ = sum(int(np.count_nonzero(x != y)) for x, y in zip(a, b))
    total = sum(int(np.asarray(x).size) for x in a)
    return differ / total if total else 0.0


def density(masks: Sequence[np.ndarray]) -> float:
    """Fraction of ones over all layers."""
    return sum(int(np.count_nonzero(m)) for m in masks) / max(1, sum(int(np.asarray(m).size) for m in masks))


class MaskedModel(nn.Module):
    """The frozen base network with one task's trainable scores: `forward(x)` binarises the
    scores (straight-through) and runs the base network under those masks."""

    def __init__(self, net: BaseNet, scores: Sequence[torch.Tensor], config: MaskConfig):
        super().__init__()
        self.net = net
        self.config = config
        self.scores = nn.ParameterList([nn.Parameter(s.detach().clone()) for s in scores])

    def masks(self) -> List[torch.Tensor]:
        return scores_to_masks(list(self.scores), self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.masks())

    def export_masks(self) -> List[np.ndarray]:
        return binarize(list(self.scores), self.config)
