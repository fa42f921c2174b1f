"""Rules with basins (rules.py: projection-zd, margin), annealed recall (dynamics.py), margin
memories in archives, and `supsup-hf basins` / `capacity` on them."""
import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.integrate import quad
from scipy.stats import norm

from supsup_hopfield.cli.main import app
from supsup_hopfield import archive as A
from supsup_hopfield import dynamics, rules
from supsup_hopfield.capacity import BasinsConfig, CapacityConfig, measure_basins, measure_capacity
from supsup_hopfield.memory import HopfieldMemory
from supsup_hopfield.rules import MarginConfig, flip_bits, gardner_kappa, learn_margin, stabilities


def random_patterns(n, d, seed=0, bias=0.5):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, d)) < bias, 1, -1).astype(np.int8)


def recalled(mem, Z, noise, mode="async", seed=0):
    cues = flip_bits(Z, noise, np.random.default_rng(seed))
    return float((mem.recall(cues, mode=mode, seed=seed) == Z).all(axis=1).mean())


# ---- Gardner's bound -----------------------------------------------------------------------
def test_gardner_kappa_solves_the_integral():
    for alpha in (0.05, 0.12, 0.5, 1.0, 1.9):
        k = gardner_kappa(alpha)
        integral = quad(lambda t: (t + k) ** 2 * norm.pdf(t), -k, np.inf)[0]
        assert integral == pytest.approx(1 / alpha, rel=1e-7)
    assert gardner_kappa(0.52) == pytest.approx(1.0, abs=0.01)  # Gardner: α_c(κ = 1) = 0.52
    assert gardner_kappa(0.2) == pytest.approx(2.0, abs=0.01)
    assert gardner_kappa(2.0) == 0.0 and gardner_kappa(5.0) == 0.0
    with pytest.raises(ValueError, match="alpha: expected a load > 0"):
        gardner_kappa(0)


# ---- projection-zd ---------------------------------------------------------------------------
def test_projection_zd_learns_the_projector_and_drops_its_diagonal():
    Z = random_patterns(60, 200, seed=1)
    zd = HopfieldMemory(200, "projection-zd", "float64").store(Z)
    pr = HopfieldMemory(200, "projection", "float64").store(Z)
    np.testing.assert_array_equal(zd.weights, pr.weights)  # same learning
    J = pr.weights - np.diag(np.diag(pr.weights))
    np.testing.assert_array_equal(zd.couplings, J)
    np.testing.assert_array_equal(pr.couplings, pr.weights)
    # a stored pattern's stability at unit i is (1 − Ψ_ii)/‖J_i‖, the same for every pattern,
    # and sqrt((1 − α)/α) on average (Kanter & Sompolinsky 1987)
    S = stabilities(J, Z)
    np.testing.assert_allclose(S, ((1 - np.diag(pr.weights)) / np.linalg.norm(J, axis=1))[None].repeat(60, 0),
                               rtol=1e-9)
    assert S.mean() == pytest.approx(math.sqrt((1 - 0.3) / 0.3), rel=0.05)
    assert zd.stable(Z).all()
    assert zd.energy(Z[0]) == pytest.approx(-0.5 * Z[0] @ J @ Z[0])


def test_projection_zd_has_the_wider_basins():
    """d = 512, load 0.4, cues 10% away (projection recalls 0% at load 0.5, docs/METHOD.md §2): with the
    self-coupling dropped every pattern comes back."""
    Z = random_patterns(205, 512, seed=0)
    zd = HopfieldMemory(512, "projection-zd").store(Z)
    pr = HopfieldMemory(512, "projection").store(Z)
    assert recalled(zd, Z, 0.1) == 1.0
    assert recalled(pr, Z, 0.1) < 0.5


# ---- margin ---------------------------------------------------------------------------------
def test_one_margin_epoch_as_matrices_equals_the_plain_loops():
    rng = np.random.default_rng(0)
    Z = random_patterns(7, 13, seed=2)
    W = rng.standard_normal((13, 13))
    W = (W + W.T) / 2
    np.fill_diagonal(W, 0)
    cues = flip_bits(Z, 0.2, rng)
    plain = rules.plain_margin_epoch(W, Z, cues, kappa=0.8, lr=0.7)
    fast = W.copy()
    short, wrong = rules._margin_epoch(fast, Z.astype(np.float64), cues.astype(np.float64), 0.8, 0.7)
    # the fast epoch also rescales Ψ to mean row norm 1: compare up to that scale
    scale = np.sqrt(np.mean(plain * plain) * 13)
    np.testing.assert_allclose(fast, plain / scale, rtol=1e-12, atol=1e-14)
    S = stabilities(W, Z)
    assert short == int((S < 0.8).sum())
    assert wrong == int((Z * (cues @ W) / np.linalg.norm(W, axis=1) < 0).sum())
    np.testing.assert_allclose(rules.plain_margin_epoch(W, Z, None, 0.8, 0.7),
                               rules.plain_margin_epoch(W, Z, None, 0.8, 0.7).T)  # symmetric


def test_stabilities_by_definition():
    W = np.array([[0.0, 3, -4, 0], [3, 0, 0, 0], [-4, 0, 0, 0], [0, 0, 0, 0]])  # unit 3 has no couplings
    Z = np.array([[1, 1, -1, 1], [1, -1, 1, -1]], np.int8)
    # z_i (Wz)_i / ‖W_i‖, a norm of 0 counting as 1
    np.testing.assert_allclose(stabilities(W, Z), [[7 / 5, 1, 1, 0], [-7 / 5, -1, -1, 0]])


def test_margin_epoch_edge_cases_match_the_plain_loops():
    """A unit with no couplings (norm 0 counts as 1), and a unit exactly at the margin (κ = 0
    with Ψ = 0: stability 0 is not below 0, and a zero field is not a wrong unit)."""
    rng = np.random.default_rng(1)
    Z = random_patterns(6, 11, seed=3)
    cues = flip_bits(Z, 0.3, rng)
    W = rng.standard_normal((11, 11))
    W = (W + W.T) / 2
    W[0] = W[:, 0] = 0
    plain = rules.plain_margin_epoch(W, Z, cues, kappa=0.5, lr=0.3)
    fast = W.copy()
    rules._margin_epoch(fast, Z.astype(np.float64), cues.astype(np.float64), 0.5, 0.3)
    np.testing.assert_allclose(fast, plain / np.sqrt(np.mean(plain * plain) * 11), rtol=1e-12, atol=1e-14)
    assert plain[0].any()  # the uncoupled unit was short, so it gained couplings
    zero = np.zeros((11, 11))
    np.testing.assert_array_equal(rules.plain_margin_epoch(zero, Z, cues, kappa=0.0, lr=0.3), zero)
    assert rules._margin_epoch(zero.copy(), Z.astype(np.float64), cues.astype(np.float64), 0.0, 0.3) == (0, 0)


@pytest.mark.parametrize("n, d, seed", [(40, 100, 0), (100, 200, 1), (30, 64, 2)])
def test_margin_invariants(n, d, seed):
    Z = random_patterns(n, d, seed=seed, bias=0.4)
    W, info = learn_margin(Z, MarginConfig(epochs=60))
    np.testing.assert_allclose(W, W.T, rtol=1e-5, atol=1e-7)
    assert not np.diag(W).any()
    S = stabilities(W, Z)
    assert S.min() == pytest.approx(info["kappa"], rel=1e-5)
    assert info["kappa"] >= info["target"] - 1e-6 > 0
    assert info["target"] <= 0.8 * gardner_kappa(n / d) + 1e-9
    assert HopfieldMemory.from_state(W, "margin", n, Z).stable(Z).all()


def test_margin_keeps_a_given_kappa_and_lowers_one_out_of_reach():
    Z = random_patterns(64, 128, seed=3)
    W, info = learn_margin(Z, MarginConfig(kappa=0.5, noise=0.0, epochs=0))
    assert info["target"] == 0.5 and stabilities(W, Z).min() >= 0.5
    W, info = learn_margin(Z, MarginConfig(kappa=5.0, noise=0.0, epochs=0))  # beyond Gardner's 1.0
    assert info["target"] <= gardner_kappa(0.5) and stabilities(W, Z).min() >= info["target"] > 0.3


def test_margin_memory_learns_lazily_and_holds_its_patterns(tmp_path):
    Z = random_patterns(50, 96, seed=4)
    mem = HopfieldMemory(96, "margin", margin=MarginConfig(epochs=50))
    mem.store(Z[:20]).store(Z[20])
    assert mem.n_stored == 21 and mem._stale  # nothing learned yet
    np.testing.assert_array_equal(mem.patterns, Z[:21])
    assert mem.stable(Z[:21]).all() and not mem._stale and mem.learned["kappa"] > 0
    mem.store(Z[21:])
    W = mem.weights.copy()  # relearned from all 50, from the same start as a fresh memory
    fresh = HopfieldMemory(96, "margin", margin=MarginConfig(epochs=50)).store(Z)
    np.testing.assert_array_equal(W, fresh.weights)
    A.save_memory(tmp_path / "m.h5", mem)
    back = A.load_memory(tmp_path / "m.h5")
    np.testing.assert_array_equal(back.weights, W)
    np.testing.assert_array_equal(back.patterns, Z)
    assert back.margin == MarginConfig(epochs=50) and back.learned == mem.learned
    back.store(Z[0])  # it can still grow
    assert back.n_stored == 51 and back.stable(Z).all()
    assert HopfieldMemory(8, "storkey").patterns is None


def test_margin_errors(tmp_path):
    with pytest.raises(ValueError, match="patterns: a margin memory needs the patterns it holds"):
        HopfieldMemory.from_state(np.zeros((4, 4)), "margin", 0)
    with pytest.raises(ValueError, match=r"patterns: expected 3 \(n_stored\), got 2"):
        HopfieldMemory.from_state(np.zeros((4, 4)), "margin", 3, random_patterns(2, 4))
    with pytest.raises(ValueError, match="patterns: only a margin memory holds its patterns"):
        HopfieldMemory.from_state(np.zeros((4, 4)), "storkey", 2, random_patterns(2, 4))
    with pytest.raises(ValueError, match="margin: expected a MarginConfig"):
        HopfieldMemory(4, "margin", margin={"kappa": 1})
    for kw, match in [({"kappa": -1}, "kappa: expected None"), ({"noise": 0.5}, r"noise: expected a fraction in \[0, 0.5\)"),
                      ({"epochs": -1}, "epochs: expected an integer >= 0"), ({"lr": 0}, "lr: expected a positive")]:
        with pytest.raises(ValueError, match=match):
            MarginConfig(**kw)
    with pytest.raises(ValueError, match=r"rule: expected an incremental rule \(hebbian, storkey-paper, storkey, "
                                         r"projection, projection-zd\), got 'margin'"):
        rules.plain_update("margin", np.zeros((4, 4)), np.ones(4))
    assert MarginConfig(kappa=0.0).kappa == 0.0  # a zero margin is a margin (fixed points only)
    # a margin memory whose patterns were removed from the file is refused by name
    mem = HopfieldMemory(16, "margin").store(random_patterns(3, 16))
    A.save_memory(tmp_path / "m.h5", mem)
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        del f["memory/memory/patterns"]
    with pytest.raises(A.ArchiveError, match="/memory/memory/patterns is not listed|without its patterns|missing"):
        A.load_memory(tmp_path / "m.h5")


def test_version_1_memories_still_load(tmp_path, monkeypatch):
    """Archives written before margin memories (hopfield-memory version 1) read unchanged."""
    monkeypatch.setitem(A._WRITE_VERSION, "hopfield-memory", "1")
    mem = HopfieldMemory(32, "storkey").store(random_patterns(5, 32))
    A.save_memory(tmp_path / "v1.h5", mem)
    with h5py.File(tmp_path / "v1.h5") as f:
        assert f["memory/memory"].attrs["encoding-version"] == b"1"
    monkeypatch.undo()
    back = A.load_memory(tmp_path / "v1.h5")
    np.testing.assert_array_equal(back.weights, mem.weights)


# ---- annealed recall ------------------------------------------------------------------------
def test_annealed_recall_ends_at_fixed_points_and_keeps_clamped_bits():
    Z = random_patterns(20, 128, seed=5)
    mem = HopfieldMemory(128, "projection-zd").store(Z)
    clamp = np.zeros(128, bool)
    clamp[:30] = True
    cues = random_patterns(6, 128, seed=6)
    out = mem.recall(cues, mode="anneal", clamp=clamp, seed=1)
    np.testing.assert_array_equal(out[:, :30], cues[:, :30])
    free = ~clamp
    field = out.astype(np.float64) @ mem.couplings.T
    assert ((np.where(field >= 0, 1, -1) == out)[:, free]).all()  # no free unit wants to flip


def test_annealing_recalls_from_cues_asynchronous_recall_misses():
    """Biased patterns (42% on, like trained masks) at load 0.15, cues 35% away: the soft
    annealed states reach far more patterns than hard asynchronous updates."""
    Z = random_patterns(77, 512, seed=7, bias=0.42)
    mem = HopfieldMemory(512, "projection-zd").store(Z)
    hard, soft = recalled(mem, Z, 0.35, "async"), recalled(mem, Z, 0.35, "anneal")
    assert soft >= 0.95 and soft > hard + 0.2


def test_anneal_matches_its_definition():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 12))
    W = (W + W.T) / 2
    S = random_patterns(3, 12, seed=8)
    betas = [0.5, 1.0, 2.0]
    X = S.astype(np.float64)
    for b in betas:
        H = X @ W
        X = np.tanh(b * H / np.sqrt((H ** 2).mean(axis=1, keepdims=True)))
    np.testing.assert_array_equal(dynamics.anneal(W, S, np.zeros(12, bool), betas), np.where(X >= 0, 1, -1))


# ---- experiments and commands --------------------------------------------------------------
def test_basins_measures_every_rule_on_the_same_cues():
    cfg = BasinsConfig(dim=128, rules=("hebbian", "projection-zd", "margin"), loads=(0.05, 0.3), noises=(0.05, 0.2))
    res = measure_basins(cfg)
    pts = {(p["rule"], p["patterns"]): p for p in res["points"]}
    assert set(pts) == {(r, n) for r in cfg.rules for n in (6, 38)}
    # hebbian holds 38 of 128 neither as fixed points nor by recall; the basin rules do
    assert pts["hebbian", 38]["stable_fraction"] < 0.5 and pts["hebbian", 38]["recalled"][0.05] < 0.5
    for rule in ("projection-zd", "margin"):
        assert pts[rule, 38]["stable_fraction"] == 1.0 and pts[rule, 38]["recalled"][0.05] == 1.0
    for p in res["points"]:  # a cue can only come back to a pattern that is a fixed point
        assert all(v <= p["stable_fraction"] + 1e-12 for v in p["recalled"].values())
    with pytest.raises(ValueError, match="rules: expected some of"):
        BasinsConfig(rules=("oja",))
    with pytest.raises(ValueError, match="loads: expected loads n/d > 0"):
        BasinsConfig(dim=16, loads=(0.01,))


def test_basins_command(tmp_path):
    import matplotlib.image

    plot = tmp_path / "b.png"
    r = CliRunner().invoke(app, ["basins", "--dim", "64", "--rules", "storkey,margin", "--loads", "0.1,0.2",
                                 "--noise", "0.1", "--json", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert [(p["rule"], p["patterns"]) for p in res["points"]] == [("storkey", 6), ("storkey", 13),
                                                                    ("margin", 6), ("margin", 13)]
    assert matplotlib.image.imread(plot).shape[:2] == (456, 504)
    r = CliRunner().invoke(app, ["basins", "--rules", "storkey,oja"])
    assert r.exit_code == 2 and "expected 'all' or rules from" in r.output


@pytest.mark.slow
def test_margin_capacity_at_d512_holds_256_and_gives_them_back():
    """`supsup-hf capacity --dim 512 --rule margin --max-patterns 256 --step 128 --noise 0.1`."""
    res = measure_capacity(CapacityConfig(dim=512, rule="margin", max_patterns=256, step=128, noise=0.1))
    assert [p["patterns"] for p in res.points] == [128, 256]
    assert all(p["stable_fraction"] == 1.0 for p in res.points)
    assert min(p["recall_exact_fraction"] for p in res.points) >= 0.9


def test_anneal_treats_each_cue_on_its_own():
    """The field is normalised per cue, so annealing a batch gives what annealing each cue alone
    gives (a batch-wide normalisation changes some of these 40 cues' results)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 12))
    W = (W + W.T) / 2
    S = random_patterns(40, 12, seed=9)
    free = np.zeros(12, bool)
    batch = dynamics.anneal(W, S, free)
    for i in range(len(S)):
        np.testing.assert_array_equal(batch[i], dynamics.anneal(W, S[i:i + 1], free)[0])
