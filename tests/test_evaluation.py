"""`supsup-hf eval` / evaluation.evaluate_run on a small trained run."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import app
from supsup_hopfield.archive import Archive, read_archive, write_archive
from supsup_hopfield.evaluation import evaluate_run


@pytest.fixture
def run_copy(small_run, tmp_path):
    path = tmp_path / "run.h5"
    shutil.copy(small_run, path)
    return path


def test_gg_matches_training_accuracy_and_is_recorded(run_copy):
    before = read_archive(run_copy, packed_masks=True)
    res = evaluate_run(run_copy, "gg", batch_size=1000, device="cpu")
    saved = read_archive(run_copy, packed_masks=True)
    for layer, m in before.masks.items():  # recording the result rewrote the file: masks unchanged
        assert np.array_equal(saved.masks[layer].bits, m.bits)
    trained = [t["accuracy"] for t in saved.per_task]
    np.testing.assert_allclose([t["accuracy"] for t in res["per_task"]], trained)  # same batches
    assert res["task_inference_accuracy"] == 1.0
    assert saved.evaluations[-1]["method"] == "gg"
    assert saved.evaluations[-1]["mean_accuracy"] == pytest.approx(np.mean(trained))


def test_binary_inference_json_via_cli(run_copy, tmp_path):
    plot = tmp_path / "acc.png"
    r = CliRunner().invoke(app, ["eval", str(run_copy), "--method", "binary", "--device", "cpu",
                                 "--batch-size", "1000", "--json", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert {"method", "mean_accuracy", "task_inference_accuracy", "seconds_per_batch", "per_task"} <= set(res)
    assert [t["task"] for t in res["per_task"]] == [0, 1, 2]
    assert all({"task", "accuracy", "task_inference_accuracy"} <= set(t) for t in res["per_task"])
    trained = [t["accuracy"] for t in read_archive(run_copy).per_task]
    for t in res["per_task"]:  # a batch counts only when its task was found
        assert t["accuracy"] <= t["task_given_accuracy"] + 1e-12
        # bank row t is task t (hopnet's BatchNorm: same batch size as training's evaluation)
        assert t["task_given_accuracy"] == pytest.approx(trained[t["task"]])
    assert plot.stat().st_size > 1000
    assert len(read_archive(run_copy).evaluations) == 1


def test_eval_errors(run_copy, tmp_path):
    run = lambda *a: CliRunner().invoke(app, ["eval", *a])  # noqa: E731
    r = run(str(run_copy), "--method", "magic")
    assert r.exit_code == 2 and "magic" in r.output
    r = run(str(run_copy), "--batch-size", "1")
    assert r.exit_code == 2 and "batch size: expected at least 2, got 1" in r.output
    empty = tmp_path / "empty.h5"
    write_archive(empty, Archive())
    r = run(str(empty))
    assert r.exit_code == 2 and "holds no trained tasks" in r.output
    a = read_archive(run_copy)
    a.masks = None
    write_archive(run_copy, a)
    r = run(str(run_copy), "--method", "oneshot")
    assert r.exit_code == 2 and "--no-keep-masks" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_hopfield_method_reports_hamming_and_steps(run_copy):
    res = evaluate_run(run_copy, "hopfield", device="cpu")
    assert res["method"] == "hopfield" and res["batch_size"] == 64
    for t in res["per_task"]:
        assert len(t["hamming"]) == 2 and all(0 <= h <= 64 for h in t["hamming"])
        assert t["steps"] >= 1
        assert t["task_inference_accuracy"] == float(t["hamming"] == [0, 0])
