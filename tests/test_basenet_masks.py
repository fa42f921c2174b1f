"""Base networks (supsup_hopfield/basenet.py) and supermasks (supsup_hopfield/masks.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supsup_hopfield.basenet import BaseNetSpec, build_basenet, build_from_spec, derive_seed
from supsup_hopfield.errors import UserError
from supsup_hopfield.masks import (MaskConfig, MaskedModel, binarize, check_masks, density,
                                   flip_fraction, init_scores, initial_mask, masks_to_tensors,
                                   scores_to_masks)


@pytest.mark.parametrize("arch, sizes", [
    ("lenet", (784, 300, 100, 10)), ("fc1024", (784, 1024, 1024, 10)), ("hopnet", (784, 2048, 2048, 10)),
])
def test_default_sizes(arch, sizes):
    net = build_basenet(arch)
    assert net.spec.sizes == sizes and len(net.mask_shapes) == (2 if arch == "hopnet" else 3)


def test_rebuilt_identical_from_seed_and_different_for_another():
    a = build_basenet("lenet", outputs=500, seed=11)
    b = build_basenet("lenet", outputs=500, seed=11)
    c = build_basenet("lenet", outputs=500, seed=12)
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    assert not torch.equal(a.weights[0], c.weights[0])
    assert build_from_spec(a.spec).spec == a.spec
    assert [tuple(w.shape) for w in a.weights] == [(300, 784), (100, 300), (500, 100)]


@pytest.mark.parametrize("arch", ["lenet", "hopnet"])
def test_signed_constant_values_and_frozen(arch):
    net = build_basenet(arch, widths=(64, 32), outputs=10, seed=0)
    assert list(net.parameters()) == []  # frozen: weights are buffers
    for w in net.weights:
        c = math.sqrt(2.0) / math.sqrt(w.shape[1])
        assert not w.requires_grad
        torch.testing.assert_close(w.abs(), torch.full_like(w, c))
        assert abs((w > 0).float().mean().item() - 0.5) < 0.1


def test_derive_seed_separates_keys():
    seeds = {derive_seed(0, tag, t) for tag in range(3) for t in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2 ** 63 for s in seeds)


def test_weight_masks_select_weights():
    net = build_basenet("lenet", widths=(20, 10), outputs=5, seed=0)
    x = torch.randn(4, 784)
    zeros = [torch.zeros(s) for s in net.mask_shapes]
    assert torch.equal(net(x, zeros), torch.zeros(4, 5))
    ones = [torch.ones(s) for s in net.mask_shapes]
    torch.testing.assert_close(net(x, ones), net(x))
    m = [torch.bernoulli(torch.full(s, 0.5), generator=torch.Generator().manual_seed(1)) for s in net.mask_shapes]
    h = x
    for l, w in enumerate(net.weights):
        h = h @ (w * m[l]).T
        h = torch.relu(h) if l < 2 else h
    torch.testing.assert_close(net(x, m), h)


def test_hopnet_neuron_mask_is_batchnorm_scale_and_last_layer_unmasked():
    net = build_basenet("hopnet", widths=(32, 16), outputs=500, seed=3)
    assert net.mask_kind == "neuron" and net.mask_shapes == ((32,), (16,))
    x = torch.randn(8, 784)
    m = [torch.tensor([1.0, 0.0] * 16), torch.tensor([0.0, 1.0] * 8)]
    bn1, bn2 = (torch.nn.BatchNorm1d(d, affine=False, track_running_stats=False) for d in (32, 16))
    h = F.silu(bn1(x @ net.weights[0].T) * m[0])
    h = F.silu(bn2(h @ net.weights[1].T) * m[1])
    expected = h @ net.weights[2].T
    torch.testing.assert_close(net(x, m), expected)
    assert net(x, m).shape == (8, 500)


def test_threshold_mask_and_straight_through_gradient_reaches_scores():
    net = build_basenet("lenet", widths=(20, 10), outputs=5, seed=0)
    cfg = MaskConfig("threshold")
    scores = init_scores(net, cfg, seed=0, task_index=0)
    x, y = torch.randn(16, 784), torch.randint(0, 5, (16,))
    masks = scores_to_masks(scores, cfg)
    assert all(torch.equal(m, (s >= 0).float()) for m, s in zip(masks, scores))
    F.cross_entropy(net(x, masks), y).backward()
    # reference: the gradient w.r.t. the masks themselves, taken as leaves
    leaves = [m.detach().clone().requires_grad_(True) for m in masks]
    F.cross_entropy(net(x, leaves), y).backward()
    for s, leaf in zip(scores, leaves):
        assert s.grad is not None and s.grad.abs().sum() > 0
        torch.testing.assert_close(s.grad, leaf.grad)


def test_topk_density_exact_and_gradient_through_abs():
    net = build_basenet("lenet", widths=(20, 10), outputs=5, seed=0)
    cfg = MaskConfig("topk", density=0.3)
    scores = init_scores(net, cfg, seed=1, task_index=2)
    masks = scores_to_masks(scores, cfg)
    for m, s in zip(masks, scores):
        assert int(m.sum()) == round(0.3 * s.numel())
        kept = s.detach().abs()[m.bool()]
        assert kept.min() >= s.detach().abs()[~m.bool()].max()  # the largest |S| are kept
    x, y = torch.randn(16, 784), torch.randint(0, 5, (16,))
    F.cross_entropy(net(x, masks), y).backward()
    leaves = [m.detach().clone().requires_grad_(True) for m in masks]
    F.cross_entropy(net(x, leaves), y).backward()
    for s, leaf in zip(scores, leaves):
        torch.testing.assert_close(s.grad, leaf.grad * s.detach().sign())
    assert abs(density(binarize(scores, cfg)) - 0.3) < 1e-3


def test_neuron_mask_gradient_reaches_scores():
    net = build_basenet("hopnet", widths=(32, 16), outputs=10, seed=0)
    model = MaskedModel(net, init_scores(net, MaskConfig(), 0, 0), MaskConfig())
    F.cross_entropy(model(torch.randn(8, 784)), torch.randint(0, 10, (8,))).backward()
    assert [p.shape for p in model.parameters()] == [(32,), (16,)]
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())
    assert [m.dtype for m in model.export_masks()] == [np.bool_, np.bool_]


def test_initial_mask_rebuilt_exactly_and_per_task():
    spec = BaseNetSpec("lenet", (300, 100), 500, seed=0)
    cfg = MaskConfig()
    a = initial_mask(spec, cfg, seed=5, task_index=3)
    b = initial_mask(build_from_spec(spec), cfg, seed=5, task_index=3)
    assert [m.shape for m in a] == [(300, 784), (100, 300), (500, 100)]
    assert all(m.dtype == np.bool_ for m in a) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = initial_mask(spec, cfg, seed=5, task_index=4)
    assert 0.45 < flip_fraction(a, c) < 0.55  # independent across tasks
    assert abs(density(a) - 0.5) < 0.01
    s = init_scores(spec, cfg, seed=5, task_index=3)
    assert all(t.abs().max() <= 1 / math.sqrt(fan) for t, fan in zip(s, spec.mask_fan_ins))
    zeros = initial_mask(spec, MaskConfig(score_init="zeros"), seed=5, task_index=3)
    assert all(m.all() for m in zeros)
    # one layer drawn alone is that layer of the full draw (each layer has its own generator)
    assert torch.equal(init_scores(spec, cfg, seed=5, task_index=3, layers=[2])[0], s[2])
    assert np.array_equal(initial_mask(spec, cfg, seed=5, task_index=3, layers=[1])[0], a[1])


def test_check_masks_and_conversion():
    net = build_basenet("hopnet", widths=(32, 16), outputs=10, seed=0)
    good = [np.ones(32, bool), np.zeros(16, bool)]
    check_masks(net, good)
    t = masks_to_tensors(good)
    assert t[0].dtype == torch.float32 and float(t[0].sum()) == 32
    with pytest.raises(UserError, match="expected 2 layer masks for hopnet, got 1"):
        check_masks(net, good[:1])
    with pytest.raises(UserError, match=r"masks\[1\]: expected shape \(16,\), got \(15,\)"):
        check_masks(net, [good[0], np.ones(15, bool)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(architecture="resnet"), "expected one of lenet, fc1024, hopnet"),
    (dict(architecture="lenet", widths=(300, 0)), "positive hidden widths"),
    (dict(architecture="lenet", outputs=1), "at least 2 output"),
])
def test_bad_base_net_recipes(kwargs, match):
    with pytest.raises(UserError, match=match):
        build_basenet(**kwargs)


def test_bad_mask_configs():
    with pytest.raises(UserError, match="expected one of threshold, topk"):
        MaskConfig("random")
    with pytest.raises(UserError, match=r"expected a fraction in \(0, 1\], got 1.5"):
        MaskConfig("topk", density=1.5)


@pytest.mark.parametrize("arch", ["lenet", "hopnet"])
def test_k_tasks_in_one_forward_equal_k_forwards(arch):
    """x (K, B, 784) with masks stacked (K, ...) gives each task's logits as its own forward
    does, BatchNorm statistics per task included (hopnet)."""
    net = build_basenet(arch, widths=(40, 30), outputs=10, seed=3).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 784, generator=g, dtype=torch.float64)
    masks = [torch.rand(3, *shape, generator=g, dtype=torch.float64) for shape in net.mask_shapes]
    together = net(x, masks)
    assert together.shape == (3, 16, 10)
    for k in range(3):
        alone = net(x[k], [m[k] for m in masks])
        torch.testing.assert_close(together[k], alone, rtol=1e-12, atol=1e-12)
    # a task's rows do not leak into another's BatchNorm statistics: change task 2's batch only
    x2 = x.clone()
    x2[2] *= 3.0
    torch.testing.assert_close(net(x2, masks)[:2], together[:2], rtol=1e-12, atol=1e-12)


def test_stacked_topk_keeps_the_density_of_each_task():
    cfg = MaskConfig("topk", density=0.25)
    scores = [torch.randn(4, 20, 10, requires_grad=True)]
    (m,) = scores_to_masks(scores, cfg, stacked=True)
    assert m.shape == (4, 20, 10) and m.view(4, -1).sum(1).tolist() == [50.0] * 4
    for k in range(4):  # each task's mask is the one its scores give alone
        assert torch.equal(m[k], scores_to_masks([scores[0][k]], cfg)[0])
    (m * torch.arange(800.0).view(4, 20, 10)).sum().backward()  # straight through |S|
    torch.testing.assert_close(scores[0].grad, torch.arange(800.0).view(4, 20, 10) * scores[0].detach().sign())


def test_resnet18_layout_seeded_weights_and_running_statistics():
    net = build_basenet("resnet18", outputs=5, seed=4)
    shapes = net.mask_shapes
    # stem, 8 basic blocks (3 with a 1x1 shortcut), final linear: 21 masked layers
    assert len(shapes) == 21 and shapes[0] == (20, 3, 3, 3) and shapes[-1] == (5, 160)
    assert [s for s in shapes if s[-1] == 1 and len(s) == 4] == [(40, 20, 1, 1), (80, 40, 1, 1), (160, 80, 1, 1)]
    assert sum(math.prod(s) for s in shapes) == 1_090_940 and net.spec.batchnorm_widths[-1] == 160
    w = net.weights[5]  # every weight is ±sqrt(2 / fan_in), fan_in = in * k * k
    torch.testing.assert_close(w.abs(), torch.full_like(w, math.sqrt(2 / (20 * 9))))
    assert 0.4 < (w > 0).float().mean() < 0.6
    again = build_basenet("resnet18", outputs=5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(net.weights, again.weights))
    assert not torch.equal(net.weights[0], build_basenet("resnet18", outputs=5, seed=5).weights[0])

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3072, generator=g)
    masks = [torch.rand(s, generator=g).round() for s in shapes]
    stats = net.new_batchnorm()
    batch = net(x, masks)  # batch statistics
    assert torch.equal(net(x, masks, stats, update=True), batch)  # training: the batch's, folded in
    mean0 = stats[0][0].clone()
    assert mean0.abs().sum() > 0 and torch.all(stats[0][1] != 1)
    net(x, masks, stats)  # evaluation reads the running statistics, does not change them
    assert torch.equal(stats[0][0], mean0)
    assert not torch.allclose(net(x, masks, stats), batch)
    # K tasks at once: each with its own masks and statistics
    masks2 = [torch.rand(s, generator=g).round() for s in shapes]
    stacked = net(torch.stack([x, x]), [torch.stack([a, b]) for a, b in zip(masks, masks2)])
    torch.testing.assert_close(stacked[1], net(x, masks2))
