"""HopfieldMemory: known answer, every path against the plain definition, recall, capacity, errors."""
import numpy as np
import pytest

from supsup_hopfield import dynamics, rules
from supsup_hopfield.memory import HopfieldMemory, check_patterns

RULES = rules.RULES
INCREMENTAL = [r for r in RULES if r != "margin"]  # margin learns from all its patterns at once


def random_patterns(n, d, seed=0, bias=0.5):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, d)) < bias, 1, -1).astype(np.int8)


def reference_weights(rule, Z, dtype=np.float64):
    W = np.zeros((Z.shape[1],) * 2, dtype)
    for z in Z.astype(dtype):
        W = rules.plain_update(rule, W, z)
    return W


def literal_storkey(Z):
    """Storkey (1997) with explicit loops over i, j, k: the definition, letter by letter."""
    d = Z.shape[1]
    W = np.zeros((d, d))
    for z in Z:
        h = np.zeros((d, d))
        for i in range(d):
            for j in range(d):
                h[i, j] = sum(W[i, k] * z[k] for k in range(d) if k != i and k != j)
        W = W + (np.outer(z, z) - z[:, None] * h.T - h * z[None, :]) / d
    return W


def literal_storkey_paper(Z):
    """The paper's simplified rule, entry by entry: h_i = Σ_k w_ik z_k, then
    w_ij += (z_i z_j − δ_ij − z_i h_j − h_i z_j)/d."""
    d = Z.shape[1]
    W = np.zeros((d, d))
    for z in Z:
        h = [sum(W[i, k] * z[k] for k in range(d)) for i in range(d)]
        new = W.copy()
        for i in range(d):
            for j in range(d):
                new[i, j] += (z[i] * z[j] - (1.0 if i == j else 0.0) - z[i] * h[j] - h[i] * z[j]) / d
        W = new
    return W


def rel_err(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


def test_storkey_known_answer():
    P = [[1, 1, -1, -1], [1, 1, -1, 1], [-1, 1, -1, 1]]
    expected = [[1.125, .25, -.25, -.5], [.25, .625, -1, .25],
                [-.25, -1, .625, -.25], [-.5, .25, -.25, 1.125]]
    for dtype in ("float32", "float64"):
        one_call = HopfieldMemory(4, "storkey", dtype).store(P).weights
        np.testing.assert_allclose(one_call, expected, atol=1e-6)
        one_by_one = HopfieldMemory(4, "storkey", dtype)
        for p in P:
            one_by_one.store(p)
        np.testing.assert_allclose(one_by_one.weights, expected, atol=1e-6)


def test_plain_storkey_matches_its_letter_by_letter_definition():
    Z = random_patterns(5, 7, seed=3)
    np.testing.assert_allclose(reference_weights("storkey", Z), literal_storkey(Z), atol=1e-12)


def test_storkey_paper_matches_its_entry_by_entry_definition():
    Z = random_patterns(6, 9, seed=4)
    ref = literal_storkey_paper(Z)
    np.testing.assert_allclose(reference_weights("storkey-paper", Z), ref, atol=1e-12)
    np.testing.assert_allclose(HopfieldMemory(9, "storkey-paper", "float64").store(Z).weights, ref, atol=1e-12)


@pytest.mark.parametrize("rule", ["projection", "projection-zd"])
def test_projection_with_dependent_patterns_in_one_blocked_call(rule):
    """Duplicates, complements and more patterns than dimensions, all in one call: each pattern
    already in the span changes nothing, exactly as the per-pattern definition skips it."""
    d = 24
    Z = random_patterns(40, d, seed=5)
    Z[7] = Z[2]
    Z[11] = -Z[3]
    Z[12] = Z[0]
    ref = reference_weights("projection", Z)
    mem = HopfieldMemory(d, rule, "float64").store(Z)  # 40 >= the blocking threshold: one blocked call
    assert rel_err(mem.weights, ref) < 1e-10
    np.testing.assert_allclose(mem.weights, np.eye(d), atol=1e-9)  # 40 > d patterns span everything
    W = np.zeros((d, d))
    assert rules.store_blocked("projection", W, Z.astype(np.float64), block=16, inner=3) == d
    assert rel_err(W, ref) < 1e-10
    few = Z[:14]  # rank 11: patterns 7, 11, 12 repeat earlier ones
    W = np.zeros((d, d))
    assert rules.store_blocked("projection", W, few.astype(np.float64)) == 11
    assert rel_err(W, reference_weights("projection", few)) < 1e-10
    assert np.linalg.matrix_rank(W) == 11


def test_hebbian_is_the_sum_of_outer_products():
    Z = random_patterns(30, 50)
    W = HopfieldMemory(50, "hebbian", "float64").store(Z).weights
    np.testing.assert_allclose(W, (Z.T.astype(float) @ Z - 30 * np.eye(50)) / 50, atol=1e-12)


def test_projection_is_the_orthogonal_projector_onto_the_patterns():
    Z = random_patterns(20, 40).astype(float)
    W = HopfieldMemory(40, "projection", "float64").store(Z).weights
    np.testing.assert_allclose(W, Z.T @ np.linalg.pinv(Z.T), atol=1e-10)
    np.testing.assert_allclose(W @ Z.T, Z.T, atol=1e-10)


@pytest.mark.parametrize("rule", INCREMENTAL)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_every_path_matches_the_plain_rule(rule, dtype, tol):
    """One call (blocked, with a block and runs that do not divide n), one by one (Numba
    kernel), and mixed calls all give the plain per-pattern weights."""
    d = 160
    n = {"hebbian": 300, "storkey-paper": 60, "storkey": 90, "projection": 150, "projection-zd": 150}[rule]
    Z = random_patterns(n, d, seed=1)
    ref = reference_weights(rule, Z)

    one_call = HopfieldMemory(d, rule, dtype).store(Z)
    assert rel_err(one_call.weights, ref) < tol

    W = np.zeros((d, d), dtype)  # blocked with small, uneven blocks and runs
    rules.store_blocked(rule, W, Z.astype(dtype), block=37, inner=5)
    assert rel_err(W, ref) < tol

    one_by_one = HopfieldMemory(d, rule, dtype)
    for z in Z:
        one_by_one.store(z)
    assert rel_err(one_by_one.weights, ref) < tol

    mixed = HopfieldMemory(d, rule, dtype)
    for a, b in [(0, 3), (3, 40), (40, 41), (41, n)]:
        mixed.store(Z[a:b])
    assert rel_err(mixed.weights, ref) < tol
    assert one_call.n_stored == one_by_one.n_stored == mixed.n_stored == n


def test_biased_and_boolean_patterns():
    Z = random_patterns(40, 64, seed=2, bias=0.8)
    masks = Z > 0
    a = HopfieldMemory(64, "storkey", "float64").store(masks)
    b = HopfieldMemory(64, "storkey", "float64").store(masks.astype(np.uint8))
    np.testing.assert_allclose(a.weights, reference_weights("storkey", Z), atol=1e-12)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_projection_skips_a_pattern_already_in_the_span():
    Z = random_patterns(10, 32)
    mem = HopfieldMemory(32, "projection", "float64").store(Z)
    before = mem.weights.copy()
    mem.store(Z[4])
    np.testing.assert_allclose(mem.weights, before, atol=1e-12)
    assert mem.n_stored == 11


# ---- capacity (docs/METHOD.md §1 table, d = 512) ----------------
@pytest.mark.parametrize("rule,n", [("hebbian", 20), ("storkey-paper", 100), ("storkey", 170),
                                    ("projection", 460)])
def test_capacity_at_d512(rule, n):
    for seed in range(3):
        Z = random_patterns(n, 512, seed=seed)
        mem = HopfieldMemory(512, rule).store(Z)
        assert mem.stable(Z).all(), f"seed {seed}"


def test_hebbian_breaks_well_before_storkey():
    Z = random_patterns(120, 512, seed=0)
    assert not HopfieldMemory(512, "hebbian").store(Z).stable(Z).all()
    assert HopfieldMemory(512, "storkey").store(Z).stable(Z).all()


# ---- energy, stability, recall --------------------------------------------------------------
def test_energy_and_stable_against_definitions():
    Z = random_patterns(30, 100, seed=4)
    mem = HopfieldMemory(100, "storkey", "float64").store(Z[:20])
    W = mem.weights
    S = random_patterns(7, 100, seed=5)
    np.testing.assert_allclose(mem.energy(S), [-0.5 * s @ W @ s for s in S.astype(float)])
    assert mem.energy(S[0]) == pytest.approx(-0.5 * S[0] @ W @ S[0])
    expected = [(np.where(W @ s >= 0, 1, -1) == s).all() for s in Z.astype(float)]
    np.testing.assert_array_equal(mem.stable(Z), expected)
    assert mem.stable(Z[:20]).all() and not mem.stable(Z[20:]).any()


def test_sign_of_zero_is_plus_one():
    mem = HopfieldMemory(4, "hebbian")  # all-zero weights: every field is 0
    assert mem.stable([1, 1, 1, 1]) and not mem.stable([1, -1, 1, 1])
    np.testing.assert_array_equal(mem.recall([-1, 1, -1, 1]), [1, 1, 1, 1])


@pytest.mark.parametrize("rule", RULES)
def test_async_kernel_matches_plain_loop(rule):
    d = 120
    Z = random_patterns(25, d, seed=6)
    mem = HopfieldMemory(d, rule).store(Z)
    cues = random_patterns(6, d, seed=7)  # far from everything: many flips, several sweeps
    clamp = np.zeros(d, bool)
    clamp[::7] = True
    for with_clamp in (False, True):
        cl = clamp if with_clamp else np.zeros(d, bool)
        out, sweeps = mem.recall(cues, mode="async", clamp=cl, seed=11, return_sweeps=True)
        rng = np.random.default_rng(11)
        for c in range(len(cues)):
            ref, ref_sweeps = dynamics.plain_async(mem.couplings, cues[c], cl, 100, rng)
            np.testing.assert_array_equal(out[c], ref)
            assert sweeps[c] == ref_sweeps


def test_async_ties_and_sweep_limits():
    """sign(0) = +1: with all couplings zero every free unit goes to +1 in one sweep and the
    second sweep finds nothing to change. J = -I flips every unit at every visit, so recall never
    settles and stops after exactly max_sweeps (5, not a multiple of the 4 sweeps drawn at a time)."""
    d = 9
    cue = -np.ones((1, d), np.int8)
    W = np.zeros((d, d), np.float32)
    out = cue.copy()
    sweeps = dynamics.recall_async(W, out, np.zeros(d, bool), 10, np.random.default_rng(0))
    ref, ref_sweeps = dynamics.plain_async(W, cue[0], np.zeros(d, bool), 10, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], np.ones(d))
    np.testing.assert_array_equal(ref, np.ones(d))
    assert sweeps[0] == ref_sweeps == 2
    W = -np.eye(d, dtype=np.float32)
    out = cue.copy()
    sweeps = dynamics.recall_async(W, out, np.zeros(d, bool), 5, np.random.default_rng(0))
    ref, ref_sweeps = dynamics.plain_async(W, cue[0], np.zeros(d, bool), 5, np.random.default_rng(0))
    assert sweeps[0] == ref_sweeps == 5
    np.testing.assert_array_equal(out[0], -cue[0])  # an odd number of flips
    np.testing.assert_array_equal(ref, -cue[0])


def test_sync_recall_against_definition():
    d = 80
    Z = random_patterns(8, d, seed=8)
    mem = HopfieldMemory(d, "storkey", "float64").store(Z)
    cue = random_patterns(1, d, seed=9)[0]
    s = cue.astype(float)
    for _ in range(100):
        new = np.where(mem.weights @ s >= 0, 1.0, -1.0)
        if (new == s).all():
            break
        s = new
    sweeps_ref = _ + 1  # the sweep that changed nothing counts
    out, sweeps = mem.recall(np.stack([cue, Z[0]]), mode="sync", return_sweeps=True)
    np.testing.assert_array_equal(out[0], s)
    np.testing.assert_array_equal(out[1], Z[0])
    assert sweeps.dtype.kind == "i" and sweeps.tolist() == [sweeps_ref, 1]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_recall_from_noisy_cue(mode):
    d = 256
    Z = random_patterns(20, d, seed=10)
    mem = HopfieldMemory(d, "storkey").store(Z)
    rng = np.random.default_rng(0)
    cues = Z.copy()
    for c in cues:
        c[rng.choice(d, 25, replace=False)] *= -1
    out = mem.recall(cues, mode=mode, seed=1)
    assert out.dtype == np.int8 and out.shape == Z.shape
    np.testing.assert_array_equal(out, Z)


def test_clamped_recall_from_a_partial_cue():
    """Half the bits given and clamped, the other half random: the pattern is completed,
    and the clamped half never changes, even from a wrong cue."""
    d = 200
    Z = random_patterns(30, d, seed=12)
    mem = HopfieldMemory(d, "storkey").store(Z)
    clamp = np.zeros(d, bool)
    clamp[:100] = True
    rng = np.random.default_rng(1)
    cues = Z.copy()
    cues[:, 100:] = rng.choice([-1, 1], size=(30, 100))
    for mode in ("sync", "async"):
        np.testing.assert_array_equal(mem.recall(cues, mode=mode, clamp=clamp, seed=2), Z)
    wrong = random_patterns(1, d, seed=13)[0]
    out = mem.recall(wrong, mode="async", clamp=clamp, seed=3)
    np.testing.assert_array_equal(out[:100], wrong[:100])


def test_recall_stops_at_max_sweeps():
    mem = HopfieldMemory(2, "storkey-paper", "float64")
    mem._W[:] = [[0.0, -1.0], [-1.0, 0.0]]  # sync dynamics flip-flop forever
    out, sweeps = mem.recall([1, 1], mode="sync", max_sweeps=5, return_sweeps=True)
    assert sweeps == 5


def test_from_state_round_trip():
    Z = random_patterns(10, 32)
    mem = HopfieldMemory(32, "projection").store(Z)
    back = HopfieldMemory.from_state(mem.weights, "projection", mem.n_stored)
    np.testing.assert_array_equal(back.weights, mem.weights)
    assert (back.rule, back.dtype, back.n_stored) == ("projection", np.float32, 10)


def test_weights_are_read_only():
    mem = HopfieldMemory(8)
    with pytest.raises(ValueError):
        mem.weights[0, 0] = 1.0


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"dim": 1}, "dim: expected an integer >= 2, got 1"),
    ({"dim": 2.5}, "dim: expected an integer"),
    ({"dim": 8, "rule": "oja"}, "rule: expected one of hebbian, storkey-paper, storkey, projection, "
                                "projection-zd, margin, got 'oja'"),
    ({"dim": 8, "dtype": "float16"}, "dtype: expected 'float32' or 'float64'"),
    ({"dim": 8, "dtype": "int32"}, "dtype: expected"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HopfieldMemory(**kwargs)


@pytest.mark.parametrize("patterns,match", [
    (np.ones(2047), "patterns: expected length 2048, got 2047"),
    (np.ones((3, 2049)), "patterns: expected length 2048, got 2049"),
    (np.full(2048, 2.0), "patterns: expected only ±1 values or a 0/1 mask, found 2.0"),
    (np.r_[np.ones(2047), np.nan], "patterns: contains NaN"),
    (np.r_[np.ones(2046), 0, -1], "patterns: expected only ±1 values or a 0/1 mask"),
    (np.ones((2, 2, 2048)), r"patterns: expected shape \(2048,\) or \(n, 2048\)"),
    (np.array(["a"] * 2048), "patterns: expected a numeric or boolean array"),
])
def test_bad_patterns(patterns, match):
    mem = HopfieldMemory(2048)
    with pytest.raises(ValueError, match=match):
        mem.store(patterns)
    assert mem.n_stored == 0 and not mem.weights.any()


def test_bad_recall_arguments():
    mem = HopfieldMemory(16).store(random_patterns(2, 16))
    with pytest.raises(ValueError, match="mode: expected one of sync, async, anneal, got 'fast'"):
        mem.recall(np.ones(16), mode="fast")
    with pytest.raises(ValueError, match=r"clamp: expected a boolean array of shape \(16,\)"):
        mem.recall(np.ones(16), clamp=np.ones(15, bool))
    with pytest.raises(ValueError, match="max_sweeps: expected an integer >= 1"):
        mem.recall(np.ones(16), max_sweeps=0)
    with pytest.raises(ValueError, match="cues: expected length 16, got 3"):
        mem.recall(np.ones(3))


def test_check_patterns_conversions():
    Z, single = check_patterns([True, False, True], 3)
    assert single and Z.tolist() == [[1, -1, 1]]
    Z, single = check_patterns([[0, 1, 1], [1, 1, 1]], 3)
    assert not single and Z.tolist() == [[-1, 1, 1], [1, 1, 1]]
    Z, _ = check_patterns(np.array([-1.0, 1.0, 1.0]), 3)
    assert Z.dtype == np.int8 and Z.tolist() == [[-1, 1, 1]]


def test_block_edges():
    from supsup_hopfield.memory import block_edges

    assert block_edges(10, 4) == [0, 4, 8, 10]
    assert block_edges(9, 4) == [0, 4, 9]  # a 1-entry remainder joins the block before it
    assert block_edges(8, 8) == [0, 8]
    assert block_edges(5, 100) == [0, 5]
