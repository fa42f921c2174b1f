"""Learning one task's supermask (supsup_hopfield/training.py), on small subsets to stay fast."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_hopfield.basenet import build_basenet
from supsup_hopfield.data import Dataset, load_dataset
from supsup_hopfield.errors import UserError
from supsup_hopfield.masks import initial_mask
from supsup_hopfield.streams import TaskStream
from supsup_hopfield.training import TrainConfig, evaluate, resolve_device, train_task

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def small():
    """3000 training and 1000 test images of Fashion-MNIST."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's 2 cores are shared: one thread is the faster here
    d = load_dataset("fashion-mnist")
    yield Dataset(d.name, d.train_images[:3000].clone(), d.train_labels[:3000].clone(),
                  d.test_images[:1000].clone(), d.test_labels[:1000].clone(), d.mean, d.std, d.source)
    torch.set_num_threads(threads)


def test_short_run_beats_the_initial_mask(small):
    net = build_basenet("lenet", outputs=500, seed=0)
    task = TaskStream("permuted-fashion-mnist", small, seed=0).task(1)
    config = TrainConfig(steps=150, batch_size=64, lr=1e-3, device="cpu")
    before = evaluate(net, initial_mask(net, config.mask_config, config.seed, 1), task)
    calls = []
    masks, info = train_task(net, task, config, task_index=1, progress=lambda s, l: calls.append((s, float(l))))
    after = evaluate(net, masks, task)
    assert after > 0.6 and after > before + 0.3, (before, after)
    assert [s for s, _ in calls] == list(range(1, 151)) and all(np.isfinite(l) for _, l in calls)
    assert [m.shape for m in masks] == [(300, 784), (100, 300), (500, 100)] and masks[0].dtype == np.bool_
    assert 0.0 < info["flip_fraction"] < 0.5 and 0.4 < info["density"] < 0.6
    assert info["steps"] == 150 and info["seconds"] > 0 and np.isfinite(info["final_loss"])


def test_cpu_runs_are_deterministic(small):
    net = build_basenet("lenet", widths=(100, 50), outputs=10, seed=1)
    task = TaskStream("permuted-fashion-mnist", small, seed=4).task(0)
    config = TrainConfig(steps=30, batch_size=32, lr=1e-3, device="cpu")
    a, _ = train_task(net, task, config, task_index=0)
    b, _ = train_task(build_basenet("lenet", widths=(100, 50), outputs=10, seed=1), task, config, task_index=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c, _ = train_task(net, task, replace(config, seed=1), task_index=0)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_hopnet_neuron_masks_learn_a_split_task(small):
    net = build_basenet("hopnet", widths=(256, 256), outputs=10, seed=0)
    task = TaskStream("split-fashion-mnist", small).task(0)  # T-shirt vs trouser
    config = TrainConfig.for_architecture("hopnet", steps=40, batch_size=64, device="cpu")
    masks, info = train_task(net, task, config, task_index=0)
    assert [m.shape for m in masks] == [(256,), (256,)]
    assert evaluate(net, masks, task, batch_size=100) > 0.9


def test_topk_training_keeps_density(small):
    net = build_basenet("lenet", widths=(50, 20), outputs=10, seed=0)
    task = TaskStream("permuted-fashion-mnist", small).task(0)
    config = TrainConfig(steps=10, batch_size=32, lr=1e-2, mask="topk", density=0.2, device="cpu")
    masks, info = train_task(net, task, config, task_index=0)
    assert [int(m.sum()) for m in masks] == [round(0.2 * m.size) for m in masks]


def test_evaluate_checks_masks(small):
    net = build_basenet("lenet", widths=(50, 20), outputs=10, seed=0)
    task = TaskStream("permuted-fashion-mnist", small).task(0)
    with pytest.raises(UserError, match=r"masks\[0\]: expected shape \(50, 784\)"):
        evaluate(net, [np.ones((50, 783), bool), np.ones((20, 50), bool), np.ones((10, 20), bool)], task)


def test_config_defaults_and_validation():
    c = TrainConfig()
    assert (c.steps, c.batch_size, c.lr, c.optimizer, c.mask) == (1000, 128, 1e-4, "rmsprop", "threshold")
    h = TrainConfig.for_architecture("hopnet", steps=100)
    assert (h.optimizer, h.lr, h.momentum, h.weight_decay, h.steps) == ("sgd", 0.1, 0.9, 1e-4, 100)
    assert TrainConfig.for_architecture("lenet") == c and c.to_dict()["optimizer"] == "rmsprop"
    for kwargs, match in [(dict(steps=0), "steps: expected at least 1"),
                          (dict(optimizer="lbfgs"), "expected one of rmsprop, sgd, adam"),
                          (dict(device="tpu"), "expected one of auto, cpu, cuda"),
                          (dict(lr=0), "expected a positive learning rate"),
                          (dict(mask="topk", density=0), "expected a fraction")]:
        with pytest.raises(UserError, match=match):
            TrainConfig(**kwargs)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="pass `device='cpu'` or 'auto'"):
            resolve_device("cuda")
