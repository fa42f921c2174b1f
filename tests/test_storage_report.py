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
    text = _run([str(path)]).output
    assert "layer fc1: 3 masks x 16 entries" in text and "total: 3 masks x 22 entries" in text
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
    assert {"delta", "delta-context", "hopfield-float16", "hopfield-int8"} <= set(total)
    assert total["delta-context"]["exact_fraction"] == 1.0
    assert total["delta-context"]["bits_per_entry"] < 0.95 * total["delta"]["bits_per_entry"]
    # the contexts are rebuilt from the archive's config alone: the same arrays every time
    a, b = seeded_context(read_archive(out).config, 0, 2), seeded_context(read_archive(out).config, 0, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[0].shape == (2, 60, 784)
