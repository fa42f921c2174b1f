"""The keyed memory (keyed.py) against its plain definitions, its capacity, its precision and its
archive encoding."""
import numpy as np
import pytest

from supsup_hopfield.archive import Archive, read_archive, read_header, write_archive
from supsup_hopfield.errors import ArchiveError, UserError
from supsup_hopfield.keyed import KeyedMemory, keys_for, make_keys, plain_key, plain_store, quantize
from supsup_hopfield.memory import HopfieldMemory


def pm(rng, n, d, p=0.5):
    return np.where(rng.random((n, d)) < p, 1, -1).astype(np.int8)


def near(rng, starts, overlap):
    """Patterns whose overlap with their starts is `overlap` on average: each bit kept with
    probability (1 + overlap)/2, else drawn afresh (a trained mask against its seeded start)."""
    keep = rng.random(starts.shape) < overlap
    return np.where(keep, starts, pm(rng, *starts.shape)).astype(np.int8)


def test_keys_are_the_definition_orthogonal_and_seeded():
    for K in (2, 8, 64):
        keys = make_keys(np.arange(K), K, seed=3)
        assert all((keys[j] == plain_key(j, K, 3)).all() for j in range(K))
        np.testing.assert_array_equal(keys.astype(int) @ keys.T.astype(int), K * np.eye(K, dtype=int))
    a, b = make_keys(np.arange(16), 64, 0), make_keys(np.arange(16), 64, 1)
    assert not (a == b).all()  # the seed picks them
    np.testing.assert_array_equal(make_keys([5, 2], 64, 0), a[[5, 2]])  # a task's key does not depend on the others
    assert abs(a.mean()) < 0.1  # they look like random ±1 vectors, not Hadamard rows


def test_store_equals_the_plain_outer_products_whatever_the_grouping():
    rng = np.random.default_rng(0)
    Z = pm(rng, 40, 30)
    want = plain_store(Z, 64, seed=7)
    one = KeyedMemory(30, 64, seed=7)
    for z in Z:  # per-pattern kernel
        one.store(z)
    groups = KeyedMemory(30, 64, seed=7).store(Z[:3]).store(Z[3:17]).store(Z[17:])  # kernel and GEMM
    whole = KeyedMemory(30, 64, seed=7).store(Z)
    for mem in (one, groups, whole):
        np.testing.assert_array_equal(mem.weights, want)  # integers: bit for bit
        assert mem.n_stored == 40 and mem.weights.dtype == np.int16
    np.testing.assert_array_equal(whole.recall(), Z)
    np.testing.assert_array_equal(whole.recall([39, 0]), Z[[39, 0]])


def test_every_pattern_comes_back_at_load_0_6_where_a_seeded_cue_fails():
    # random patterns that overlap their seeded starts by 0.1 (the main job's 1000-step masks: 0.12)
    rng = np.random.default_rng(1)
    d, n = 512, 312  # load 0.61
    starts = pm(rng, n, d)
    Z = near(rng, starts, 0.1)
    assert 0.05 < np.mean(starts == Z) * 2 - 1 < 0.15
    mem = KeyedMemory(d, keys_for(n), seed=0).store(Z)
    assert mem.keys == 512
    np.testing.assert_array_equal(mem.recall(), Z)
    assert mem.stable(Z).all() and not mem.stable(-Z).any()
    # an attractor memory over the same masks, cued by the seeded starts, gives none of them back
    zd = HopfieldMemory(d, "projection-zd").store(Z)
    assert zd.stable(Z).all()  # every mask a fixed point ...
    back = zd.recall(starts, mode="anneal", seed=0)
    assert (back == Z).all(axis=1).sum() == 0  # ... but out of reach of its cue


def test_capacity_is_the_keys_any_masks_at_all():
    rng = np.random.default_rng(2)
    same = np.tile(pm(rng, 1, 20), (16, 1))  # identical masks: no attractor rule tells them apart by task
    biased = pm(rng, 16, 20, p=0.9)
    for Z in (same, biased):
        np.testing.assert_array_equal(KeyedMemory(20, 16).store(Z).recall(), Z)
    full = KeyedMemory(20, 16).store(biased)
    with pytest.raises(UserError, match=r"memory: full \(16 of 16 keys used\), cannot store 1 more; .*`keys=32`"):
        full.store(biased[0])
    assert [keys_for(n) for n in (0, 1, 2, 3, 2500, 4096, 4097)] == [2, 2, 2, 4, 4096, 4096, 8192]


def test_energy_is_lowest_at_the_stored_mask():
    rng = np.random.default_rng(3)
    Z = pm(rng, 5, 32)
    mem = KeyedMemory(32, 8).store(Z)
    assert mem.energy(Z[2], 2) == -32
    flipped = Z[2].copy()
    flipped[:3] *= -1
    assert mem.energy(flipped, 2) == -32 + 2 * 3
    assert mem.energy(Z[2] > 0, 2) == -32  # a 0/1 mask is the same state


def test_precision_rounded_weights_keep_every_mask_while_the_noise_stays_small():
    rng = np.random.default_rng(4)
    d, K = 256, 256
    Z = pm(rng, 156, d)  # load 0.61
    mem = KeyedMemory(d, K).store(Z)
    for bits in (8, 6, 4):  # std of the decoding error ~ 4.5 sqrt(n) / ((2^(b-1) - 1) sqrt(12 K)) << 1
        np.testing.assert_array_equal(mem.recall(weights=quantize(mem.weights, bits)), Z)
    assert (mem.recall(weights=quantize(mem.weights, 2)) != Z).any()  # 2 bits is too few
    np.testing.assert_array_equal(quantize(np.array([[0, 6, -14, 7], [0, 0, 0, 0]]), 4),
                                  [[0, 6, -14, 8], [0, 0, 0, 0]])  # scale 14/7 = 2; 3.5 rounds to 4; zeros kept
    np.testing.assert_allclose(quantize(np.array([[1, 2, 7]]), 3), [[0, 7 / 3, 7]])  # scale 7/3
    with pytest.raises(UserError, match="bits: expected an integer from 2 to 16"):
        quantize(mem.weights, 1)


@pytest.mark.parametrize("args, says", [
    ((10, 100), "keys: expected a power of two from 2 to 1048576"),
    ((10, 1), "keys: expected a power of two"),
    ((10, True), "keys: expected a power of two"),
    ((0, 8), "dim: expected an integer >= 1"),
    ((10, 8, -1), "seed: expected an integer >= 0"),
])
def test_bad_memories_are_refused(args, says):
    with pytest.raises(UserError, match=says):
        KeyedMemory(*args)


def test_bad_inputs_are_refused():
    mem = KeyedMemory(10, 8).store(np.ones((3, 10)))
    with pytest.raises(UserError, match="patterns: expected length 10, got 9"):
        mem.store(np.ones(9))
    with pytest.raises(UserError, match=r"tasks: expected indices in 0..2 \(the 3 stored masks\), got 0..3"):
        mem.recall([0, 3])
    with pytest.raises(UserError, match="patterns: 4 given, but the memory holds 3"):
        mem.stable(np.ones((4, 10)))
    with pytest.raises(UserError, match="weights: entries up to 3 cannot come from 2 masks"):
        KeyedMemory.from_state(mem.weights, 2, 0)
    with pytest.raises(UserError, match="weights: expected a 2-D integer matrix"):
        KeyedMemory.from_state(np.zeros((10, 8)), 0, 0)


def test_archive_round_trip_header_and_damage(tmp_path):
    rng = np.random.default_rng(5)
    Z = pm(rng, 6, 24)
    mem = KeyedMemory(24, 8, seed=11).store(Z)
    path = tmp_path / "k.h5"
    write_archive(path, Archive(memories={"joint": mem}))
    back = read_archive(path).memories["joint"]
    assert (back.rule, back.dim, back.keys, back.seed, back.n_stored) == ("keyed", 24, 8, 11, 6)
    np.testing.assert_array_equal(back.weights, mem.weights)
    np.testing.assert_array_equal(back.recall(), Z)  # the keys come back from key-seed
    info = read_header(path).memories["joint"]
    assert (info.rule, info.dim, info.n_stored, info.dtype, info.keys) == ("keyed", 24, 6, "int16", 8)
    import h5py

    with h5py.File(path, "r+") as f:  # one flipped entry of W
        w = f["memory/joint/weights"]
        w[0, 0] = w[0, 0] + 2
    with pytest.raises(ArchiveError, match="checksum mismatch in the data of /memory/joint/weights"):
        read_archive(path)
