"""Task streams: PermutedMNIST, RotatedMNIST, SplitMNIST, their Fashion-MNIST twins and
SplitCIFAR100 (Wortsman et al. 2020, §4.1 and Appendix; docs/METHOD.md §7).

Every task is fixed by (stream seed, task index) alone, computed in the main process, so any task
can be rebuilt without replaying the ones before it:

- permuted-*: task i applies the pixel permutation `numpy.random.default_rng([seed, i])
  .permutation(784)`. Every task is permuted, the first one included (as in the paper's code);
  no task is the identity.
- rotated-*: task i rotates every image counter-clockwise by the angle
  `numpy.random.default_rng([seed, i]).uniform(0, 180)` degrees (bilinear, zero fill). The whole
  uint8 dataset is rotated once per task with a batched `grid_sample` on the device and cached
  (the last `cache_tasks` rotated tasks are kept).
- split-*: 5 tasks; task i holds classes (2i, 2i+1). Labels keep their ORIGINAL values 0..9 by
  default, as the paper's code does (one shared 10-way output); `relabel=True` maps them to 0/1.
  The seed is unused (the split is fixed).
- split-cifar100: 20 tasks of 5 of the 100 fine classes. The partition is drawn from the seed:
  `cifar_class_split(seed)` = `numpy.random.default_rng([seed, CIFAR_SPLIT_TAG]).permutation(100)
  .reshape(20, 5)`, and task i holds the classes of row i, relabeled 0..4 in the order of the row
  (one 5-way output per task, as in the paper; `relabel` is ignored, always on). The partition is
  recorded in `recipe()["class_split"]` and each task's row in `description["classes"]`. Batches
  are x float32 (B, 3072): the (3, 32, 32) image flattened in CHW order and normalised per channel.
  Training batches are augmented as the paper's recipe does (torchvision's RandomCrop(32,
  padding=4) then RandomHorizontalFlip()): per sample, a 32x32 crop of the image zero-padded by 4
  pixels on each side (in uint8, before normalising), then a horizontal flip with probability 0.5,
  drawn from the caller's generator, batched on the device (`augment_crop_flip`). Test batches
  are not augmented.

Batches are gathered on the device from the uint8 tensor and normalised there: no per-sample
Python transform, no DataLoader. Training batches are random (a fresh permutation of the training
set per epoch, drawn from the caller's `torch.Generator`; the last incomplete batch of an epoch is
dropped so every batch has `batch_size` rows).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Optional, Sequence, Tuple

import math

import numpy as np
import torch
import torch.nn.functional as F

from supsup_hopfield.data import Dataset, load_dataset
from supsup_hopfield.errors import UserError

KINDS = ("permuted", "rotated", "split")
STREAMS = tuple(f"{k}-{d}" for d in ("mnist", "fashion-mnist") for k in KINDS) + ("split-cifar100",)
N_PIXELS = 784
SPLIT_TASKS = 5

CIFAR_CLASSES = 100
CIFAR_TASKS = 20
CIFAR_CLASSES_PER_TASK = CIFAR_CLASSES // CIFAR_TASKS  # 5
CIFAR_SPLIT_TAG = 0xC1FA100  # second seed word of the class partition: apart from task indices
CIFAR_PADDING = 4  # pixels of zero padding around the image before the random 32x32 crop


def parse_stream_name(name: str) -> Tuple[str, str]:
    """'permuted-fashion-mnist' -> ('permuted', 'fashion-mnist')."""
    if name not in STREAMS:
        raise UserError(f"stream: expected one of {', '.join(STREAMS)}, got {name!r}; pick one of those")
    kind, dataset = name.split("-", 1)
    return kind, dataset


def task_permutation(seed: int, task_index: int) -> np.ndarray:
    """The pixel permutation of permuted task `task_index` (int64, length 784)."""
    return np.random.default_rng([seed, task_index]).permutation(N_PIXELS)


def task_angle(seed: int, task_index: int) -> float:
    """The rotation angle in degrees, in [0, 180), of rotated task `task_index`."""
    return float(np.random.default_rng([seed, task_index]).uniform(0.0, 180.0))


def split_classes(task_index: int) -> Tuple[int, int]:
    """The two original classes of split task `task_index`."""
    return 2 * task_index, 2 * task_index + 1


def cifar_class_split(seed: int) -> np.ndarray:
    """The class partition of split-cifar100 for stream `seed`: int64 (20, 5), row i holding the
    fine classes of task i (relabeled 0..4 in that order)."""
    order = np.random.default_rng([int(seed), CIFAR_SPLIT_TAG]).permutation(CIFAR_CLASSES)
    return order.reshape(CIFAR_TASKS, CIFAR_CLASSES_PER_TASK).astype(np.int64)


def augment_crop_flip(images: torch.Tensor, generator: torch.Generator,
                      padding: int = CIFAR_PADDING) -> torch.Tensor:
    """Random crop and horizontal flip of images (B, C, H, W) (any dtype) on their device.

    Per sample: the image zero-padded by `padding` pixels on each side, cropped back to H x W at
    offsets drawn uniformly in 0..2*padding (so shifted by -padding..padding), then flipped left
    to right with probability 0.5. Offsets, then flips, are drawn from `generator` (on its own
    device); one gather for the whole batch, no loop over samples.
    """
    b, c, h, w = images.shape
    dev = images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=generator.device).to(dev)
    flips = (torch.rand(b, generator=generator, device=generator.device) < 0.5).to(dev)
    padded = F.pad(images, (padding, padding, padding, padding))  # zeros: (B, C, H + 2p, W + 2p)
    rows = offsets[0, :, None] + torch.arange(h, device=dev)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def rotate_images(images: torch.Tensor, angle: float, chunk: int = 8192) -> torch.Tensor:
    """Rotate uint8 images (N, 28, 28) counter-clockwise by `angle` degrees on their device.

    One batched affine `grid_sample` (bilinear, zeros outside) per chunk of `chunk` images;
    the result is rounded back to uint8.
    """
    n, h, w = images.shape
    a = math.radians(angle)
    # Output pixel p samples the input at R^-1 p; with y pointing down, a counter-clockwise turn
    # on screen has R^-1 = [[cos, -sin], [sin, cos]] in affine_grid's normalised coordinates.
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=torch.float32, device=images.device)
    out = torch.empty_like(images)
    for start in range(0, n, chunk):
        block = images[start:start + chunk].unsqueeze(1).float()  # (b, 1, 28, 28)
        grid = F.affine_grid(theta.expand(block.shape[0], 2, 3), list(block.shape), align_corners=False)
        rotated = F.grid_sample(block, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start:start + chunk] = rotated.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
    return out


class Task:
    """One task: flattened uint8 images (N, D) (D = 784, or 3072 = 3 x 32 x 32 for CIFAR-100)
    and labels on the device, plus an optional pixel permutation applied at gather time and an
    optional training augmentation (`augment_crop_flip` on the images of shape `image_shape`).

    `batches(batch_size, generator)` yields endless random training batches;
    `test_batches(batch_size)` walks the test set once, in order.
    Both yield (x float32 (B, D) normalised, y int64 (B,)). `mean`/`std` are floats, or one per
    channel (the D features being C equal channel blocks).
    """

    def __init__(self, index, kind, train_x, train_y, test_x, test_y, mean, std,
                 permutation: Optional[torch.Tensor] = None, description: Optional[dict] = None,
                 image_shape: Optional[Sequence[int]] = None, augment: bool = False):
        self.index = index
        self.kind = kind
        self._train_x, self._train_y = train_x, train_y  # (N, D) uint8, (N,) int64
        self._test_x, self._test_y = test_x, test_y
        self._perm = permutation  # (D,) int64 on the device, or None
        # x = u8 * scale - shift == (u8/255 - mean)/std: Python floats, or (D,) tensors per channel
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
            self._scale, self._shift = 1.0 / (255.0 * std), mean / std
        else:
            self._scale, self._shift = _per_channel(mean, std, train_x.shape[1], train_x.device)
        self._image_shape = tuple(image_shape) if image_shape is not None else None
        if augment and self._image_shape is None:
            raise UserError("augment: expected `image_shape` (C, H, W) to crop and flip, got None; pass it")
        self._augment = bool(augment)
        self.description = dict(description or {})

    @property
    def n_train(self) -> int:
        return self._train_x.shape[0]

    @property
    def n_test(self) -> int:
        return self._test_x.shape[0]

    @property
    def device(self) -> torch.device:
        return self._train_x.device

    def _gather(self, x_u8: torch.Tensor, rows: Optional[torch.Tensor],
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if rows is not None:
            x_u8 = x_u8.index_select(0, rows)  # (B, D)
        if self._perm is not None:
            x_u8 = x_u8.index_select(1, self._perm)  # (B, D) permuted pixels
        if generator is not None and self._augment:  # training batches only
            b = x_u8.shape[0]
            x_u8 = augment_crop_flip(x_u8.reshape(b, *self._image_shape), generator).reshape(b, -1)
        return x_u8.float().mul_(self._scale).sub_(self._shift)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Endless random training batches: one permutation of the training set per epoch."""
        n = self.n_train
        if not 1 <= batch_size <= n:
            raise UserError(
                f"batch size: expected 1..{n} (the task's training set), got {batch_size}; "
                "pass a smaller `batch_size`"
            )
        while True:
            order = torch.randperm(n, generator=generator, device=generator.device)
            if order.device != self.device:
                order = order.to(self.device)
            for start in range(0, n - batch_size + 1, batch_size):
                rows = order[start:start + batch_size]
                yield self._gather(self._train_x, rows, generator), self._train_y.index_select(0, rows)

    def test_batches(self, batch_size: int = 1000) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The test set once, in order. A last batch of one row joins the previous batch, since
        batch statistics (hopnet's BatchNorm) are undefined for one row."""
        bounds = self._test_bounds(batch_size)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield self._gather(self._test_x[start:stop], None), self._test_y[start:stop]

    def test_batch_count(self, batch_size: int = 1000) -> int:
        """How many batches `test_batches(batch_size)` yields."""
        return len(self._test_bounds(batch_size)) - 1

    def _test_bounds(self, batch_size: int) -> list:
        if batch_size < 1:
            raise UserError(f"test batch size: expected at least 1, got {batch_size}; pass a positive size")
        n = self.n_test
        bounds = list(range(0, n, batch_size)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        return bounds


def _per_channel(mean, std, features: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) float32 (features,) for per-channel `mean`/`std` over equal channel blocks."""
    mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
    if mean.shape != std.shape or features % mean.size:
        raise UserError(f"normalisation: expected one mean and std per channel of {features} features, got "
                        f"{mean.size} means and {std.size} stds; pass as many of each as the images have channels")
    per = features // mean.size
    scale = np.repeat(1.0 / (255.0 * std), per)
    shift = np.repeat(mean / std, per)
    return (torch.tensor(scale, dtype=torch.float32, device=device),
            torch.tensor(shift, dtype=torch.float32, device=device))


class TaskStream:
    """A sequence of tasks over one dataset. `n_tasks` is None for an unbounded stream
    (permuted/rotated without a limit); `task(i)` builds (or returns the cached) task i."""

    def __init__(self, name: str, dataset: Dataset, seed: int = 0, n_tasks: Optional[int] = None,
                 relabel: bool = False, cache_tasks: int = 2):
        kind, data_name = parse_stream_name(name)
        if data_name != dataset.name:
            raise UserError(f"stream {name}: expected the {data_name} dataset, got {dataset.name}; "
                            "load the matching dataset")
        self.cifar = data_name == "cifar100"
        if kind == "split":
            limit = CIFAR_TASKS if self.cifar else SPLIT_TASKS
            if n_tasks is None:
                n_tasks = limit
            if not 1 <= n_tasks <= limit:
                raise UserError(f"stream {name}: expected 1..{limit} tasks, got {n_tasks}; "
                                f"pass `tasks={limit}` or fewer")
        elif n_tasks is not None and n_tasks < 1:
            raise UserError(f"stream {name}: expected at least 1 task, got {n_tasks}; pass `tasks=1` or more")
        self.name, self.kind, self.dataset = name, kind, dataset
        self.seed, self.n_tasks = int(seed), n_tasks
        self.relabel = True if self.cifar else bool(relabel)  # split-cifar100: always a 5-way head
        self._cache: "OrderedDict[int, Task]" = OrderedDict()
        self._cache_size = (max(1, cache_tasks) if kind == "rotated"
                            else CIFAR_TASKS if self.cifar else SPLIT_TASKS)
        d = dataset
        if self.cifar:
            if tuple(d.train_images.shape[1:]) != (3, 32, 32) or tuple(d.test_images.shape[1:]) != (3, 32, 32):
                raise UserError(f"stream {name}: expected images of shape (N, 3, 32, 32), got "
                                f"{tuple(d.train_images.shape)}; load the dataset with `load_dataset('cifar100')`")
            self.class_split = cifar_class_split(self.seed)
            self._train_x = d.train_images.reshape(d.train_images.shape[0], -1)  # (N, 3072), CHW order
            self._test_x = d.test_images.reshape(d.test_images.shape[0], -1)
        else:
            self._train_x = d.train_images.reshape(-1, N_PIXELS)
            self._test_x = d.test_images.reshape(-1, N_PIXELS)

    def recipe(self) -> dict:
        """What rebuilds this stream: store it beside the learned masks. split-cifar100 also
        records its class partition ("class_split": 20 lists of 5 classes, task i = row i)."""
        recipe = {"name": self.name, "seed": self.seed, "n_tasks": self.n_tasks, "relabel": self.relabel}
        if self.cifar:
            recipe["class_split"] = self.class_split.tolist()
        return recipe

    @property
    def n_classes(self) -> int:
        if self.cifar:
            return CIFAR_CLASSES_PER_TASK
        return 2 if (self.kind == "split" and self.relabel) else 10

    def task(self, i: int) -> Task:
        i = int(i)
        if i < 0 or (self.n_tasks is not None and i >= self.n_tasks):
            limit = "unbounded" if self.n_tasks is None else f"0..{self.n_tasks - 1}"
            raise UserError(f"task index: expected {limit} for stream {self.name}, got {i}; "
                            "pass a task index inside the stream")
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        task = self._build(i)
        if self.kind != "permuted":  # permuted tasks are cheap views: never cached
            self._cache[i] = task
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return task

    def _build(self, i: int) -> Task:
        d = self.dataset
        common = dict(mean=d.mean, std=d.std)
        if self.kind == "permuted":
            perm_np = task_permutation(self.seed, i)
            perm = torch.from_numpy(perm_np).to(d.device)
            return Task(i, self.kind, self._train_x, d.train_labels, self._test_x, d.test_labels,
                        permutation=perm, description={"permutation_seed": [self.seed, i]}, **common)
        if self.kind == "rotated":
            angle = task_angle(self.seed, i)
            train = rotate_images(d.train_images, angle).reshape(-1, N_PIXELS)
            test = rotate_images(d.test_images, angle).reshape(-1, N_PIXELS)
            return Task(i, self.kind, train, d.train_labels, test, d.test_labels,
                        description={"angle": angle}, **common)
        if self.cifar:  # 5 classes of a seeded partition, images augmented while training
            return self._split_task(i, self.class_split[i], image_shape=tuple(d.train_images.shape[1:]),
                                    augment=True)
        return self._split_task(i, split_classes(i))

    def _split_task(self, i: int, classes, **task_options) -> Task:
        """Task i of a split stream: the rows of `classes`, labelled by their position in
        `classes` with `relabel`, else by their own class."""
        d = self.dataset
        classes = [int(c) for c in classes]
        # lookup table: class -> its label in this task, -1 for the classes of other tasks
        table = torch.full((max(d.n_classes, max(classes) + 1),), -1, dtype=torch.int64, device=d.device)
        table[torch.tensor(classes, device=d.device)] = (torch.arange(len(classes), device=d.device) if self.relabel
                                                         else torch.tensor(classes, device=d.device))

        def subset(x, y):
            new = table[y]
            rows = torch.nonzero(new >= 0).squeeze(1)
            return x.index_select(0, rows), new.index_select(0, rows)

        train_x, train_y = subset(self._train_x, d.train_labels)
        test_x, test_y = subset(self._test_x, d.test_labels)
        return Task(i, self.kind, train_x, train_y, test_x, test_y, mean=d.mean, std=d.std,
                    description={"classes": classes}, **task_options)


def make_stream(name: str, seed: int = 0, n_tasks: Optional[int] = None, data_dir=None,
                download: bool = True, device="cpu", relabel: bool = False,
                dataset: Optional[Dataset] = None) -> TaskStream:
    """Build stream `name` (see STREAMS), loading its dataset unless one is passed."""
    kind, data_name = parse_stream_name(name)
    if dataset is None:
        dataset = load_dataset(data_name, data_dir=data_dir, download=download, device=device)
    return TaskStream(name, dataset, seed=seed, n_tasks=n_tasks, relabel=relabel)
