"""The storage report: synthetic masks, acceptance numbers per format, Hopfield accounting, CLI."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from supsup_hopfield.cli.main import app as cli_app
from supsup_hopfield.compression.codecs import entropy_bits
from supsup_hopfield.compression.report import format_table, plot_storage, storage_report, synthetic_masks

EXPLICIT = ["csc16", "bitpack", "entropy"]
ROW_KEYS = {"name", "total_bytes", "bytes_per_task", "bits_per_entry", "ratio_to_entropy", "exact_fraction",
            "encode_mb_s", "decode_mb_s"}


def _rows(report):
    return {r["name"]: r for r in report["formats"]}


def test_synthetic_masks_density_flips_and_seed():
    masks, bases = synthetic_masks(4, (30, 50), 0.2, seed=1)
    assert masks.shape == (4, 30, 50) and masks.dtype == bool and bases is None
    assert abs(masks.mean() - 0.2) < 0.02
    masks, bases = synthetic_masks(4, (30, 50), 0.5, flips=0.13, seed=1)
    assert bases.shape == masks.shape
    assert ((masks ^ bases).reshape(4, -1).sum(axis=1) == round(0.13 * 1500)).all()
    again, _ = synthetic_masks(4, (30, 50), 0.5, flips=0.13, seed=1)
    assert np.array_equal(masks, again)
    assert not np.array_equal(masks, synthetic_masks(4, (30, 50), 0.5, flips=0.13, seed=2)[0])
    assert not synthetic_masks(2, (5,), 0.0)[0].any() and synthetic_masks(2, (5,), 1.0)[0].all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(tasks=0), "tasks: expected an integer >= 1, got 0"),
    (dict(density=1.5), r"density: expected a fraction in \[0, 1\], got 1.5"),
    (dict(flips=-0.1), r"flips: expected a fraction in \[0, 1\], got -0.1"),
    (dict(shape=(3, -1)), "shape: expected a tuple of non-negative integers"),
])
def test_synthetic_masks_rejects_bad_input(kwargs, match):
    args = dict(tasks=2, shape=(3, 4), density=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        synthetic_masks(**args)


@pytest.mark.parametrize("p", [0.01, 0.05, 0.5])
def test_acceptance_numbers_on_300_by_784(p):
    masks, _ = synthetic_masks(20, (300, 784), p, seed=3)
    report = storage_report(masks, formats=EXPLICIT)
    n, cols = 300 * 784, 784
    rows = _rows(report)
    assert report["tasks"] == 20 and report["entries_per_mask"] == n
    h = report["entropy_bits_per_entry"]
    assert h == pytest.approx(entropy_bits(masks.mean()))
    csc_formula = 16 * masks.mean() + 32 * (cols + 1) / n
    assert rows["csc16"]["bits_per_entry"] == pytest.approx(csc_formula, rel=0.10)
    assert rows["bitpack"]["bits_per_entry"] == pytest.approx(1.0, rel=1e-3)
    assert rows["entropy"]["bits_per_entry"] <= 1.02 * h + 8 * 64 / n
    for r in rows.values():
        assert r["exact_fraction"] == 1.0 and r["encode_mb_s"] > 0 and r["decode_mb_s"] > 0
        assert r["ratio_to_entropy"] == pytest.approx(r["bits_per_entry"] / h)


def test_delta_acceptance_with_13_percent_flips():
    masks, bases = synthetic_masks(20, (300, 784), 0.5, flips=0.13, seed=4)
    report = storage_report(masks, bases, formats=["bitpack", "delta"])
    assert _rows(report)["delta"]["bits_per_entry"] <= 1.02 * entropy_bits(0.13)
    assert report["flip_fraction"] == pytest.approx(0.13, abs=1e-4)
    assert _rows(report)["delta"]["exact_fraction"] == 1.0


def test_full_report_keys_and_hopfield_accounting():
    masks, bases = synthetic_masks(12, (10, 25), 0.5, flips=0.1, seed=5)
    report = storage_report(masks, bases, hopfield_dim=64, curve_points=4)
    assert {"tasks", "entries_per_mask", "entropy_bits_per_entry", "formats"} <= set(report)
    assert [r["name"] for r in report["formats"]] == ["csc16", "bitpack", "entropy", "delta", "hopfield",
                                                      "hopfield-float16", "hopfield-int8"]
    assert all(set(r) == ROW_KEYS for r in report["formats"])
    hop = _rows(report)["hopfield"]
    assert hop["total_bytes"] == 4 * (3 * 64 * 64 + 58 * 58)  # blocks 64, 64, 64, 58 in float32
    # the same memories at fewer bits: 2 bytes a weight; 1 byte a weight and a float32 scale per row
    assert _rows(report)["hopfield-float16"]["total_bytes"] == 2 * (3 * 64 * 64 + 58 * 58)
    assert _rows(report)["hopfield-int8"]["total_bytes"] == (3 * 64 * 64 + 58 * 58) + 4 * (3 * 64 + 58)
    keeps = report["hopfield"]["keeps_every_pattern"]
    assert keeps[0] == "float32" and set(keeps) <= {"float32", "float16", "int8"}
    assert all((name in keeps) == (_rows(report)[f"hopfield-{name}"]["exact_fraction"] == 1.0)
               for name in ("float16", "int8"))
    assert hop["exact_fraction"] == 1.0  # 12 patterns, projection rule, blocks of >= 58
    assert report["hopfield"]["blocks"] == 4
    assert report["hopfield"]["curve"]["tasks"] == [1, 5, 8, 12]
    json.dumps(report)
    table = format_table(report)
    assert len([line for line in table.splitlines() if re.match(r"^[a-z0-9]+ +[0-9,]+ ", line)]) == 5
    assert report["hopfield"]["random_probe_stable"] == 0.0


def test_hopfield_exact_fraction_drops_past_capacity_and_remainder_of_one_is_folded():
    masks, _ = synthetic_masks(40, (33,), 0.5, seed=6)
    report = storage_report(masks, hopfield_dim=16, hopfield_rule="storkey", formats=["hopfield"], curve_points=5)
    assert report["hopfield"]["blocks"] == 2  # 16 + 17, not 16 + 16 + 1
    assert _rows(report)["hopfield"]["total_bytes"] == 4 * (16 * 16 + 17 * 17)
    curve = report["hopfield"]["curve"]
    assert curve["tasks"] == [1, 11, 20, 30, 40]
    assert curve["exact_fraction"][0] == 1.0
    assert curve["exact_fraction"][-1] == _rows(report)["hopfield"]["exact_fraction"] < 1.0
    with pytest.raises(ValueError, match="hopfield_dim: expected an integer >= 2"):
        storage_report(masks, hopfield_dim=1, formats=["hopfield"])


def test_saturated_projection_memory_is_flagged_by_random_probes():
    # past dim independent patterns the projection rule's Ψ is the identity: everything is stable
    masks, _ = synthetic_masks(40, (16,), 0.5, seed=6)
    report = storage_report(masks, formats=["hopfield"], curve_points=2)
    assert _rows(report)["hopfield"]["exact_fraction"] == 1.0
    assert report["hopfield"]["curve"]["random_probe_stable"] == [0.0, 1.0]
    assert "saturated" in format_table(report)


def test_report_rejects_bad_bases_and_formats():
    masks, bases = synthetic_masks(3, (4, 5), 0.5, flips=0.2)
    with pytest.raises(ValueError, match=r"bases: expected shape \(3, 4, 5\)"):
        storage_report(masks, bases[:2])
    with pytest.raises(ValueError, match="'delta' needs bases"):
        storage_report(masks, formats=["delta"])
    with pytest.raises(ValueError, match="formats: expected names from"):
        storage_report(masks, bases, formats=["zip"])


def test_plot_storage_writes_a_png(tmp_path):
    masks, bases = synthetic_masks(6, (8, 16), 0.3, flips=0.1, seed=7)
    report = storage_report(masks, bases, hopfield_dim=32, curve_points=3)
    path = tmp_path / "storage.png"
    plot_storage(report, path)
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > img.shape[1] > 500 and img[..., :3].std() > 0.05  # two panels, one above the other


def _run(args):
    return CliRunner().invoke(cli_app, ["storage-report", *args])


def test_cli_json_and_table():
    result = _run(["--synthetic", "--tasks", "5", "--shape", "6,20", "--density", "0.3", "--flips", "0.1",
                   "--hopfield-dim", "40", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"tasks", "entries_per_mask", "entropy_bits_per_entry", "formats"} <= set(report)
    assert [r["name"] for r in report["formats"]] == ["csc16", "bitpack", "entropy", "delta", "hopfield",
                                                      "hopfield-float16", "hopfield-int8"]
    assert all(set(r) == ROW_KEYS for r in report["formats"])
    result = _run(["--synthetic", "--tasks", "3", "--shape", "4,5", "--density", "0.5"])
    assert result.exit_code == 0 and "bitpack" in result.output and "delta" not in result.output


@pytest.mark.parametrize("args, match", [
    (["--synthetic", "--shape", "300x784"], "expected R,C"),
    (["--synthetic", "--shape", "3,4,5"], "expected R,C"),
    (["--synthetic", "--density", "1.5"], "density"),
    (["--synthetic", "--tasks", "0"], "tasks"),
    (["--synthetic", "--flips", "-0.1"], "flips"),
    ([], "expected either --synthetic or an ARCHIVE path, got neither"),
])
def test_cli_bad_input_is_one_line_exit_2(args, match):
    result = _run(args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and match in lines[0]


def test_cli_reads_an_archive(tmp_path):
    from supsup_hopfield.archive import Archive, write_archive

    path = tmp_path / "run.h5"
    layers = {"fc1": np.eye(4, dtype=bool)[None].repeat(3, 0), "fc2": np.ones((3, 6), bool)}
    write_archive(path, Archive(masks=layers))
    result = _run([str(path), "--synthetic"])
    assert result.exit_code == 2 and "got both" in result.output
    result = _run([str(path), "--json"])  # every layer, and the total
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert [r["layer"] for r in run["layers"]] == ["fc1", "fc2"] and [r["tasks"] for r in run["layers"]] == [3, 3]
    total = run["total"]
    assert (total["entries_per_mask"], total["tasks"]) == (16 + 6, 3)
    by_layer = {r["layer"]: {f["name"]: f for f in r["formats"]} for r in run["layers"]}
    for f in total["formats"]:
        parts = [by_layer[layer][f["name"]] for layer in ("fc1", "fc2")]
        assert set(f) == set(parts[0])  # the per-layer keys
        assert f["total_bytes"] == sum(p["total_bytes"] for p in parts)
        assert f["bits_per_entry"] == pytest.approx(8 * f["total_bytes"] / (3 * 22))
        # a task is exact only when every layer is: the total is at most the worst layer
        assert f["exact_fraction"] <= min(p["exact_fraction"] for p in parts)
    assert {f["name"] for f in total["formats"]} == {f["name"] for f in run["layers"][0]["formats"]}
    # no memory in the archive: the explicit formats only, and the report says so
    assert [f["name"] for f in total["formats"]] == EXPLICIT
    assert total["memory"]["rule"] is None and "no memory was kept" in total["memory"]["note"]
    text = _run([str(path)]).output
    assert "layer fc1: 3 masks x 16 entries" in text and "total: 3 masks x 22 entries" in text
    assert "memory: no memory was kept (memory_rule none): only the explicit formats are priced" in text
    # a memory built here is still one flag away (here per layer: fc1 16 entries, fc2 6)
    built = json.loads(_run([str(path), "--hopfield-rule", "projection", "--json"]).output)["total"]
    assert _rows(built)["hopfield"]["total_bytes"] == 4 * (16 * 16 + 6 * 6) and "memory" not in built
    result = _run([str(path), "--layer", "fc3"])
    assert result.exit_code == 2 and "--layer: expected one of fc1, fc2, got 'fc3'" in result.output
    result = _run([str(path), "--layer", "fc2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tasks"] == 3 and report["entries_per_mask"] == 6
    assert all(f["exact_fraction"] == 1.0 for f in report["formats"] if f["name"] != "hopfield")
    write_archive(path, Archive(masks=None))
    result = _run([str(path)])
    assert result.exit_code == 2 and "holds no explicit masks" in result.output
    path.write_bytes(b"not really hdf5")
    result = _run([str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_cli_hopfield_rule_option():
    result = _run(["--synthetic", "--tasks", "5", "--shape", "16,8", "--hopfield-rule", "storkey", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hopfield"]["rule"] == "storkey"
    result = _run(["--synthetic", "--tasks", "5", "--shape", "16,8", "--hopfield-rule", "oja"])
    assert result.exit_code == 2 and "'oja' is not one of" in result.output


def test_low_precision_memories_are_checked_with_their_rounded_couplings():
    from supsup_hopfield.compression.report import _fixed_points, _rounded
    from supsup_hopfield.memory import HopfieldMemory

    rng = np.random.default_rng(9)
    masks = rng.random((60, 64)) < 0.5
    memory = HopfieldMemory(64, "projection-zd").store(masks)  # fields (1 - Ψii) z: small near capacity
    assert np.array_equal(_fixed_points(np.asarray(memory.couplings), masks), memory.stable(masks))
    half, nbytes = _rounded(memory, "float16")
    assert nbytes == 2 * 64 * 64 and np.array_equal(half, np.asarray(memory.couplings).astype(np.float16))
    coarse, nbytes = _rounded(memory, "int8")
    assert nbytes == 64 * 64 + 4 * 64
    rows = np.abs(np.asarray(memory.couplings)).max(1, keepdims=True) / 127
    assert np.all(np.abs(coarse - memory.couplings) <= rows / 2 + 1e-6)  # rounding, row by row
    assert len(np.unique(np.round(coarse / rows))) > 100  # really 8-bit levels, not a copy
    # a pattern whose fields are finer than int8's step is lost, and reported so
    weights = np.array([[0, 1, 0.999], [1, 0, -1], [0.999, -1, 0]], dtype=np.float32)  # margins of 0.001
    tiny = HopfieldMemory.from_state(weights, "projection-zd", 1)
    z = np.array([[True, True, False]])
    assert _fixed_points(np.asarray(tiny.couplings), z).all()
    assert not _fixed_points(_rounded(tiny, "int8")[0], z).all()


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_run_report_of_a_trained_lenet_has_delta_context_below_delta(tmp_path):
    from supsup_hopfield.archive import read_archive
    from supsup_hopfield.run import RunConfig, seeded_context, train_run
    from supsup_hopfield.training import TrainConfig

    out = tmp_path / "lenet.h5"
    cfg = RunConfig(dataset="permuted-fashion-mnist", model="lenet", widths=(60, 30), memory_rule=None,
                    train=TrainConfig(steps=60, lr=1e-3, device="cpu"))
    train_run(cfg, 2, out)
    result = _run([str(out), "--json"])
    assert result.exit_code == 0, result.output
    total = {f["name"]: f for f in json.loads(result.output)["total"]["formats"]}
    assert {"delta", "delta-context"} <= set(total)
    assert total["delta-context"]["exact_fraction"] == 1.0
    assert total["delta-context"]["bits_per_entry"] < 0.95 * total["delta"]["bits_per_entry"]
    assert not any(name.startswith("hopfield") for name in total)  # the run kept no memory
    # a memory built here, on the smallest layer (30 x 10 weights): the memory at fewer bits too
    result = _run([str(out), "--layer", "layer2", "--hopfield-rule", "projection", "--json"])
    assert result.exit_code == 0, result.output
    assert {"delta", "delta-context", "hopfield-float16", "hopfield-int8"} <= set(_rows(json.loads(result.output)))
    # the contexts are rebuilt from the archive's config alone: the same arrays every time
    a, b = seeded_context(read_archive(out).config, 0, 2), seeded_context(read_archive(out).config, 0, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[0].shape == (2, 60, 784)


# --------------------------------------------------------------------------------------------
# a run archive: the Hopfield rows price the memory the run kept
# --------------------------------------------------------------------------------------------
FIXTURE = __import__("pathlib").Path(__file__).parent / "data" / "run-hopnet-64-526d08b.h5"  # 3 trained tasks
MEMORY_KEYS = {"rule", "memories", "joint", "note", "layout", "count", "dim", "keys", "dtype", "nbytes", "tasks",
               "held", "given_back", "capacity", "random_probe_stable", "precisions", "keeps_every_mask",
               "smallest_exact"}


def _fixture_masks():
    """The fixture run's 3 trained masks, both hopnet (64, 64) layers concatenated: (3, 128)."""
    from supsup_hopfield.archive import read_archive

    saved = read_archive(FIXTURE)
    return np.concatenate([saved.masks["layer0"], saved.masks["layer1"]], axis=1)


def _archive(path, masks, damage=None, slots=None, **run):
    """Write a run archive of hopnet (64, 64) holding `masks` (tasks, 128) explicitly, with the
    fixture's config changed by `run` (memory_rule, memory_layout, memory_keys) and the memories
    such a run keeps (a keyed one: the first `keys` masks); `damage(memories)` may change them,
    `slots` replaces the recorded slots. Returns the memories."""
    import dataclasses

    from supsup_hopfield.archive import Archive, read_archive, write_archive
    from supsup_hopfield.run import RunConfig, memory_slots, new_memories

    config = read_archive(FIXTURE).config
    cfg = dataclasses.replace(RunConfig.from_dict(config["run"]), **run)
    layers = [masks[:, :64], masks[:, 64:]]
    memories = new_memories(cfg)
    for s in memory_slots(cfg):
        rows = masks if s.layer is None else layers[s.layer]
        memories[s.name].store(rows[:getattr(memories[s.name], "keys", len(rows)), s.start:s.stop])
    if damage is not None:
        memories = damage(memories)
    config = {**config, "run": cfg.to_dict(), "tasks": len(masks),
              "memory_slots": [dataclasses.asdict(s) for s in memory_slots(cfg)] if slots is None else slots}
    write_archive(path, Archive(memories=memories, masks={"layer0": layers[0], "layer1": layers[1]}, config=config))
    return memories


def _json(args):
    result = _run([*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_keyed_joint_memory_is_priced_once_in_the_total(tmp_path):
    path = tmp_path / "keyed.h5"
    memories = _archive(path, _fixture_masks(), memory_rule="keyed", memory_layout="joint", memory_keys=4)
    assert list(memories) == ["joint"] and memories["joint"].nbytes == 128 * 4 * 2  # int16
    run = _json([str(path)])
    total, rows = run["total"], _rows(run["total"])
    assert [r["name"] for r in total["formats"]] == EXPLICIT + ["delta", "hopfield", "hopfield-float32",
                                                              "hopfield-int8", "hopfield-int6", "hopfield-int4",
                                                              "hopfield-int3"]
    assert all(set(r) == ROW_KEYS for r in total["formats"])
    assert rows["hopfield"]["total_bytes"] == memories["joint"].nbytes == 1024  # the bytes the run keeps
    assert rows["hopfield"]["exact_fraction"] == 1.0 and rows["hopfield"]["encode_mb_s"] is None
    # d x K x 4 bytes; then b bits an entry, rounded up to whole bytes per row, and a 4-byte scale per row
    assert {n: rows[f"hopfield-{n}"]["total_bytes"] for n in ("float32", "int8", "int6", "int4", "int3")} == \
        {"float32": 128 * 4 * 4, "int8": 128 * (4 + 4), "int6": 128 * (3 + 4), "int4": 128 * (2 + 4),
         "int3": 128 * (2 + 4)}
    m = total["memory"]
    assert set(m) == MEMORY_KEYS
    assert (m["rule"], m["layout"], m["count"], m["dim"], m["keys"], m["dtype"]) == \
        ("keyed", "joint", 1, 128, 4, "int16")
    assert (m["nbytes"], m["tasks"], m["held"], m["given_back"], m["capacity"]) == (1024, 3, 3, 3, 4)
    assert m["memories"] == [{"name": "joint", "rule": "keyed", "layer": None, "start": 0, "stop": 128, "dim": 128,
                              "keys": 4, "dtype": "int16", "n_stored": 3, "nbytes": 1024, "given_back": 3}]
    assert [(p["name"], p["total_bytes"]) for p in m["precisions"]] == [
        ("float32", 2048), ("int16", 1024), ("int8", 1024), ("int6", 896), ("int4", 768), ("int3", 768)]
    assert m["keeps_every_mask"] == ["float32", "int16", "int8", "int6", "int4", "int3"]  # 3 masks, 4 keys
    assert m["smallest_exact"] == "int3" and m["random_probe_stable"] is None
    # per layer: the explicit formats, and the joint memory named, not split
    for layer in run["layers"]:
        assert not any(f["name"].startswith("hopfield") for f in layer["formats"])
        assert layer["memory"]["joint"] == ["joint"] and layer["memory"]["memories"] == []
        assert "joint keyed memory ('joint', 1,024 bytes)" in layer["memory"]["note"]
    one = _json([str(path), "--layer", "layer1"])
    assert [f["name"] for f in one["formats"]] == EXPLICIT + ["delta"] and one["memory"]["joint"] == ["joint"]
    text = _run([str(path)]).output
    assert "held by the run's joint keyed memory ('joint', 1,024 bytes)" in text
    assert "1 keyed memory (joint): 128 mask entries x 4 keys, int16, 1,024 bytes" in text
    assert "gives back 3 of the run's 3 masks exactly" in text
    assert "smallest precision that keeps every mask: int3, 768 bytes" in text
    # a memory built here instead: per layer, under the rule asked for
    built = _json([str(path), "--hopfield-rule", "storkey"])["total"]
    assert _rows(built)["hopfield"]["total_bytes"] == 2 * 64 * 64 * 4 and "memory" not in built
    assert all(r["hopfield"]["rule"] == "storkey" for r in _json([str(path), "--hopfield-rule", "storkey"])["layers"])
    plot = tmp_path / "keyed.png"
    assert _run([str(path), "--plot", str(plot)]).exit_code == 0 and plot.stat().st_size > 0


def test_keyed_memory_at_fewer_bits_and_past_its_keys():
    from supsup_hopfield.compression import report as rep
    from supsup_hopfield.keyed import KeyedMemory, quantize

    masks = np.random.default_rng(11).random((70, 128)) < 0.5
    mem = KeyedMemory(128, 64, seed=3).store(masks[:64])  # full: the last 6 masks are not in it
    layers = {"layer0": masks[:, :64], "layer1": masks[:, 64:]}
    rows, info = rep.run_memory({"joint": mem}, {"joint": (None, 0, 128)}, layers)
    assert rows["hopfield"]["total_bytes"] == mem.nbytes == 128 * 64 * 2
    assert {n: rows[f"hopfield-int{b}"]["total_bytes"] for b, n in zip((8, 6, 4, 3), "abcd")} == \
        {"a": 128 * (64 + 4), "b": 128 * (48 + 4), "c": 128 * (32 + 4), "d": 128 * (24 + 4)}
    assert rows["hopfield-float32"]["total_bytes"] == 128 * 64 * 4
    assert (info["held"], info["given_back"], info["tasks"]) == (64, 64, 70)
    assert rows["hopfield"]["exact"].tolist() == [True] * 64 + [False] * 6
    for b in (8, 6, 4, 3):  # every mask it holds given back from W rounded to b bits, or not
        keeps = bool((mem.recall(weights=quantize(mem.weights, b)) == mem.recall()).all())
        assert (f"int{b}" in info["keeps_every_mask"]) == keeps == bool(rows[f"hopfield-int{b}"]["exact"][:64].all())
    assert info["keeps_every_mask"][:3] == ["float32", "int16", "int8"]
    assert "int3" not in info["keeps_every_mask"]  # 64 masks on 64 keys: 3 bits lose some
    report = rep.storage_report(masks[:, :64], formats=["bitpack"])
    rep._attach(report, rows, info)
    assert "it holds the first 64; the rest are kept explicitly only" in format_table(report)


def test_two_bit_and_damaged_keyed_memories_are_reported_as_losing_masks(tmp_path, monkeypatch):
    from supsup_hopfield.compression import report as rep
    from supsup_hopfield.keyed import KeyedMemory

    masks = np.random.default_rng(12).random((30, 128)) < 0.5
    monkeypatch.setattr(rep, "KEYED_BITS", (8, 2))
    path = tmp_path / "keyed2.h5"
    _archive(path, masks, memory_rule="keyed", memory_layout="joint", memory_keys=32)
    m = _json([str(path)])["total"]
    two = next(p for p in m["memory"]["precisions"] if p["name"] == "int2")
    assert two["total_bytes"] == 128 * (8 + 4) and not two["keeps_every_mask"]
    assert _rows(m)["hopfield-int2"]["exact_fraction"] < 1.0 and m["memory"]["smallest_exact"] == "int8"
    monkeypatch.undo()

    def zero_first_row(memories):  # unit 0 gets no field: read as +1, so masks with entry 0 off are lost
        mem = memories["joint"]
        w = np.array(mem.weights)
        w[0] = 0
        return {"joint": KeyedMemory.from_state(w, mem.n_stored, mem.seed)}

    damaged = tmp_path / "damaged.h5"
    _archive(damaged, masks, damage=zero_first_row, memory_rule="keyed", memory_layout="joint", memory_keys=32)
    m = _json([str(damaged)])["total"]
    assert m["memory"]["given_back"] == int(masks[:, 0].sum()) < 30
    assert _rows(m)["hopfield"]["exact_fraction"] == pytest.approx(masks[:, 0].mean())
    assert m["memory"]["keeps_every_mask"] == [] and m["memory"]["smallest_exact"] is None
    text = _run([str(damaged)]).output
    assert f"gives back {int(masks[:, 0].sum())} of the run's 30 masks exactly" in text
    assert "smallest precision that keeps every mask: none" in text and "float32 NO" in text


def test_per_layer_projection_zd_run_is_priced_as_kept():
    from supsup_hopfield.archive import read_archive

    memories = read_archive(FIXTURE).memories  # projection-zd, one 64 x 64 float32 memory per layer
    run = _json([str(FIXTURE)])
    rows = _rows(run["total"])
    assert rows["hopfield"]["total_bytes"] == sum(m.nbytes for m in memories.values()) == 2 * 64 * 64 * 4
    assert rows["hopfield-float16"]["total_bytes"] == 2 * 64 * 64 * 2
    assert rows["hopfield-int8"]["total_bytes"] == 2 * (64 * 64 + 4 * 64)
    m = run["total"]["memory"]
    assert set(m) == MEMORY_KEYS
    assert (m["rule"], m["layout"], m["count"], m["dim"], m["keys"], m["given_back"]) == \
        ("projection-zd", "per-layer", 2, 64, None, 3)
    assert m["random_probe_stable"] == 0.0 and m["keeps_every_mask"][0] == "float32"
    for layer in run["layers"]:  # each layer's own memory, in its own report
        assert _rows(layer)["hopfield"]["total_bytes"] == 64 * 64 * 4
        assert [f["name"] for f in layer["memory"]["memories"]] == [layer["layer"]] and layer["memory"]["joint"] == []
    one = _json([str(FIXTURE), "--layer", "layer1"])
    assert _rows(one)["hopfield"]["total_bytes"] == memories["layer1"].nbytes and one["memory"]["given_back"] == 3
    assert "3 of the run's 3 masks are exact fixed points" in _run([str(FIXTURE)]).output


def test_a_run_without_memory_reports_explicit_formats_only(tmp_path):
    path = tmp_path / "none.h5"
    assert _archive(path, _fixture_masks(), memory_rule=None) == {}
    run = _json([str(path)])
    assert [f["name"] for f in run["total"]["formats"]] == EXPLICIT + ["delta"]
    assert run["total"]["memory"]["rule"] is None and run["layers"][0]["memory"]["memories"] == []
    assert "memory: no memory was kept (memory_rule none)" in _run([str(path)]).output


def test_memories_that_do_not_match_their_slots_are_one_line_exit_2(tmp_path):
    from supsup_hopfield.compression.report import storage_report

    masks = _fixture_masks()
    path = tmp_path / "bad.h5"
    _archive(path, masks, slots=[{"name": "joint", "layer": None, "start": 0, "stop": 100}],
             memory_rule="keyed", memory_layout="joint", memory_keys=4)
    for args, says in [([str(path)], "memories: 'joint' (dim 128) is recorded as holding entries 0..100 of every "
                                     "layer's masks concatenated (128 entries)"),
                       ([str(path), "--layer", "layer9"], "--layer: expected one of layer0, layer1")]:
        result = _run(args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and says in result.output, \
            result.output
    _archive(path, masks, slots=[], memory_rule="keyed", memory_layout="joint", memory_keys=4)
    result = _run([str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "memories: 'joint' has no recorded slot" in result.output
    with pytest.raises(ValueError, match="layer: expected the name of the run's layer"):
        storage_report(masks, memories={}, slots={})
