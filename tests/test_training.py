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
from supsup_hopfield.training import (TrainConfig, autocast, evaluate, make_optimizer, resolve_device, train_step,
                                      train_task, train_tasks)
from supsup_hopfield.masks import init_scores

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


@pytest.mark.parametrize("arch, stream, overrides", [
    ("lenet", "permuted-fashion-mnist", dict(optimizer="rmsprop", lr=1e-3)),
    ("lenet", "permuted-fashion-mnist", dict(optimizer="adam", lr=1e-3, mask="topk", density=0.3)),
    ("hopnet", "split-fashion-mnist", dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)),
])
def test_tasks_learned_together_get_the_masks_they_get_alone_in_float64(small, arch, stream, overrides):
    """K tasks in one batched step: each keeps its seed, batches and optimiser state, so in
    float64 its mask is the one train_task learns for it alone, bit for bit."""
    net = build_basenet(arch, widths=(60, 40), outputs=10, seed=2).double()
    s = TaskStream(stream, small, seed=1)
    config = TrainConfig(steps=25, batch_size=32, device="cpu", **overrides)
    indices = [2, 0, 4]
    together = train_tasks(net, [s.task(i) for i in indices], config, indices)
    for i, (masks, info) in zip(indices, together):
        alone, alone_info = train_task(net, s.task(i), config, task_index=i)
        assert all(np.array_equal(a, b) for a, b in zip(masks, alone)), i
        assert info["task"] == i and info["flip_fraction"] == alone_info["flip_fraction"]
        assert info["final_loss"] == pytest.approx(alone_info["final_loss"], rel=1e-9)


def test_tasks_learned_together_in_float32_agree_within_noise(small):
    net = build_basenet("lenet", widths=(100, 50), outputs=10, seed=0)
    s = TaskStream("permuted-fashion-mnist", small, seed=0)
    config = TrainConfig(steps=60, batch_size=64, lr=1e-3, device="cpu")
    calls = []
    together = train_tasks(net, [s.task(i) for i in range(4)], config, range(4),
                           progress=lambda step, losses: calls.append((step, losses.shape)))
    assert calls == [(step, (4,)) for step in range(1, 61)]
    for i, (masks, _) in enumerate(together):
        alone, _ = train_task(net, s.task(i), config, task_index=i)
        same = sum(int((a == b).sum()) for a, b in zip(masks, alone)) / sum(a.size for a in alone)
        assert same > 0.99, (i, same)
        assert abs(evaluate(net, masks, s.task(i)) - evaluate(net, alone, s.task(i))) <= 0.02


def test_train_tasks_checks_its_arguments(small):
    net = build_basenet("lenet", widths=(20, 10), outputs=10, seed=0)
    task = TaskStream("permuted-fashion-mnist", small).task(0)
    with pytest.raises(UserError, match="one index per task"):
        train_tasks(net, [task, task], TrainConfig(steps=1, device="cpu"), [0])
    with pytest.raises(UserError, match="one index per task"):
        train_tasks(net, [], TrainConfig(steps=1, device="cpu"), [])


def test_bf16_mixed_step_keeps_scores_gradients_and_optimiser_state_in_float32(small):
    net = build_basenet("hopnet", widths=(64, 64), outputs=10, seed=0)
    task = TaskStream("split-fashion-mnist", small).task(0)
    config = TrainConfig.for_architecture("hopnet", steps=5, batch_size=64, device="cpu", precision="bf16-mixed")
    scores = init_scores(net, config.mask_config, 0, 0)
    optimizer = make_optimizer(scores, config)
    x, y = next(task.batches(64, torch.Generator().manual_seed(0)))
    loss = train_step(net, scores, optimizer, config, x, y)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    assert all(s.dtype == s.grad.dtype == torch.float32 for s in scores)
    assert all(v.dtype == torch.float32 for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v) and v.dim() > 0)
    with autocast(net.device, "bf16-mixed"):  # the forward really runs in bfloat16
        assert net(x, scores).dtype == torch.bfloat16
    with autocast(net.device, "32"):
        assert net(x, scores).dtype == torch.float32
    accuracy = {}
    for precision in ("32", "bf16-mixed"):
        masks, _ = train_task(net, task, replace(config, steps=40, precision=precision), task_index=0)
        with autocast(net.device, precision):
            accuracy[precision] = evaluate(net, masks, task, batch_size=100)
    assert accuracy["bf16-mixed"] > 0.75 and abs(accuracy["bf16-mixed"] - accuracy["32"]) < 0.05, accuracy
    with pytest.raises(UserError, match="precision: expected one of 32, bf16-mixed, got 'fp16'"):
        TrainConfig(precision="fp16")
