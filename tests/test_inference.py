"""Task inference over packed masks (supsup_hopfield/inference.py): the Numba kernels against
their plain NumPy references, the alpha gradient against autograd through stacked float masks,
the three methods on a tiny trained problem whose answer is known, and the no-materialisation
property."""
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from supsup_hopfield.basenet import build_basenet
from supsup_hopfield.data import Dataset, load_dataset
from supsup_hopfield.errors import UserError
from supsup_hopfield._packed_kernels import inner_reference, superpose_reference
from supsup_hopfield.inference import (METHODS, alpha_gradient, entropy_objective, evaluate_inference, g_objective,
                                       infer_task)
from supsup_hopfield.packed import PackedMaskBank
from supsup_hopfield.streams import TaskStream
from supsup_hopfield.training import TrainConfig, evaluate, train_task

FASHION = Path("/usr/share/datasets/fashion-mnist")
SHAPES = [(3, 7), (13,), (8, 8), (5, 33)]  # 21, 13, 64, 165 entries: most not a multiple of 8


def random_masks(rng, k, shapes=SHAPES, density=0.5):
    return [[rng.random(s) < density for s in shapes] for _ in range(k)]


def total_inner_reference(bank, grads):
    return sum(inner_reference(p, g, n) for p, g, n in zip(bank.packed, grads, bank.entries))


# ------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("k", [1, 3, 16, 17, 40, 300])
def test_counts_and_uniform_superposition_match_the_reference(k):
    rng = np.random.default_rng(k)
    bank = PackedMaskBank.from_masks(random_masks(rng, k))
    rows = np.sort(rng.choice(k, size=max(1, k // 3), replace=False))
    for subset in (None, rows):
        n_rows = k if subset is None else rows.size
        for l, (s, c) in enumerate(zip(bank.superpose(rows=subset), bank.counts(rows=subset))):
            packed = bank.packed[l] if subset is None else bank.packed[l][rows]
            bits = np.unpackbits(packed, axis=1, count=bank.entries[l])
            assert np.array_equal(c, bits.sum(axis=0))  # exact integer counts
            ref = superpose_reference(packed, np.full(n_rows, 1.0 / n_rows), bank.entries[l])
            assert s.dtype == np.float32 and s.shape == (bank.entries[l],)
            np.testing.assert_allclose(s, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("k", [1, 7, 8, 9, 50])
def test_inner_products_match_the_reference(k):
    rng = np.random.default_rng(100 + k)
    bank = PackedMaskBank.from_masks(random_masks(rng, k, density=0.3))
    grads = [rng.standard_normal(n).astype(np.float32) for n in bank.entries]
    ref = total_inner_reference(bank, grads)
    np.testing.assert_allclose(bank.inner(grads), ref, rtol=1e-5, atol=1e-4)
    rows = np.array([k - 1, 0])
    np.testing.assert_allclose(bank.inner(grads, rows=rows), ref[rows], rtol=1e-5, atol=1e-4)


REAL_SHAPES = [(3, 7), (165,), (1000,)]  # 3, 21 and 125 bytes a row: odd byte widths


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def numba_threads(request):
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield request.param
    numba.set_num_threads(previous)


@pytest.mark.parametrize("serial_bytes", [0, 1 << 40], ids=["always parallel", "always serial"])
@pytest.mark.parametrize("k", [1, 63, 64, 65, 300, 2500])
def test_kernels_at_real_sizes_on_every_path(k, serial_bytes, numba_threads, monkeypatch):
    """Superposition (uniform, grouped, weighted), counts and inner products against the plain
    references: across the 64-row switch to the lookup-table kernel, with one and two threads,
    and with the single-thread threshold forced both ways."""
    from supsup_hopfield import _packed_kernels

    monkeypatch.setattr(_packed_kernels, "SERIAL_BYTES", serial_bytes)
    rng = np.random.default_rng(k)
    bank = PackedMaskBank.from_masks(random_masks(rng, k, REAL_SHAPES, density=0.4), REAL_SHAPES)
    rows = np.unique(rng.choice(k, size=max(1, k // 2), replace=True))
    grads = [rng.standard_normal(n).astype(np.float32) for n in bank.entries]
    for subset in (None, rows):
        idx = np.arange(k) if subset is None else subset
        ref = sum(inner_reference(p[idx], g, n) for p, g, n in zip(bank.packed, grads, bank.entries))
        np.testing.assert_allclose(bank.inner(grads, rows=subset), ref, rtol=1e-5, atol=1e-3)
        for l, c in enumerate(bank.counts(rows=subset)):
            bits = np.unpackbits(bank.packed[l][idx], axis=1, count=bank.entries[l])
            np.testing.assert_array_equal(c, bits.sum(axis=0))
    for weights in (None, rng.choice([0.5, -2.0], size=k), rng.random(k)):
        for l, s in enumerate(bank.superpose(weights)):
            w = np.full(k, 1.0 / k) if weights is None else weights
            np.testing.assert_allclose(s, superpose_reference(bank.packed[l], w, bank.entries[l]),
                                       rtol=1e-5, atol=1e-4)


def test_weighted_superposition_matches_the_reference():
    rng = np.random.default_rng(5)
    bank = PackedMaskBank.from_masks(random_masks(rng, 23))
    for weights in (rng.random(23),  # all distinct: the float kernel
                    rng.choice([0.0, 0.25, -1.5], size=23)):  # few values: grouped exact counts
        for l, s in enumerate(bank.superpose(weights)):
            np.testing.assert_allclose(s, superpose_reference(bank.packed[l], weights, bank.entries[l]),
                                       rtol=1e-6, atol=1e-6)


def test_all_zero_and_all_one_masks():
    shapes = [(3, 7), (1000,)]
    zeros = [np.zeros(s, bool) for s in shapes]
    ones = [np.ones(s, bool) for s in shapes]
    bank = PackedMaskBank.from_masks([zeros, ones, ones] + [ones] * 30, shapes)
    counts = bank.counts()
    assert all(np.all(c == 32) for c in counts)
    assert all(np.all(c == 0) for c in bank.counts(rows=[0]))
    grads = [np.arange(n, dtype=np.float32) - 7 for n in bank.entries]
    got = bank.inner(grads, rows=[0, 1])
    np.testing.assert_allclose(got, [0.0, sum(float(g.sum()) for g in grads)], rtol=1e-6)


def test_packed_input_with_padding_bits_set_is_refused():
    """Rows must be exactly what np.packbits writes: set padding bits mean the rows are not masks
    of these shapes (or are damaged), so the bank refuses them instead of guessing."""
    rng = np.random.default_rng(9)
    masks = random_masks(rng, 5)
    packed = [np.stack([np.packbits(m[l].ravel()) for m in masks]) for l in range(len(SHAPES))]
    PackedMaskBank(packed, SHAPES)
    packed[1][2, -1] |= 1  # 13 entries: bits 13..15 of each row are padding
    with pytest.raises(UserError, match=r"^packed\[1\]: packed masks: the padding bits of each row must be zero"):
        PackedMaskBank(packed, SHAPES)


# --------------------------------------------------------------------------------------- bank
def test_bank_round_trips_masks_and_grows():
    rng = np.random.default_rng(1)
    masks = random_masks(rng, 12)
    bank = PackedMaskBank.from_masks(masks[:3])
    for m in masks[3:]:
        bank.append(m)
    assert bank.k == len(bank) == 12
    assert bank.nbytes == 12 * sum((n + 7) // 8 for n in (21, 13, 64, 165))
    for i in (0, 5, 11):
        assert all(np.array_equal(a, b) for a, b in zip(bank.unpack(i), masks[i]))
    packed = [np.stack([np.packbits(m[l].ravel()) for m in masks]) for l in range(len(SHAPES))]
    assert all(np.array_equal(a, b) for a, b in zip(bank.packed, packed))
    again = PackedMaskBank(packed, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(again.packed, packed))


def test_bank_shares_whole_word_input_and_copies_on_growth():
    rng = np.random.default_rng(2)
    shapes = [(8, 16), (3, 7)]  # 16 bytes per row (whole words): shared; 3 bytes: copied
    packed = [rng.integers(0, 256, size=(4, 16), dtype=np.uint8), rng.integers(0, 256, size=(4, 3), dtype=np.uint8)]
    packed[1][:, -1] &= 0xF8  # 21 entries: the last 3 bits are padding, zero as np.packbits writes it
    for p in packed:
        p.setflags(write=False)  # e.g. a read-only np.load(mmap_mode="r")
    bank = PackedMaskBank(packed, shapes)
    assert np.shares_memory(bank.packed[0], packed[0]) and not np.shares_memory(bank.packed[1], packed[1])
    grads = [rng.standard_normal(n).astype(np.float32) for n in bank.entries]
    np.testing.assert_allclose(bank.inner(grads), total_inner_reference(bank, grads), rtol=1e-5)
    assert np.array_equal(bank.counts()[0], np.unpackbits(packed[0], axis=1).sum(axis=0))
    bank.append([np.ones((8, 16), bool), np.zeros((3, 7), bool)])
    assert bank.k == 5 and not np.shares_memory(bank.packed[0], packed[0])
    assert np.array_equal(bank.packed[0][:4], packed[0]) and np.all(bank.packed[0][4] == 255)


def test_bank_rejects_bad_input():
    with pytest.raises(UserError, match=r"^packed\[0\]: packed masks: expected uint8 bits of shape \(tasks, 3\) "
                                        r"for masks of shape \(3, 7\), got uint8 \(2, 4\)"):
        PackedMaskBank([np.zeros((2, 4), np.uint8)], [(3, 7)])
    with pytest.raises(UserError, match=r"packed\[1\]: expected 2 tasks"):
        PackedMaskBank([np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8)], [(3, 7), (13,)])
    bank = PackedMaskBank.from_masks(random_masks(np.random.default_rng(0), 2))
    with pytest.raises(UserError, match=r"^task: expected a row 0\.\.1 of the mask bank, got 5; pass the index of "
                                        r"a stored task$"):
        bank.unpack(5)
    with pytest.raises(UserError, match=r"masks\[1\]: expected shape \(13,\), got \(12,\)"):
        bank.append([np.zeros((3, 7), bool), np.zeros(12, bool), np.zeros((8, 8), bool), np.zeros((5, 33), bool)])
    with pytest.raises(UserError, match="task: expected a row 0..1"):
        bank.unpack(2)
    with pytest.raises(UserError, match="rows: expected task rows in 0..1, got rows from 0 to 2"):
        bank.counts(rows=[0, 2])
    with pytest.raises(UserError, match="rows: expected one or more task rows in 0..1, got none"):
        bank.inner([np.zeros(n, np.float32) for n in bank.entries], rows=[])
    with pytest.raises(UserError, match="grads: expected 4 layer vectors"):
        bank.inner([np.zeros(21, np.float32)])


# ------------------------------------------------------------------------- the alpha gradient
def plain_alpha_gradient(net, masks, x, objective, n_classes):
    """Autograd through float masks stacked in memory (k, entries): the paper's way."""
    k = len(masks)
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64, requires_grad=True)
    stacked = [torch.from_numpy(np.stack([m[l].reshape(-1) for m in masks]).astype(np.float64))
               for l in range(len(net.mask_shapes))]
    supers = [(alpha @ s).float().view(shape) for s, shape in zip(stacked, net.mask_shapes)]
    logits = net(x, supers)
    value = entropy_objective(logits) if objective == "entropy" else g_objective(logits, n_classes)
    return torch.autograd.grad(value, alpha)[0].numpy()


@pytest.mark.parametrize("architecture", ["lenet", "hopnet"])
@pytest.mark.parametrize("objective", ["entropy", "g"])
def test_alpha_gradient_equals_autograd_through_stacked_masks(architecture, objective):
    net = build_basenet(architecture, widths=(24, 16), outputs=15, seed=3)
    rng = np.random.default_rng(4)
    masks = random_masks(rng, 11, [tuple(s) for s in net.mask_shapes])
    bank = PackedMaskBank.from_masks(masks)
    x = torch.randn(32, 784, generator=torch.Generator().manual_seed(0))
    ours = alpha_gradient(net, bank, x, objective=objective, n_classes=10)
    plain = plain_alpha_gradient(net, masks, x, objective, 10)
    np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-6 * np.abs(plain).max())
    rows = np.array([2, 7, 9])
    sub = alpha_gradient(net, bank, x, rows=rows, objective=objective, n_classes=10)
    np.testing.assert_allclose(sub, plain_alpha_gradient(net, [masks[i] for i in rows], x, objective, 10),
                               rtol=1e-4, atol=1e-6 * np.abs(plain).max())


def test_g_objective_passes_gradient_through_superfluous_outputs_only():
    logits = torch.randn(4, 12, requires_grad=True)
    g_objective(logits, 10).backward()
    assert torch.all(logits.grad[:, :10] == 0)
    expected = torch.softmax(logits.detach(), dim=1)[:, 10:] / 4  # d mean logsumexp / dz_j = p_j / B
    torch.testing.assert_close(logits.grad[:, 10:], expected)


def test_inference_rejects_bad_input():
    net = build_basenet("lenet", widths=(8, 8), outputs=10, seed=0)
    bank = PackedMaskBank.from_masks(random_masks(np.random.default_rng(0), 2, [tuple(s) for s in net.mask_shapes]))
    x = torch.randn(4, 784)
    with pytest.raises(UserError, match="method: expected one of oneshot, binary, g, binary-g"):
        infer_task(net, bank, x, method="twoshot")
    with pytest.raises(UserError, match="g objective: expected superfluous outputs.*outputs=10, n_classes=10"):
        infer_task(net, bank, x, method="g", n_classes=10)
    other = build_basenet("lenet", widths=(9, 8), outputs=10, seed=0)
    with pytest.raises(UserError, match="mask bank: expected layer shapes"):
        infer_task(other, bank, x)


# ------------------------------------------------------------- a tiny problem, answer known
@pytest.fixture(scope="module")
def trained():
    """Three permuted Fashion-MNIST tasks on a small LeNet with 10 superfluous outputs, 100 steps
    each on 3000 training images (about 77% test accuracy: enough to tell the tasks apart)."""
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = load_dataset("fashion-mnist")
    small = Dataset(d.name, d.train_images[:3000].clone(), d.train_labels[:3000].clone(),
                    d.test_images[:500].clone(), d.test_labels[:500].clone(), d.mean, d.std, d.source)
    stream = TaskStream("permuted-fashion-mnist", small, seed=0, n_tasks=3)
    net = build_basenet("lenet", widths=(100, 50), outputs=20, seed=0)
    config = TrainConfig(steps=100, batch_size=64, lr=1e-3, device="cpu")
    masks = [train_task(net, stream.task(t), config, task_index=t)[0] for t in range(3)]
    yield net, stream, PackedMaskBank.from_masks(masks)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_finds_the_task_of_each_batch(trained, method):
    net, stream, bank = trained
    results = evaluate_inference(net, bank, stream, method=method, batch_size=100)
    assert sorted(results) == [0, 1, 2]
    for t, r in results.items():
        assert r["batches"] == 5 and r["seconds_per_batch"] > 0
        assert r["task_inference_accuracy"] == 1.0, (method, t, r)
        assert r["accuracy"] == r["accuracy_inferred_mask"] == r["task_given_accuracy"] > 0.6


def test_the_right_task_lowers_the_objective_fastest(trained):
    """Sign convention: the gradient of the true task's alpha is the most negative, for a batch of
    8 (argmin of dE/dalpha = argmax of -dE/dalpha), for the entropy and for g."""
    net, stream, bank = trained
    for t in range(3):
        x, _ = next(stream.task(t).test_batches(8))
        for objective in ("entropy", "g"):
            grad = alpha_gradient(net, bank, x, objective=objective, n_classes=10)
            assert int(np.argmin(grad)) == t and grad[t] < 0, (t, objective, grad)
        assert infer_task(net, bank, x, "binary") == t


def test_wrongly_inferred_batches_count_as_wrong(trained, monkeypatch):
    net, stream, bank = trained
    import supsup_hopfield.inference as inference
    monkeypatch.setattr(inference, "infer_task", lambda net, bank, x, method, n: 0)
    results = evaluate_inference(net, bank, stream, tasks=[0, 1], batch_size=250)
    assert sorted(results) == [0, 1]
    given = [evaluate(net, bank.unpack(t), stream.task(t), batch_size=250) for t in (0, 1)]
    assert results[0]["task_inference_accuracy"] == 1.0 and results[0]["accuracy"] == given[0] > 0.6
    assert results[0]["accuracy_inferred_mask"] == results[0]["task_given_accuracy"] == given[0]
    assert results[1]["task_inference_accuracy"] == 0.0 and results[1]["accuracy"] == 0.0
    assert results[1]["task_given_accuracy"] == given[1]
    assert results[1]["accuracy_inferred_mask"] == evaluate(net, bank.unpack(0), stream.task(1), batch_size=250)


def test_evaluate_inference_passes_its_options_and_reports_time_and_progress(trained, monkeypatch):
    """n_classes reaches the inference, seconds per batch is the mean time of one inference (a
    fake clock that advances 1 s per reading gives exactly 1.0), progress counts tasks."""
    net, stream, bank = trained
    import supsup_hopfield.inference as inference
    seen, ticks, calls = [], iter(range(10**6)), []
    monkeypatch.setattr(inference, "infer_task", lambda net, bank, x, method, n: seen.append((method, n)) or 1)
    monkeypatch.setattr(inference.time, "perf_counter", lambda: float(next(ticks)))
    res = evaluate_inference(net, bank, stream, tasks=[2, 1], method="binary-g", batch_size=200, n_classes=13,
                             progress=lambda done, total: calls.append((done, total)))
    assert list(res) == [2, 1] and calls == [(1, 2), (2, 2)]
    assert res[2]["batches"] == 3 and res[2]["seconds_per_batch"] == 1.0  # 500 images: 200, 200, 100
    assert set(seen) == {("binary-g", 13)} and len(seen) == 6
    seen.clear()
    evaluate_inference(net, bank, stream, tasks=[0], batch_size=200)
    assert set(seen) == {("oneshot", stream.n_classes)}


def test_binary_inference_keeps_the_better_half_each_round(monkeypatch):
    """Against a scripted gradient: round 1 over all 7 rows keeps the 4 lowest, and so on; the
    scripted gradients reverse order between rounds, so one-shot and binary disagree."""
    import supsup_hopfield.inference as inference
    bank = PackedMaskBank.from_masks(random_masks(np.random.default_rng(0), 7))
    rounds = []

    def fake_gradient(net, bank, x, rows, objective, n_classes):
        rows = np.arange(bank.k) if rows is None else np.asarray(rows)
        rounds.append((rows.tolist(), objective, n_classes))
        sign = 1.0 if len(rounds) % 2 else -1.0
        return sign * rows.astype(np.float64)  # rows ascending in odd rounds, descending in even

    monkeypatch.setattr(inference, "alpha_gradient", fake_gradient)
    assert infer_task(None, bank, None, "oneshot", n_classes=17) == 0
    assert rounds == [(list(range(7)), "entropy", 17)]
    rounds.clear()
    assert infer_task(None, bank, None, "g") == 0 and rounds == [(list(range(7)), "g", 10)]  # 10 classes by default
    rounds.clear()
    # 7 rows -> keep 4 lowest {0,1,2,3} -> keep 2 highest {2,3} -> keep the lowest {2}
    assert infer_task(None, bank, None, "binary-g", n_classes=17) == 2
    assert rounds == [(list(range(7)), "g", 17), ([0, 1, 2, 3], "g", 17), ([2, 3], "g", 17)]


# --------------------------------------------------------------------- no materialisation
class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor a torch op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_inference_never_builds_float_copies_of_all_masks():
    net = build_basenet("lenet", outputs=10, seed=0)  # 784-300-100-10: 266,200 entries per task
    k = 500
    rng = np.random.default_rng(0)
    packed = [rng.integers(0, 256, size=(k, (int(np.prod(s)) + 7) // 8), dtype=np.uint8) for s in net.mask_shapes]
    bank = PackedMaskBank(packed, net.mask_shapes)
    del packed
    x = torch.randn(128, 784, generator=torch.Generator().manual_seed(0))
    infer_task(net, bank, x[:2])  # compile / load the kernels outside the measurement
    model_bytes = sum(w.numel() * 4 for w in net.weights)
    tracemalloc.start()
    with _LargestTensor() as mode:
        infer_task(net, bank, x)
        infer_task(net, bank, x, "binary")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # numpy: a few (entries,) vectors, against 532 MB for a (k, entries) float32 array
    assert peak < 3 * model_bytes < bank.nbytes // 4, (peak, model_bytes, bank.nbytes)
    assert mode.largest <= max(max(bank.entries), 128 * 300), mode.largest  # torch: one layer at most
