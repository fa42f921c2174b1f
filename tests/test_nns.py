"""Scenario NNs (supsup_hopfield/nns.py): no task labels, no boundaries. On three permuted
Fashion-MNIST tasks (a small LeNet, 3000 training images) the learner must allocate one mask per
task, find every boundary within `check_every` batches, keep to its budget, switch back to a
task it has seen, undo exactly the training since its last check, and repeat itself for a seed."""
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_hopfield.basenet import build_basenet
from supsup_hopfield.data import Dataset, load_dataset
from supsup_hopfield.errors import UserError
from supsup_hopfield.nns import NNsConfig, NNsLearner, evaluate_nns, train_nns
from supsup_hopfield.packed import PackedMaskBank
from supsup_hopfield.streams import TaskStream
from supsup_hopfield.training import TrainConfig, train_task

FASHION = Path("/usr/share/datasets/fashion-mnist")

TASKS, STEPS, CHECK = 3, 130, 40  # boundaries at 130 and 260 fall between checks (120, 160, ...)
TRAIN = TrainConfig(batch_size=64, lr=1e-3, device="cpu")


def small_net():
    return build_basenet("lenet", widths=(100, 50), outputs=10, seed=0)


def same_masks(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for ma, mb in zip(a, b) for x, y in zip(ma, mb))


@pytest.fixture(scope="module")
def stream():
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's 2 cores are shared: one thread is the faster here
    d = load_dataset("fashion-mnist")
    small = Dataset(d.name, d.train_images[:3000].clone(), d.train_labels[:3000].clone(),
                    d.test_images[:500].clone(), d.test_labels[:500].clone(), d.mean, d.std, d.source)
    yield TaskStream("permuted-fashion-mnist", small, seed=0, n_tasks=TASKS)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(stream):
    net = small_net()
    calls = []
    masks, report = train_nns(net, stream, TASKS, STEPS, NNsConfig(check_every=CHECK, train=TRAIN),
                              progress=lambda step, loss, slot: calls.append((step, slot)))
    return net, masks, report, calls


# ------------------------------------------------------------------------------ the decisions
def test_one_mask_per_task_with_boundaries_found_within_a_check(run):
    net, masks, report, calls = run
    assert report["n_masks"] == len(masks) == TASKS
    assert [a["mask"] for a in report["allocations"]] == [0, 1, 2]
    assert [a["true_task"] for a in report["allocations"]] == [0, 1, 2]
    assert report["boundaries"] == [0, 130, 260]
    assert report["detection_delay"] == [30, 20]  # the first check after each boundary: 160, 280
    assert all(0 <= d < CHECK for d in report["detection_delay"])
    assert report["switches"] == [] and report["task_to_mask"] == [0, 1, 2]
    # task 0 kept 120 batches (to its last check), 10 more were undone with the 30 of task 1
    # that mask 0 saw before the boundary was found; likewise at the second boundary
    assert report["batches"] == [[120, 0, 0], [0, 80, 0], [0, 0, 110]]
    assert report["undone_batches"] == [10, 50, 20]
    decisions = [(c["step"], c["decision"]) for c in report["checks"]]
    assert decisions == [(40, "continue"), (80, "continue"), (120, "continue"), (160, "allocate"),
                         (200, "continue"), (240, "continue"), (280, "allocate"), (320, "continue"),
                         (360, "continue")]
    assert [s for s, _ in calls] == list(range(1, TASKS * STEPS + 1))
    assert [slot for _, slot in calls][159:161] == [0, 1]  # batch 161 (step 160) trains the new mask


def test_first_checks_compare_against_a_fresh_mask(run):
    """With one mask nu = (1): the k = 1 checks ask whether mask 0 beats the mask a new slot
    would start from; it does on its own task, it does not on the next one."""
    _, _, report, _ = run
    first = [c for c in report["checks"] if c["k"] == 1]
    assert [c["step"] for c in first] == [40, 80, 120, 160]
    assert all(c["k_max_nu"] == 1.0 and len(c["fresh_tests"]) == 1 for c in first)
    assert all(c["fresh_tests"][0] > 1.4 for c in first[:3]), first
    assert first[3]["fresh_tests"][0] < 1 + 2 ** -3 and first[3]["decision"] == "allocate"


def test_rollback_restores_the_mask_of_the_last_check(run, stream):
    """Mask 0 was confirmed at step 120 and rolled back to it at 160: it is exactly what
    train_task learns from the same 120 batches of task 0."""
    net, masks, _, _ = run
    given, _ = train_task(net, stream.task(0), TrainConfig(**{**TRAIN.to_dict(), "steps": 120}), task_index=0)
    assert same_masks([masks[0]], [given])


def test_inferred_masks_score_like_the_task_given_ones(run, stream):
    net, masks, report, _ = run
    ours = evaluate_nns(net, masks, stream, range(TASKS), report["task_to_mask"], batch_size=100)
    assert sorted(ours) == [0, 1, 2]
    assert all(r["mapped_fraction"] == 1.0 and r["batches"] == 5 and r["accuracy"] > 0.6 for r in ours.values()), ours
    for t in range(TASKS):  # every batch went to task t's mask: the plain forward under it, counted
        m = [torch.as_tensor(x, dtype=torch.float32) for x in masks[report["task_to_mask"][t]]]
        correct = total = 0
        with torch.no_grad():
            for x, y in stream.task(t).test_batches(100):
                correct += int((net(x, m).argmax(dim=1) == y).sum())
                total += len(y)
        assert ours[t]["accuracy"] == correct / total
    # the same masks handed on bit-packed (as eval takes them from an archive) score the same
    bank = PackedMaskBank.from_masks(masks)
    assert evaluate_nns(net, bank, stream, range(TASKS), report["task_to_mask"], batch_size=100) == ours


# ----------------------------------------------------------------------------- budget, seeds
def test_budget_caps_allocations(stream):
    net = small_net()
    masks, report = train_nns(net, stream, TASKS, STEPS, NNsConfig(check_every=CHECK, budget=2, train=TRAIN))
    assert report["n_masks"] == len(masks) == 2 and report["budget"] == 2
    assert [a["step"] for a in report["allocations"]] == [0, 160]
    assert report["detection_delay"] == [30, None]
    assert any(c["decision"] == "over-budget" for c in report["checks"])
    assert report["task_to_mask"][2] in (0, 1)
    one, report1 = train_nns(small_net(), stream, 2, 60, NNsConfig(check_every=CHECK, budget=1, train=TRAIN))
    assert len(one) == 1 and [c["decision"] for c in report1["checks"]] == ["over-budget"] * 2


def test_same_seed_same_masks_and_report(run, stream):
    _, masks, report, _ = run
    again, report2 = train_nns(small_net(), stream, TASKS, STEPS, NNsConfig(check_every=CHECK, train=TRAIN))
    assert same_masks(masks, again)
    report.pop("seconds"), report2.pop("seconds")
    assert report == report2


# -------------------------------------------------------------------------------- recurrence
def test_a_returning_task_switches_back_to_its_mask(stream):
    """Tasks 0, 1, 0, 1 without labels: two masks, and the learner switches between them."""
    learner = NNsLearner(small_net(), NNsConfig(check_every=CHECK, train=TRAIN))
    batches = {t: stream.task(t).batches(64, torch.Generator().manual_seed(t)) for t in (0, 1)}
    slots = []
    for t in (0, 1, 0, 1):
        slots += [learner.observe(x, y)[0] for x, y in islice(batches[t], STEPS)]
    assert learner.k == 2
    assert [(e["kind"], e["step"], e["slot"]) for e in learner.events] == \
        [("allocate", 0, 0), ("allocate", 160, 1), ("switch", 280, 0), ("switch", 400, 1)]
    assert learner.trained[150:170] == [-1] * 10 + [1] * 10  # 120..159 undone on mask 0
    assert slots[-1] == 1 and len(learner.masks()) == 2


# ------------------------------------------------------------------------------- bad input
def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="check every: expected at least 1 batch, got 0"):
        NNsConfig(check_every=0)
    with pytest.raises(UserError, match=r"threshold: expected a value above 1 .*got 1.0"):
        NNsConfig(threshold=1.0)
    with pytest.raises(UserError, match="budget: expected at least 1 mask"):
        NNsConfig(budget=0)
    with pytest.raises(UserError, match="objective: expected one of entropy, g"):
        NNsConfig(objective="loss")
    assert NNsConfig().threshold == 1.125 and NNsConfig().check_every == 100 and NNsConfig().budget is None


def test_train_nns_rejects_more_tasks_than_the_stream(stream):
    with pytest.raises(UserError, match="tasks: expected at most 3"):
        train_nns(small_net(), stream, 4, 10, NNsConfig(train=TRAIN))
    with pytest.raises(UserError, match="expected at least 1 each, got 1/0"):
        train_nns(small_net(), stream, 1, 0, NNsConfig(train=TRAIN))
