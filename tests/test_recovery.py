"""HopSupSup recovery (supsup_hopfield/recovery.py): exact masks on a small trained problem, the
straight-through energy gradient, recall-finished fixed points, the staged joint search against
the plain forward, and bad input."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_hopfield.basenet import build_basenet
from supsup_hopfield.errors import UserError
from supsup_hopfield.inference import entropy_objective
from supsup_hopfield.memory import HopfieldMemory
from supsup_hopfield import recovery
from supsup_hopfield.recovery import (RecoveryConfig, _staged_entropies, energy, evaluate_recovery,
                                      recover_masks)
from supsup_hopfield.run import RunConfig, train_run
from supsup_hopfield.streams import make_stream
from supsup_hopfield.training import TrainConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
WIDTHS = (256, 256)  # at 64 units the output entropy no longer tells the tasks apart (measured)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """hopnet 784-256-256-10 trained on 3 split Fashion-MNIST tasks × 100 steps (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is the faster here
    train = TrainConfig.for_architecture("hopnet", steps=100, device="cpu")
    cfg = RunConfig(dataset="split-fashion-mnist", model="hopnet", widths=WIDTHS, train=train)
    archive = train_run(cfg, 3, tmp_path_factory.mktemp("rec") / "run.h5")
    net = build_basenet("hopnet", WIDTHS, 10, 0)
    stream = make_stream("split-fashion-mnist", seed=0, n_tasks=3)
    yield archive, net, stream
    torch.set_num_threads(threads)


def memories_of(archive):
    return [archive.memories["layer0"], archive.memories["layer1"]]


@needs_data
def test_recovers_the_exact_masks_without_the_task_id(trained):
    archive, net, stream = trained
    records = evaluate_recovery(net, archive, stream, config=RecoveryConfig())
    assert [r["task"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["hamming"] == [0, 0], r
        assert r["accuracy"] == r["gg_accuracy"] == pytest.approx(archive.per_task[r["task"]]["accuracy"])
        assert r["fixed_point"] == [True, True] and r["search"] == "exhaustive"
        assert r["steps"] == 32  # one pass over 2000 test images in batches of 64


@needs_data
def test_labels_are_ignored_and_runs_are_deterministic(trained):
    archive, net, stream = trained
    pairs = list(stream.task(1).test_batches(64))
    shuffled = [(x, torch.randint(0, 10, y.shape)) for x, y in pairs]  # wrong labels change nothing
    config = RecoveryConfig(restarts=1, cues=2)
    a, info_a = recover_masks(net, memories_of(archive), [x for x, _ in pairs], config, seed=5)
    b, info_b = recover_masks(net, memories_of(archive), shuffled, config, seed=5)
    for m, n in zip(a, b):
        np.testing.assert_array_equal(m, n)
    assert info_a["trace"][0]["objective"] == info_b["trace"][0]["objective"]
    assert len(info_a["trace"]) == 1 and len(info_a["trace"][0]["entropy"]) == info_a["steps"] == 32


@needs_data
def test_coordinate_search_and_joint_memory(trained):
    archive, net, stream = trained
    batches = [x for x, _ in stream.task(2).test_batches(64)]
    true = [archive.masks["layer0"][2], archive.masks["layer1"][2]]
    masks, info = recover_masks(net, memories_of(archive), batches, RecoveryConfig(max_combinations=1))
    assert info["search"] == "coordinate" and info["candidates"] > 1
    assert all(np.array_equal(m, t) for m, t in zip(masks, true))
    # one memory over both layers' masks concatenated (the `joint` layout)
    joint = HopfieldMemory(sum(WIDTHS), "storkey").store(
        np.concatenate([archive.masks["layer0"], archive.masks["layer1"]], axis=1))
    masks, info = recover_masks(net, [joint], batches, RecoveryConfig())
    assert all(np.array_equal(m, t) for m, t in zip(masks, true))
    assert info["fixed_point"] == [True]


@needs_data
def test_paper_method_needs_stored_mean_start(trained):
    archive, net, stream = trained
    batches = [x for x, _ in stream.task(0).test_batches(64)]
    with pytest.raises(UserError, match="init 'stored-mean' needs one score vector per masked layer"):
        recover_masks(net, memories_of(archive), batches, RecoveryConfig.paper())
    records = evaluate_recovery(net, archive, stream, tasks=[0], config=RecoveryConfig.paper(steps=4))
    assert records[0]["steps"] == 4 and records[0]["search"] == "none" and len(records[0]["hamming"]) == 2
    with pytest.raises(UserError, match=r"tasks: expected indices in 0\.\.2"):
        evaluate_recovery(net, archive, stream, tasks=[3])


def test_energy_gradient_is_the_straight_through_minus_psi_z():
    rng = np.random.default_rng(0)
    mem = HopfieldMemory(48, "storkey").store(rng.integers(0, 2, (5, 48)) * 2 - 1)
    psi = torch.from_numpy(np.array(mem.weights, np.float32))
    scores = torch.randn(48, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    z = torch.where(scores >= 0, 1.0, -1.0)
    e = energy(psi, scores)
    assert e.item() == pytest.approx(mem.energy(z.numpy()), rel=1e-5)
    e.backward()
    # dE/dz = −Ψz (Ψ symmetric), and dz/ds = 2 straight through z = 2·1[s >= 0] − 1
    torch.testing.assert_close(scores.grad, -2.0 * (psi @ z), rtol=1e-5, atol=1e-6)
    # so a gradient step raises every score towards the sign of its field
    step = -scores.grad
    assert (torch.sign(step) == torch.sign(psi @ z)).all()


def random_problem(widths=(40, 40), n_stored=3, seed=0):
    rng = np.random.default_rng(seed)
    net = build_basenet("hopnet", widths, 10, seed)
    mems = [HopfieldMemory(w, "storkey").store(rng.integers(0, 2, (n_stored, w)).astype(bool)) for w in widths]
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(16, 784, generator=g) for _ in range(4)]
    return net, mems, batches


def test_recall_finish_returns_a_fixed_point_of_every_memory():
    net, mems, batches = random_problem()
    config = RecoveryConfig(restarts=1, cues=0, init="uniform", steps=2, gamma=0.0)  # no energy pull
    masks, info = recover_masks(net, mems, batches, config, seed=3)
    assert info["fixed_point"] == [True, True] and info["search"] == "none"
    for m, mem in zip(masks, mems):
        z = 2 * m.astype(np.int8) - 1
        assert mem.stable(z)
        np.testing.assert_array_equal(mem.recall(z, mode="sync"), z)  # nothing moves any more
    assert info["energy"] == pytest.approx([mem.energy(2 * m.astype(np.int8) - 1) for m, mem in zip(masks, mems)])
    # with selection, every candidate is a fixed point too (complements included)
    masks, info = recover_masks(net, mems, batches, replace(config, cues=2), seed=3)
    assert info["fixed_point"] == [True, True] and info["pool_sizes"][0] >= 2


def test_staged_entropies_equal_the_plain_forward(monkeypatch):
    monkeypatch.setattr(recovery, "_CHUNK", 3)  # the last layer's 4 candidates in two chunks
    net, _, batches = random_problem(widths=(24, 16))
    g = torch.Generator().manual_seed(7)
    pools = [(torch.rand(3, 24, generator=g) < 0.5).float(), (torch.rand(4, 16, generator=g) < 0.5).float()]
    table = _staged_entropies(net, batches, pools)
    assert table.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            plain = np.mean([entropy_objective(net(x, [pools[0][i], pools[1][j]])).item() for x in batches])
            assert table[i, j].item() == pytest.approx(plain, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kw, match", [
    ({"lr": 0}, "lr: expected a positive number, got 0"),
    ({"momentum": 1.0}, r"momentum: expected a number in \[0, 1\), got 1.0"),
    ({"gamma": -1e-3}, "gamma: expected a number >= 0"),
    ({"weight_decay": float("nan")}, "weight decay: expected a number >= 0"),
    ({"batch_size": 1}, "batch size: expected an integer >= 2"),
    ({"steps": 0}, "steps: expected None .* or an integer >= 1, got 0"),
    ({"init": "zeros"}, "init: expected one of empty, full, uniform, stored-mean, got 'zeros'"),
    ({"restarts": 0}, "restarts: expected an integer >= 1, got 0"),
    ({"finish": "sync"}, "finish: expected one of recall, none, got 'sync'"),
    ({"cues": -1}, "cues: expected an integer >= 0, got -1"),
    ({"selection_batches": 0}, "selection batches: expected an integer >= 1"),
    ({"max_combinations": 2.5}, "max combinations: expected an integer >= 1, got 2.5"),
])
def test_config_errors(kw, match):
    with pytest.raises(UserError, match=match):
        RecoveryConfig(**kw)


def test_input_errors():
    net, mems, batches = random_problem()
    with pytest.raises(UserError, match=r"memories: expected one memory per masked layer with dims \[40, 40\]"):
        recover_masks(net, [mems[0], HopfieldMemory(39)], batches)
    with pytest.raises(UserError, match=r"batches: expected tensors of shape \(B >= 2, 784\), got \(16, 783\)"):
        recover_masks(net, mems, [torch.zeros(16, 783)])
    with pytest.raises(UserError, match="batches: expected at least one batch, got none"):
        recover_masks(net, mems, [])
    with pytest.raises(UserError, match="net: expected a base network with neuron masks"):
        recover_masks(build_basenet("lenet"), mems, batches)
    with pytest.raises(UserError, match="config: expected a RecoveryConfig, got dict"):
        recover_masks(net, mems, batches, {"lr": 500})
    with pytest.raises(UserError, match="memories: expected a list of HopfieldMemory"):
        recover_masks(net, None, batches)
