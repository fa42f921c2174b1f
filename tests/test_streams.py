"""Task streams (supsup_hopfield/streams.py) on a small synthetic dataset."""
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_hopfield.data import Dataset
from supsup_hopfield.errors import UserError
from supsup_hopfield.streams import (STREAMS, TaskStream, make_stream, rotate_images, split_classes,
                                     task_angle, task_permutation)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def tiny_dataset(name="fashion-mnist", n_train=300, n_test=101, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        name=name,
        train_images=torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=g),
        train_labels=torch.arange(n_train) % 10,
        test_images=torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=g),
        test_labels=torch.arange(n_test) % 10,
        mean=0.2860, std=0.3530, source="memory",
    )


@pytest.fixture(scope="module")
def data():
    return tiny_dataset()


def normalise(u8, d):
    return (u8.float() / 255 - d.mean) / d.std


def test_stream_names():
    assert set(STREAMS) == {f"{k}-{d}" for k in ("permuted", "rotated", "split")
                            for d in ("mnist", "fashion-mnist")} | {"split-cifar100"}
    with pytest.raises(UserError, match="expected one of permuted-mnist"):
        make_stream("shuffled-mnist")


def test_permutations_distinct_reproducible_not_identity():
    perms = [task_permutation(7, t) for t in range(20)]
    assert all(sorted(p) == list(range(784)) for p in perms)
    assert len({p.tobytes() for p in perms}) == 20
    assert not any((p == np.arange(784)).all() for p in perms)  # task 0 is permuted too
    np.testing.assert_array_equal(perms[3], task_permutation(7, 3))
    assert not (task_permutation(8, 3) == perms[3]).all()


def test_permuted_task_gathers_permuted_normalised_pixels(data):
    stream = TaskStream("permuted-fashion-mnist", data, seed=3)
    assert stream.n_tasks is None  # unbounded
    task = stream.task(5)
    perm = torch.from_numpy(task_permutation(3, 5))
    x, y = next(task.test_batches(40))
    expected = normalise(data.test_images[:40].reshape(40, 784)[:, perm], data)
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, data.test_labels[:40])


def test_training_batches_random_reproducible_full_epochs(data):
    task = TaskStream("permuted-fashion-mnist", data, seed=0).task(0)
    it1 = task.batches(64, torch.Generator().manual_seed(1))
    it2 = task.batches(64, torch.Generator().manual_seed(1))
    b1 = [next(it1) for _ in range(6)]
    b2 = [next(it2) for _ in range(6)]
    for (x1, y1), (x2, y2) in zip(b1, b2):
        assert x1.shape == (64, 784) and x1.dtype == torch.float32 and y1.dtype == torch.int64
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # 300 rows, batches of 64: 4 full batches per epoch (the last 44 rows dropped), then a new order
    first_epoch = torch.cat([x for x, _ in b1[:4]])
    assert torch.unique(first_epoch, dim=0).shape[0] == 256
    other = next(task.batches(64, torch.Generator().manual_seed(2)))[0]
    assert not torch.equal(other, b1[0][0])


def test_test_batches_cover_once_and_never_leave_one_row(data):
    task = TaskStream("permuted-fashion-mnist", data).task(0)
    sizes = [y.shape[0] for _, y in task.test_batches(50)]  # 101 rows
    assert sizes == [50, 51]
    ys = torch.cat([y for _, y in task.test_batches(1000)])
    assert torch.equal(ys, data.test_labels)


def test_rotation_angles_reproducible():
    angles = [task_angle(0, t) for t in range(50)]
    assert all(0.0 <= a < 180.0 for a in angles) and len(set(angles)) == 50
    assert angles[4] == task_angle(0, 4) and task_angle(1, 4) != angles[4]


def test_rotate_images_exact_quarter_turn_and_identity(data):
    images = data.test_images[:7]
    assert torch.equal(rotate_images(images, 0.0), images)
    # counter-clockwise quarter turn == rot90 from the row axis towards the column axis
    assert torch.equal(rotate_images(images, 90.0), torch.rot90(images, 1, dims=(1, 2)))
    assert torch.equal(rotate_images(images, 90.0, chunk=3), rotate_images(images, 90.0))


def test_rotated_task_uses_its_angle_and_is_cached(data):
    stream = TaskStream("rotated-fashion-mnist", data, seed=2, n_tasks=4)
    task = stream.task(1)
    assert task.description["angle"] == task_angle(2, 1)
    x, _ = next(task.test_batches(1000))
    expected = normalise(rotate_images(data.test_images, task_angle(2, 1)).reshape(-1, 784), data)
    torch.testing.assert_close(x, expected)
    assert stream.task(1) is task
    with pytest.raises(UserError, match=r"expected 0..3 for stream rotated-fashion-mnist, got 4"):
        stream.task(4)


@pytest.mark.parametrize("relabel", [False, True])
def test_split_tasks_hold_two_classes(data, relabel):
    stream = TaskStream("split-fashion-mnist", data, relabel=relabel)
    assert stream.n_tasks == 5 and stream.n_classes == (2 if relabel else 10)
    for i in range(5):
        task = stream.task(i)
        classes = split_classes(i)
        want = {0, 1} if relabel else set(classes)
        ys = torch.cat([y for _, y in task.test_batches(1000)])
        assert set(ys.tolist()) == want and task.n_train == 60 and task.description["classes"] == list(classes)
        _, yb = next(task.batches(16, torch.Generator().manual_seed(0)))
        assert set(yb.tolist()) <= want
        # the images are those of the original classes
        x, _ = next(task.test_batches(1000))
        rows = torch.nonzero((data.test_labels == classes[0]) | (data.test_labels == classes[1])).squeeze(1)
        torch.testing.assert_close(x, normalise(data.test_images[rows].reshape(-1, 784), data))


def test_split_task_count_is_checked(data):
    with pytest.raises(UserError, match="expected 1..5 tasks, got 6"):
        TaskStream("split-fashion-mnist", data, n_tasks=6)


def test_stream_dataset_must_match(data):
    with pytest.raises(UserError, match="expected the mnist dataset, got fashion-mnist"):
        TaskStream("permuted-mnist", data)


def test_batch_size_larger_than_task(data):
    task = TaskStream("split-fashion-mnist", data).task(0)
    with pytest.raises(UserError, match="expected 1..60"):
        next(task.batches(61, torch.Generator()))


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_split_fashion_sizes():
    stream = make_stream("split-fashion-mnist")
    assert [stream.task(i).n_train for i in range(5)] == [12000] * 5
    assert stream.recipe() == {"name": "split-fashion-mnist", "seed": 0, "n_tasks": 5, "relabel": False}
