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

ARCHITECTURES = ("lenet", "fc1024", "hopnet", "resnet18")
# resnet18's "width" is its base number of filters: 20 is the reduced ResNet-18 continual-learning
# papers use on SplitCIFAR100 (as the paper does), 64 the standard one
DEFAULT_WIDTHS = {"lenet": (300, 100), "fc1024": (1024, 1024), "hopnet": (2048, 2048), "resnet18": (20,)}
MASK_KINDS = {"lenet": "weight", "fc1024": "weight", "hopnet": "neuron", "resnet18": "weight"}
IN_FEATURES = 784
IMAGE_SHAPE = (3, 32, 32)  # resnet18's input (CIFAR), flattened to 3072 features in a batch
BN_MOMENTUM = 0.1  # running statistics of resnet18's BatchNorms, as torch's BatchNorm2d keeps them
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
        if self.architecture == "resnet18" and len(widths) != 1:
            raise UserError(f"widths: resnet18 takes one base width (its number of first-stage filters), got "
                            f"{list(widths)}; pass e.g. `widths=(20,)`")
        if int(self.outputs) < 2:
            raise UserError(f"outputs: expected at least 2 output neurons, got {self.outputs}; pass `outputs=10` or more")

    @property
    def sizes(self) -> Tuple[int, ...]:
        """Layer sizes, input to output: e.g. (784, 300, 100, 10); resnet18: (3072, outputs)."""
        if self.architecture == "resnet18":
            return (int(np.prod(IMAGE_SHAPE)), int(self.outputs))
        return (IN_FEATURES, *self.widths, int(self.outputs))

    @property
    def weight_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """(out, in) of every linear layer; resnet18: (out, in, k, k) of every convolution in
        forward order (a block's two convolutions, then its shortcut where it has one), then
        the final linear layer's (outputs, 8 * width)."""
        if self.architecture == "resnet18":
            return tuple(shape for shape, _ in _resnet_convs(self.widths[0])) + ((int(self.outputs), 8 * self.widths[0]),)
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
        """fan_in of the layer each mask belongs to (sets the score init scale)."""
        return tuple(int(np.prod(shape[1:])) for shape in self.weight_shapes[: len(self.mask_shapes)])

    @property
    def batchnorm_widths(self) -> Tuple[int, ...]:
        """Channels of each BatchNorm that keeps running statistics (resnet18 only), in forward
        order: the stem's, then per block its two and its shortcut's where it has one."""
        if self.architecture != "resnet18":
            return ()
        return tuple(shape[0] for shape, _ in _resnet_convs(self.widths[0]))

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, "widths": list(self.widths),
                "outputs": int(self.outputs), "seed": int(self.seed), "init": "signed-constant",
                "gain": GAIN}


def _resnet_blocks(width: int):
    """resnet18's layout: the stem's ((out, in, k, k), stride), then its 8 basic blocks, each the
    list of its convolutions: two 3×3, then a 1×1 shortcut where the shape changes. 4 stages of 2
    blocks, planes width·2^s; the first block of stages 2-4 runs at stride 2."""
    stem, blocks, planes_in = ((width, IMAGE_SHAPE[0], 3, 3), 1), [], width
    for stage in range(4):
        planes = width * 2 ** stage
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            convs = [((planes, planes_in, 3, 3), stride), ((planes, planes, 3, 3), 1)]
            if stride != 1 or planes_in != planes:
                convs.append(((planes, planes_in, 1, 1), stride))
            blocks.append(convs)
            planes_in = planes
    return stem, blocks


def _resnet_convs(width: int):
    """((out, in, k, k), stride) of resnet18's convolutions in forward order (`_resnet_blocks`
    flattened): each block's two convolutions, then its shortcut."""
    stem, blocks = _resnet_blocks(width)
    return [stem] + [conv for block in blocks for conv in block]


def signed_constant(shape: Tuple[int, ...], seed: int, layer: int) -> torch.Tensor:
    """±gain/sqrt(fan_in) with equal probability; float32 (out, in, ...) on the CPU, fan_in the
    product of every dimension but the first."""
    rng = np.random.default_rng(derive_seed(seed, WEIGHT_TAG, layer))
    signs = rng.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1  # (out, in, ...) in {-1, +1}
    c = GAIN / math.sqrt(int(np.prod(shape[1:])))
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

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None, batchnorm=None,
                update: bool = False) -> torch.Tensor:
        """x (B, 784) -> logits (B, outputs) (resnet18: x (B, 3072), images flattened). `masks`:
        one tensor per masked layer (shapes `mask_shapes`), or None for the unmasked network.

        resnet18's BatchNorms: `batchnorm` None normalises with each batch's statistics; a
        task's running statistics (`new_batchnorm`) are used instead, or, with `update`, the
        batch's are used and folded into them (training).

        K tasks at once: x (K, B, 784) and masks (K, *mask_shape) per layer -> logits (K, B,
        outputs), each task's batch under its own masks (and, for hopnet, its own BatchNorm
        statistics): what `training.train_tasks` steps K tasks with."""
        weights = self.weights
        if masks is not None and len(masks) != len(self.mask_shapes):
            raise UserError(f"masks: expected {len(self.mask_shapes)} layer masks for "
                            f"{self.spec.architecture}, got {len(masks)}; pass one mask per masked layer")
        last = len(weights) - 1
        if self.spec.architecture == "resnet18":
            if x.dim() == 3:  # K tasks: their masks and BatchNorm statistics differ, so one by one
                return torch.stack([self._resnet(x[k], None if masks is None else [m[k] for m in masks],
                                                 None if batchnorm is None else batchnorm[k], update)
                                    for k in range(x.shape[0])])
            return self._resnet(x, masks, batchnorm, update)
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


    def new_batchnorm(self) -> list:
        """Fresh running statistics for one task: [(mean 0, var 1)] per BatchNorm (resnet18)."""
        return [(torch.zeros(c, device=self.device), torch.ones(c, device=self.device))
                for c in self.spec.batchnorm_widths]

    def _resnet(self, x, masks, batchnorm, update):
        weights = self.weights
        if masks is not None:
            weights = [w * m for w, m in zip(weights, masks)]
        stats = iter(batchnorm or [(None, None)] * len(self.spec.batchnorm_widths))
        strides = iter(stride for _, stride in _resnet_convs(self.spec.widths[0]))
        convs = iter(weights[:-1])

        def conv_bn(h):
            w, (mean, var) = next(convs), next(stats)
            h = F.conv2d(h, w, stride=next(strides), padding=w.shape[-1] // 2)
            return F.batch_norm(h, mean, var, training=mean is None or update, momentum=BN_MOMENTUM, eps=BN_EPS)

        h = F.relu(conv_bn(x.reshape(-1, *IMAGE_SHAPE)))
        for block in _resnet_blocks(self.spec.widths[0])[1]:
            out = conv_bn(F.relu(conv_bn(h)))
            h = F.relu(out + (conv_bn(h) if len(block) == 3 else h))  # a third convolution: the shortcut
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)  # (B, 8 * width)
        return F.linear(h, weights[-1])


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
