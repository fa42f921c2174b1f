"""Base networks: fixed, randomly initialised, never trained (Wortsman et al. 2020, §3 and
Appendix; docs/METHOD.md §5).

A base network is rebuilt from (architecture, widths, outputs, seed) alone, so an archive stores
only that recipe. Weights are "signed constants": each is ±c with equal probability,
c = gain / sqrt(fan_in), gain = sqrt(2) (the Kaiming constant for ReLU), no bias. The signs of
layer l come from `numpy.random.default_rng(derive_seed(seed, WEIGHT_TAG, l))`.

Architectures (`widths` are the hidden widths):
- `lenet`  784-300-100-out, ReLU, every layer WEIGHT-masked (the paper's LeNet 300-100).
- `fc1024` 784-1024-1024-out, ReLU, every layer weight-masked.
- `hopnet` 784-2048-2048-out (out = 10 by default): each hidden layer is Linear -> BatchNorm
  (no affine parameters, batch statistics always, no running statistics) -> NEURON mask ->
  Swish (SiLU). The mask is passed to batch_norm as its scale, as in the paper's HopSupSup code;
  the last layer is unmasked. gain sqrt(2) is kept for hopnet too (as the paper's code does):
  BatchNorm makes the hidden layers' scale irrelevant, and it keeps the logits' scale moderate.

`BaseNet.forward(x, masks)` takes one mask per masked layer, so one frozen network serves every
task (or K tasks in one call, masks and batches stacked on a leading axis). Masks may be float (e.g. a superposition sum_i alpha_i M_i for task inference).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from supsup_hopfield.errors import UserError

ARCHITECTURES = ("lenet", "fc1024", "hopnet")
DEFAULT_WIDTHS = {"lenet": (300, 100), "fc1024": (1024, 1024), "hopnet": (2048, 2048)}
MASK_KINDS = {"lenet": "weight", "fc1024": "weight", "hopnet": "neuron"}
IN_FEATURES = 784
GAIN = math.sqrt(2.0)  # Kaiming gain for ReLU
BN_EPS = 1e-5

# Tags keep the random streams of different purposes apart when they share a seed.
WEIGHT_TAG, SCORE_TAG, BATCH_TAG = 0, 1, 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. seed, tag, task, layer) via SeedSequence:
    distinct key tuples give independent streams for torch and numpy generators alike."""
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


@dataclass(frozen=True)
class BaseNetSpec:
    """Everything that rebuilds a base network."""

    architecture: str = "lenet"
    widths: Tuple[int, ...] = (300, 100)
    outputs: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise UserError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, got "
                            f"{self.architecture!r}; pick one of those")
        widths = tuple(int(w) for w in self.widths)
        object.__setattr__(self, "widths", widths)
        if not widths or min(widths) < 1:
            raise UserError(f"widths: expected one or more positive hidden widths, got {list(widths)}; "
                            "pass e.g. `widths=(300, 100)`")
        if int(self.outputs) < 2:
            raise UserError(f"outputs: expected at least 2 output neurons, got {self.outputs}; pass `outputs=10` or more")

    @property
    def sizes(self) -> Tuple[int, ...]:
        """Layer sizes, input to output: e.g. (784, 300, 100, 10)."""
        return (IN_FEATURES, *self.widths, int(self.outputs))

    @property
    def weight_shapes(self) -> Tuple[Tuple[int, int], ...]:
        """(out, in) of every linear layer."""
        s = self.sizes
        return tuple((s[i + 1], s[i]) for i in range(len(s) - 1))

    @property
    def mask_kind(self) -> str:
        """'weight' (one mask entry per weight) or 'neuron' (one per hidden unit)."""
        return MASK_KINDS[self.architecture]

    @property
    def mask_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """Shape of each masked layer's mask, in forward order."""
        if self.mask_kind == "weight":
            return self.weight_shapes
        return tuple((w,) for w in self.widths)

    @property
    def mask_fan_ins(self) -> Tuple[int, ...]:
        """fan_in of the linear layer each mask belongs to (sets the score init scale)."""
        return tuple(shape[1] for shape in self.weight_shapes[: len(self.mask_shapes)])

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, "widths": list(self.widths),
                "outputs": int(self.outputs), "seed": int(self.seed), "init": "signed-constant",
                "gain": GAIN}


def signed_constant(shape: Tuple[int, int], seed: int, layer: int) -> torch.Tensor:
    """±gain/sqrt(fan_in) with equal probability; float32 (out, in) on the CPU."""
    rng = np.random.default_rng(derive_seed(seed, WEIGHT_TAG, layer))
    signs = rng.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1  # (out, in) in {-1, +1}
    c = GAIN / math.sqrt(shape[1])
    return torch.from_numpy(signs.astype(np.float32) * np.float32(c))


class BaseNet(nn.Module):
    """A frozen signed-constant MLP; `forward(x, masks)` applies one mask per masked layer.

    Weights are buffers (never parameters, requires_grad False), so optimisers never see them
    and `.to(device)` moves them.
    """

    def __init__(self, spec: BaseNetSpec):
        super().__init__()
        self.spec = spec
        for l, shape in enumerate(spec.weight_shapes):
            self.register_buffer(f"weight{l}", signed_constant(shape, spec.seed, l))

    @property
    def weights(self) -> list:
        return [getattr(self, f"weight{l}") for l in range(len(self.spec.weight_shapes))]

    @property
    def mask_kind(self) -> str:
        return self.spec.mask_kind

    @property
    def mask_shapes(self):
        return self.spec.mask_shapes

    @property
    def device(self) -> torch.device:
        return self.weight0.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weight0.dtype

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """x (B, 784) -> logits (B, outputs). `masks`: one tensor per masked layer (shapes
        `mask_shapes`), or None for the unmasked network.

        K tasks at once: x (K, B, 784) and masks (K, *mask_shape) per layer -> logits (K, B,
        outputs), each task's batch under its own masks (and, for hopnet, its own BatchNorm
        statistics): what `training.train_tasks` steps K tasks with."""
        weights = self.weights
        if masks is not None and len(masks) != len(self.mask_shapes):
            raise UserError(f"masks: expected {len(self.mask_shapes)} layer masks for "
                            f"{self.spec.architecture}, got {len(masks)}; pass one mask per masked layer")
        last = len(weights) - 1
        if self.mask_kind == "weight":
            h = x
            for l, w in enumerate(weights):
                if masks is not None:
                    w = w * masks[l]  # (out, in), or (K, out, in): the supermask selects weights
                if w.dim() == 3 and w.shape[0] == 1:
                    w = w[0]  # one task: the plain product is faster than a batch of one
                h = F.linear(h, w) if w.dim() == 2 else torch.bmm(h, w.transpose(1, 2))
                if l < last:
                    h = F.relu(h)
            return h
        # neuron masks: the weights are shared, so K tasks' batches go through ONE product, laid
        # out (B, K, features) so that (B, K * width) is a view whose columns BatchNorm normalises
        # task by task, with the K tasks' masks side by side as its scale
        stacked = x.dim() == 3
        k, b = (x.shape[0], x.shape[1]) if stacked else (1, x.shape[0])
        h = x.transpose(0, 1).reshape(b * k, -1) if stacked else x  # rows: sample 0 of each task, ...
        for l, w in enumerate(weights[:-1]):
            h = F.linear(h, w)  # (B * K, width)
            # BatchNorm with batch statistics and the neuron mask as its scale (no shift)
            scale = masks[l].reshape(-1) if masks is not None else None
            h = F.batch_norm(h.view(b, -1), None, None, weight=scale, bias=None, training=True,
                             eps=BN_EPS).view(b * k, -1)
            h = F.silu(h)
        h = F.linear(h, weights[-1])
        return h.view(b, k, -1).transpose(0, 1) if stacked else h


def build_basenet(architecture: str = "lenet", widths: Optional[Sequence[int]] = None,
                  outputs: int = 10, seed: int = 0, device="cpu") -> BaseNet:
    """Rebuild the base network of (architecture, widths, outputs, seed) on `device`.
    `widths=None` takes the architecture's default hidden widths."""
    if architecture not in ARCHITECTURES:
        raise UserError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, got "
                        f"{architecture!r}; pick one of those")
    spec = BaseNetSpec(architecture, tuple(widths) if widths is not None else DEFAULT_WIDTHS[architecture],
                       int(outputs), int(seed))
    return BaseNet(spec).to(device)


def build_from_spec(spec: BaseNetSpec, device="cpu") -> BaseNet:
    return BaseNet(spec).to(device)
