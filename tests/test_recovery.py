"""HopSupSup recovery (supsup_hopfield/recovery.py): exact masks from every layout on a small
trained problem, successive cancellation against a single pass, the batched candidate entropies
against the plain forward, the paper's descent, and bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_hopfield import recovery
from supsup_hopfield.basenet import build_basenet
from supsup_hopfield.errors import UserError
from supsup_hopfield.inference import entropy_objective
from supsup_hopfield.memory import HopfieldMemory
from supsup_hopfield.recovery import (Candidates, RecoveryConfig, _decode_by_cancellation, candidate_entropies,
                                      decode, energy, evaluate_recovery, recover_masks, seeded_cues)
from supsup_hopfield.run import MemorySlot, RunConfig, replay_memories, train_run
from supsup_hopfield.streams import make_stream
from supsup_hopfield.training import TrainConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
WIDTHS = (256, 256)  # at 64 units the output entropy no longer tells the tasks apart (measured)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """hopnet 784-256-256-10 trained on 4 permuted Fashion-MNIST tasks × 100 steps (seconds)."""
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is the faster here
    train = TrainConfig.for_architecture("hopnet", steps=100, device="cpu")
    cfg = RunConfig(dataset="permuted-fashion-mnist", model="hopnet", widths=WIDTHS, train=train)
    archive = train_run(cfg, 4, tmp_path_factory.mktemp("rec") / "run.h5")
    archive.masks = {k: np.asarray(m) for k, m in archive.masks.items()}
    net = build_basenet("hopnet", WIDTHS, 10, 0)
    stream = make_stream("permuted-fashion-mnist", seed=0)
    yield archive, net, stream
    torch.set_num_threads(threads)


def true_masks(archive, t):
    return [archive.masks["layer0"][t], archive.masks["layer1"][t]]


@needs_data
def test_seeded_recovery_gives_back_the_exact_masks_without_the_task_id(trained):
    archive, net, stream = trained
    assert archive.config["run"]["memory_rule"] == "projection-zd"
    records = evaluate_recovery(net, archive, stream)
    assert [r["task"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert r["hamming"] == [0, 0], r
        assert r["chosen"] == f"cue {r['task']}"  # the memory names the task it was asked about
        assert r["accuracy"] == r["gg_accuracy"] == pytest.approx(archive.per_task[r["task"]]["accuracy"])
        assert r["fixed_point"] == [True, True] and r["candidates"] == 4


@needs_data
@pytest.mark.parametrize("layout", ["per-layer projection", "joint", "margin"])
def test_every_layout_gives_the_masks_back(trained, layout):
    archive, net, stream = trained
    flat = np.concatenate([archive.masks["layer0"], archive.masks["layer1"]], axis=1)  # (4, 512)
    if layout == "per-layer projection":
        slots = [MemorySlot("layer0", 0, 0, 256), MemorySlot("layer1", 1, 0, 256)]
        rule = "projection"
    elif layout == "joint":
        slots, rule = [MemorySlot("joint", None, 0, 512)], "projection-zd"
    else:
        slots, rule = [MemorySlot("joint", None, 0, 512)], "margin"
    offsets = [0, 256]
    memories = {}
    for s in slots:
        base = 0 if s.layer is None else offsets[s.layer]
        memories[s.name] = HopfieldMemory(s.stop - s.start, rule).store(flat[:, base + s.start: base + s.stop])
    run = archive.config["run"]
    cues = seeded_cues(net, TrainConfig(**run["train"]).mask_config, run["train"]["seed"], range(4))
    candidates = decode(net, memories, cues, slots=slots)
    np.testing.assert_array_equal(candidates.masks, flat)  # cue j recalls task j's masks exactly
    assert candidates.fixed.all()
    batches = [x for x, _ in stream.task(2).test_batches(64)]
    masks, info = recover_masks(net, memories, batches, slots=slots, candidates=candidates)
    for m, t in zip(masks, true_masks(archive, 2)):
        np.testing.assert_array_equal(m, t)
    assert info["chosen"] == "cue 2" and len(info["fixed_point"]) == len(slots)


@needs_data
def test_blocked_memories_over_weight_masks(tmp_path):
    """lenet's weight masks cut into memories of 1024 entries (--hopfield-dim 1024): every task
    comes back exactly, and each block's memory holds its slice."""
    train = TrainConfig(steps=50, device="cpu")
    cfg = RunConfig(dataset="permuted-fashion-mnist", model="lenet", widths=(20, 10), hopfield_dim=1024,
                    memory_rule="projection-zd", train=train)
    archive = train_run(cfg, 3, tmp_path / "lenet.h5")
    assert len(archive.memories) == 16 + 1 + 1 and archive.config["memory_slots"][1]["start"] == 1024
    net = build_basenet("lenet", (20, 10), 10, 0)
    records = evaluate_recovery(net, archive, make_stream("permuted-fashion-mnist", seed=0))
    assert [r["hamming"] for r in records] == [[0, 0, 0]] * 3
    assert [r["chosen"] for r in records] == ["cue 0", "cue 1", "cue 2"]


@needs_data
def test_labels_are_ignored_and_recovery_is_deterministic(trained):
    archive, net, stream = trained
    run = archive.config["run"]
    cues = seeded_cues(net, TrainConfig(**run["train"]).mask_config, 0, range(4))
    pairs = list(stream.task(1).test_batches(64))
    shuffled = [(x, torch.randint(0, 10, y.shape)) for x, y in pairs]  # wrong labels change nothing
    a, info_a = recover_masks(net, archive.memories, [x for x, _ in pairs], cues=cues, seed=5)
    b, info_b = recover_masks(net, archive.memories, shuffled, cues=cues, seed=5)
    for m, n in zip(a, b):
        np.testing.assert_array_equal(m, n)
    assert info_a["entropy"] == info_b["entropy"] and info_a["chosen"] == info_b["chosen"] == "cue 1"


@needs_data
def test_replayed_memory_under_another_rule(trained):
    archive, net, stream = trained
    memories = replay_memories(archive.config, archive.masks, "projection", 3)
    assert {k: (m.rule, m.n_stored) for k, m in memories.items()} == {"layer0": ("projection", 3),
                                                                      "layer1": ("projection", 3)}
    records = evaluate_recovery(net, archive, stream, tasks=[0, 2], memories=memories)
    assert [r["hamming"] for r in records] == [[0, 0], [0, 0]]
    with pytest.raises(UserError, match=r"stored: expected 1\.\.4"):
        replay_memories(archive.config, archive.masks, "projection", 5)


@needs_data
def test_paper_method_is_the_baseline(trained):
    archive, net, stream = trained
    batches = [x for x, _ in stream.task(0).test_batches(64)]
    with pytest.raises(UserError, match="init 'stored-mean' needs one score per mask entry"):
        recover_masks(net, archive.memories, batches, RecoveryConfig.paper())
    records = evaluate_recovery(net, archive, stream, tasks=[0], config=RecoveryConfig.paper(steps=4))
    assert records[0]["steps"] == 4 and records[0]["chosen"] == "descent" and len(records[0]["hamming"]) == 2
    with pytest.raises(UserError, match=r"tasks: expected indices in 0\.\.3"):
        evaluate_recovery(net, archive, stream, tasks=[4])


@needs_data
def test_seeded_recovery_refuses_runs_whose_tasks_all_start_alike(tmp_path):
    train = TrainConfig.for_architecture("hopnet", steps=5, device="cpu", score_init="zeros")
    cfg = RunConfig(dataset="split-fashion-mnist", model="hopnet", widths=(16, 16), train=train)
    archive = train_run(cfg, 2, tmp_path / "zeros.h5")
    net = build_basenet("hopnet", (16, 16), 10, 0)
    with pytest.raises(UserError, match="seeded cues: every task of this run started from the same mask "
                                        "\\(score init 'zeros'\\).*method='descent'"):
        evaluate_recovery(net, archive, make_stream("split-fashion-mnist", seed=0, n_tasks=2))


def biased_patterns(n, d, seed, density=0.42):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, d)) < density, 1, -1).astype(np.int8)


def test_successive_cancellation_recovers_what_one_pass_misses():
    """Weak cues (36% of bits flipped) at load 0.2: a single annealed pass finds only some masks;
    taking the found ones out of the couplings round after round finds them all."""
    d, n = 256, 52
    Z = biased_patterns(n, d, seed=1)
    rng = np.random.default_rng(2)
    cues = np.where(rng.random((n, d)) < 0.36, -Z, Z) > 0
    mem = HopfieldMemory(d, "projection-zd").store(Z)
    one_pass = mem.recall(cues, mode="anneal", seed=0)
    rounds = _decode_by_cancellation(mem, cues, RecoveryConfig(), np.random.default_rng(0))
    single = (one_pass == Z).all(axis=1).mean()
    assert single < 0.9
    assert (rounds == Z).all(axis=1).mean() == 1.0


def test_decode_without_recall_keeps_the_cues():
    net = build_basenet("hopnet", (16, 8), 10, 0)
    memories = {"layer0": HopfieldMemory(16, "storkey"), "layer1": HopfieldMemory(8, "storkey")}
    cues = np.random.default_rng(0).random((3, 24)) < 0.5
    c = decode(net, memories, cues, RecoveryConfig(recall="none"))
    np.testing.assert_array_equal(c.masks, cues)
    with pytest.raises(UserError, match=r"cues: expected a bool array \(K, 24\), got int64 \(3, 24\)"):
        decode(net, memories, cues.astype(np.int64))


@pytest.mark.parametrize("arch,widths", [("hopnet", (24, 16)), ("hopnet", (12, 10, 8)), ("lenet", (12, 8))])
def test_candidate_entropies_equal_the_plain_forward(monkeypatch, arch, widths):
    monkeypatch.setattr(recovery, "_CHUNK", 3)  # 5 candidates in two chunks
    net = build_basenet(arch, widths, 10, 0)
    sizes = [int(np.prod(s)) for s in net.mask_shapes]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 784, generator=g)
    masks = np.random.default_rng(1).random((5, sum(sizes))) < 0.5
    got = candidate_entropies(net, x, masks, net.mask_shapes)
    edges = np.cumsum([0, *sizes])
    for p in range(5):
        layer = [torch.from_numpy(masks[p, a:b].reshape(s)).float()
                 for a, b, s in zip(edges[:-1], edges[1:], net.mask_shapes)]
        plain = entropy_objective(net(x, layer)).item()
        assert got[p].item() == pytest.approx(plain, rel=1e-4, abs=1e-5)


def test_selection_picks_the_lowest_entropy_candidate_wherever_it_sits(monkeypatch):
    """Candidates scored on the screen, the shortlist on the selection batches: the winner is
    the lowest mean entropy among all distinct candidates, duplicates counted once."""
    net = build_basenet("hopnet", (20, 12), 10, 0)
    rng = np.random.default_rng(3)
    masks = rng.random((12, 32)) < 0.5
    masks[7] = masks[2]  # a duplicate
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(32, 784, generator=g) for _ in range(3)]
    cfg = RecoveryConfig(screen_samples=32, shortlist=12, selection_batches=3)
    plain = [np.mean([candidate_entropies(net, x, masks[[p]], net.mask_shapes)[0].item() for x in xs])
             for p in range(12)]
    j, h, n = recovery._select(net, xs, masks, net.mask_shapes, cfg)
    assert n == 11 and j == int(np.argmin(plain)) and h == pytest.approx(min(plain), rel=1e-5)


def test_energy_gradient_is_the_straight_through_minus_psi_z():
    rng = np.random.default_rng(0)
    mem = HopfieldMemory(48, "storkey").store(rng.integers(0, 2, (5, 48)) * 2 - 1)
    psi = torch.from_numpy(np.array(mem.couplings, np.float32))
    scores = torch.randn(48, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    z = torch.where(scores >= 0, 1.0, -1.0)
    e = energy(psi, scores)
    assert e.item() == pytest.approx(mem.energy(z.numpy()), rel=1e-5)
    e.backward()
    # dE/dz = −Ψz (Ψ symmetric), and dz/ds = 2 straight through z = 2·1[s >= 0] − 1
    torch.testing.assert_close(scores.grad, -2.0 * (psi @ z), rtol=1e-5, atol=1e-6)


def random_problem(widths=(40, 40), n_stored=3, seed=0, rule="storkey"):
    rng = np.random.default_rng(seed)
    net = build_basenet("hopnet", widths, 10, seed)
    mems = {f"layer{l}": HopfieldMemory(w, rule).store(rng.integers(0, 2, (n_stored, w)).astype(bool))
            for l, w in enumerate(widths)}
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(16, 784, generator=g) for _ in range(4)]
    return net, mems, batches


@pytest.mark.parametrize("finish", ["async", "anneal"])
def test_descent_finished_by_recall_ends_at_a_fixed_point_of_every_memory(finish):
    net, mems, batches = random_problem()
    config = RecoveryConfig(method="descent", recall=finish, init="uniform", steps=2, gamma=0.0)
    masks, info = recover_masks(net, mems, batches, config, seed=3)
    assert info["fixed_point"] == [True, True] and info["chosen"] == "descent" and info["steps"] == 2
    for m, mem in zip(masks, mems.values()):
        z = 2 * m.astype(np.int8) - 1
        np.testing.assert_array_equal(mem.recall(z, mode="sync"), z)  # nothing moves any more
    assert info["energy"] == pytest.approx([mem.energy(2 * m.astype(np.int8) - 1)
                                            for m, mem in zip(masks, mems.values())])


@pytest.mark.parametrize("kw, match", [
    ({"method": "magic"}, "method: expected one of seeded, descent, got 'magic'"),
    ({"recall": "sync"}, "recall: expected one of anneal, async, none, got 'sync'"),
    ({"lr": 0}, "lr: expected a positive number, got 0"),
    ({"momentum": 1.0}, r"momentum: expected a number in \[0, 1\), got 1.0"),
    ({"gamma": -1e-3}, "gamma: expected a number >= 0"),
    ({"weight_decay": float("nan")}, "weight decay: expected a number >= 0"),
    ({"batch_size": 1}, "batch size: expected an integer >= 2"),
    ({"steps": 0}, "steps: expected None .* or an integer >= 1, got 0"),
    ({"init": "zeros"}, "init: expected one of empty, full, uniform, stored-mean, got 'zeros'"),
    ({"shortlist": 0}, "shortlist: expected an integer >= 1, got 0"),
    ({"screen_samples": 1}, "screen samples: expected an integer >= 2"),
    ({"selection_batches": 2.5}, "selection batches: expected an integer >= 1, got 2.5"),
])
def test_config_errors(kw, match):
    with pytest.raises(UserError, match=match):
        RecoveryConfig(**kw)


def test_input_errors():
    net, mems, batches = random_problem()
    cues = np.zeros((2, 80), bool)
    with pytest.raises(UserError, match=r"memories: expected one per masked layer \(layer0, layer1\) or one joint "
                                        r"memory of dim 80, got a \(dim 40\), b \(dim 39\)"):
        recover_masks(net, {"a": mems["layer0"], "b": HopfieldMemory(39)}, batches, cues=cues)
    with pytest.raises(UserError, match="slots: layer1 covers entries 0..40 of layer 1, which does not fit a "
                                        "memory of dim 39"):
        recover_masks(net, {"layer0": mems["layer0"], "layer1": HopfieldMemory(39)}, batches, cues=cues)
    with pytest.raises(UserError, match=r"batches: expected tensors of shape \(B >= 2, 784\), got \(16, 783\)"):
        recover_masks(net, mems, [torch.zeros(16, 783)], cues=cues)
    with pytest.raises(UserError, match="batches: expected at least one batch, got none"):
        recover_masks(net, mems, [], cues=cues)
    with pytest.raises(UserError, match="cues: the seeded method needs the run's seeded initial masks"):
        recover_masks(net, mems, batches)
    with pytest.raises(UserError, match="config: expected a RecoveryConfig, got dict"):
        recover_masks(net, mems, batches, {"lr": 500})
    with pytest.raises(UserError, match="memories: expected a dict of name -> HopfieldMemory, got list"):
        recover_masks(net, list(mems.values()), batches)
    with pytest.raises(UserError, match="slots: memory 'x' is not among the memories"):
        recover_masks(net, mems, batches, slots=[MemorySlot("x", 0, 0, 40)], cues=cues)
    with pytest.raises(UserError, match="slots: the memories must cover every mask entry exactly once"):
        recover_masks(net, mems, batches, slots=[MemorySlot("layer0", 0, 0, 40)], cues=cues)
    with pytest.raises(UserError, match="slots: layer1 covers entries 0..40 of layer 1, which does not fit a "
                                        "memory of dim 39"):
        recover_masks(net, {"layer0": mems["layer0"], "layer1": HopfieldMemory(39)}, batches,
                      slots=[MemorySlot("layer0", 0, 0, 40), MemorySlot("layer1", 1, 0, 40)], cues=cues)
    empty = Candidates(np.zeros((0, 80), bool), np.zeros((0, 2), bool), 0.0)
    with pytest.raises(UserError, match="candidates: none to choose from"):
        recover_masks(net, mems, batches, candidates=empty)


@needs_data
@pytest.mark.parametrize("stages", [{}, {"prescreen_keep": 2, "shortlist": 1}, {"superposed": 2}])
def test_keyed_memory_gives_every_mask_back_through_the_selection_stages(trained, monkeypatch, stages):
    # the run's masks in a keyed memory: decoded exactly from their keys, then found by the
    # selection cascade (entropy prescreen, screen, shortlist), or by superposition first
    archive, net, stream = trained
    memories = replay_memories(archive.config, archive.masks, "keyed", 4)
    assert list(memories) == ["layer0", "layer1"] and memories["layer0"].keys == 4
    screened = []
    real = recovery.candidate_entropies
    monkeypatch.setattr(recovery, "candidate_entropies",
                        lambda net, x, masks, shapes: screened.append(len(masks)) or real(net, x, masks, shapes))
    records = evaluate_recovery(net, archive, stream, config=RecoveryConfig(**stages), memories=memories)
    for r in records:
        assert r["hamming"] == [0, 0] and r["chosen"] == f"key {r['task']}", r
        assert r["accuracy"] == r["gg_accuracy"] and r["fixed_point"] == [True, True] and r["candidates"] == 4
    if "superposed" in stages:  # one-shot inference in superposition kept 2 of the 4 for the screen
        assert max(screened) == 2
    elif stages:  # prescreen keeps 2, the screen 1, which the selection batches confirm
        assert screened[:3] == [4, 2, 1]


@needs_data
def test_superposed_shortlist_is_the_paper_one_shot_gradient(trained):
    from supsup_hopfield.inference import alpha_gradient
    from supsup_hopfield.packed import PackedMaskBank

    archive, net, stream = trained
    x = next(iter(stream.task(2).test_batches(64)))[0]
    flat = np.concatenate([archive.masks["layer0"], archive.masks["layer1"]], axis=1)
    g = alpha_gradient(net, PackedMaskBank.from_masks([true_masks(archive, t) for t in range(4)]), x)
    keep = recovery.superposed_shortlist(net, x, flat, [(256,), (256,)], 2)
    np.testing.assert_array_equal(keep, np.sort(np.argsort(g)[:2]))


@needs_data
def test_the_descent_refuses_a_keyed_memory(trained):
    archive, net, stream = trained
    memories = replay_memories(archive.config, archive.masks, "keyed", 4)
    batches = [x for x, _ in stream.task(0).test_batches(64)][:2]
    with pytest.raises(UserError, match="recovery: the descent runs on an attractor memory's energy"):
        recover_masks(net, memories, batches, RecoveryConfig(method="descent"))
