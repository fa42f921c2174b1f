"""`supsup-hf eval` / evaluation.evaluate_run on a small trained run."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from supsup_hopfield.cli.main import app
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
    assert saved.evaluations[-1]["method"] == "gg"
    assert saved.evaluations[-1]["mean_accuracy"] == pytest.approx(np.mean(trained))


def test_bf16_mixed_eval_runs_in_bfloat16_and_agrees_with_float32(run_copy, monkeypatch):
    import torch

    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: seen.append(linear(*a).dtype) or linear(*a))
    r = CliRunner().invoke(app, ["eval", str(run_copy), "--method", "oneshot", "--device", "cpu", "--batch-size",
                                 "1000", "--precision", "bf16-mixed", "--json"])
    assert r.exit_code == 0, r.output
    half = json.loads(r.output)
    assert half["precision"] == "bf16-mixed" and set(seen) == {torch.bfloat16}
    full = evaluate_run(run_copy, "oneshot", batch_size=1000, device="cpu")
    assert full["precision"] == "32"
    assert abs(half["mean_accuracy"] - full["mean_accuracy"]) < 0.01
    assert [e["precision"] for e in read_archive(run_copy).evaluations] == ["bf16-mixed", "32"]


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


def test_hopfield_method_reports_per_task_recovery(run_copy):
    """What eval reports equals recovering each task by hand and comparing with the stored masks."""
    from supsup_hopfield.basenet import derive_seed
    from supsup_hopfield.recovery import RecoveryConfig, decode, recover_masks, seeded_cues
    from supsup_hopfield.run import RunConfig, stream_and_net

    res = evaluate_run(run_copy, "hopfield", device="cpu")
    arc = read_archive(run_copy)
    cfg = RunConfig.from_dict(arc.config["run"])
    stream, net = stream_and_net(cfg, 3, None, False)
    cues = seeded_cues(net, cfg.train.mask_config, cfg.train.seed, range(3))
    candidates = decode(net, arc.memories, cues, slots=arc.config["memory_slots"])
    for t in res["per_task"]:
        batches = [x for x, _ in stream.task(t["task"]).test_batches(64)]
        masks, info = recover_masks(net, arc.memories, batches, RecoveryConfig(), seed=derive_seed(0, t["task"]),
                                    candidates=candidates)
        assert t["hamming"] == [int((m != arc.masks[f"layer{l}"][t["task"]]).sum()) for l, m in enumerate(masks)]
        assert t["chosen"] == info["chosen"]
    assert res["method"] == "hopfield" and res["batch_size"] == 64 and res["recovery"]["method"] == "seeded"
    assert {"method", "mean_accuracy", "task_inference_accuracy", "seconds_per_batch", "seconds",
            "per_task"} <= set(res)
    for t in res["per_task"]:
        assert t["task_inference_accuracy"] == float(t["hamming"] == [0, 0])
        assert t["task_given_accuracy"] == pytest.approx(arc.per_task[t["task"]]["accuracy"])


def test_a_subset_of_tasks_with_progress(run_copy):
    for method in ("gg", "oneshot", "hopfield"):
        calls = []
        res = evaluate_run(run_copy, method, device="cpu", tasks=[0, 2], record=False,
                           progress=lambda done, total: calls.append((done, total)))
        assert [t["task"] for t in res["per_task"]] == [0, 2] and res["tasks"] == 2
        assert calls == [(1, 2), (2, 2)], method
    r = CliRunner().invoke(app, ["eval", str(run_copy), "--method", "gg", "--tasks", "0:3:2", "--json",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert [t["task"] for t in json.loads(r.output)["per_task"]] == [0, 2]


def test_parse_tasks():
    from supsup_hopfield.errors import UserError
    from supsup_hopfield.evaluation import parse_tasks

    assert list(parse_tasks("0:250:50")) == [0, 50, 100, 150, 200]
    assert list(parse_tasks("3:", 6)) == [3, 4, 5] and list(parse_tasks("4")) == [4]
    assert list(parse_tasks(":4:2", 9)) == [0, 2]
    for bad in ("a:b", "5:2", "0:4:0", "1:2:3:4", "-1:3"):
        with pytest.raises(UserError, match="tasks: expected"):
            parse_tasks(bad, 10)


def test_memory_replay_table_json_and_plot(run_copy, tmp_path):
    import matplotlib.image

    plot = tmp_path / "replay.png"
    r = CliRunner().invoke(app, ["eval", str(run_copy), "--method", "hopfield", "--memory-rule",
                                 "projection-zd,hebbian", "--stored", "1,3", "--device", "cpu", "--json",
                                 "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["rows"]
    assert [(w["rule"], w["stored"], w["recovery"], w["tasks"]) for w in rows] == [
        (rule, k, rec, k) for rule in ("projection-zd", "hebbian") for k in (1, 3) for rec in ("seeded", "paper")]
    for w in rows:
        exact = [float(t["hamming"] == [0, 0]) for t in w["per_task"]]
        assert w["exact_fraction"] == pytest.approx(np.mean(exact))
        assert w["mean_gg_accuracy"] == pytest.approx(np.mean([t["gg_accuracy"] for t in w["per_task"]]))
    assert matplotlib.image.imread(plot).shape[:2] == (480, 1200)  # 10 x 4 inches at 120 dpi
    saved = read_archive(run_copy)
    assert saved.evaluations[-1]["method"] == "hopfield-replay" and len(saved.evaluations[-1]["rows"]) == 8
    assert {k: m.rule for k, m in saved.memories.items()} == {"layer0": "projection-zd", "layer1": "projection-zd"}
    r = CliRunner().invoke(app, ["eval", str(run_copy), "--method", "hopfield", "--memory-rule", "storkey",
                                 "--stored", "2", "--tasks", "0:3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "storkey" in r.output and "paper" in r.output  # the baseline sits in every table


@pytest.mark.parametrize("args, message", [
    (["--method", "gg", "--memory-rule", "storkey"], "--memory-rule and --stored replay the memory for --method hopfield"),
    (["--method", "hopfield", "--stored", "2"], "--stored needs --memory-rule"),
    (["--method", "hopfield", "--memory-rule", "oja"], "expected rules from hebbian"),
    (["--method", "hopfield", "--memory-rule", "storkey", "--stored", "9"], r"stored: expected counts in 1..3"),
    (["--method", "hopfield", "--memory-rule", "storkey", "--stored", "two"], "expected positive integers"),
    (["--tasks", "2:1"], "tasks: expected 0 <= START < STOP"),
    (["--tasks", "1:7"], r"tasks: expected task indices in 0..2 \(the run's 3 tasks\)"),
])
def test_eval_bad_options_are_one_line(run_copy, args, message):
    r = CliRunner().invoke(app, ["eval", str(run_copy), "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert __import__("re").search(message, r.output), r.output


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory):
    """`supsup-hf train` on its defaults (a keyed memory): 3 permuted Fashion-MNIST tasks on
    hopnet 256-256, 100 steps each."""
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    path = tmp_path_factory.mktemp("keyed") / "k.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "3", "--dataset", "permuted-fashion-mnist", "--widths", "256,256",
                                 "--steps", "100", "--device", "cpu", "--out", str(path)])
    assert r.exit_code == 0, r.output
    assert "note: keyed memory (512 mask entries x 4 keys, 4,096 bytes): gives back all 3 masks" in r.output
    return path


def test_eval_hopfield_gives_every_mask_back_from_a_keyed_memory(keyed_run, tmp_path):
    path = tmp_path / "k.h5"
    shutil.copy(keyed_run, path)
    r = CliRunner().invoke(app, ["eval", str(path), "--method", "hopfield", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["tasks"] == 3 and res["seconds"] > 0 and res["task_inference_accuracy"] == 1.0
    trained = [t["accuracy"] for t in read_archive(path).per_task]
    for t, row in zip(range(3), res["per_task"]):
        assert row["hamming"] == [0, 0] and row["chosen"] == f"key {t}"
        assert row["accuracy"] == row["task_given_accuracy"] == pytest.approx(trained[t])
    assert res["mean_accuracy"] == pytest.approx(np.mean(trained))
    # --superposed L: the paper's one-shot inference first keeps L candidates, recorded with the result
    r = CliRunner().invoke(app, ["eval", str(path), "--method", "hopfield", "--superposed", "2", "--tasks", "1",
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["recovery"]["superposed"] == 2
    # the paper's descent needs an attractor memory: one line, exit 2
    r = CliRunner().invoke(app, ["eval", str(path), "--method", "hopfield", "--recovery", "paper", "--device", "cpu"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "this memory is keyed" in r.output


def test_replay_pairs_the_paper_method_with_attractor_rules_only(keyed_run, tmp_path):
    path = tmp_path / "k.h5"
    shutil.copy(keyed_run, path)
    r = CliRunner().invoke(app, ["eval", str(path), "--method", "hopfield", "--memory-rule", "keyed,storkey-paper",
                                 "--stored", "1,3", "--tasks", "0:3:2", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    rows = [(row["rule"], row["stored"], row["recovery"], row["tasks"]) for row in json.loads(r.output)["rows"]]
    assert rows == [("keyed", 1, "seeded", 1), ("keyed", 3, "seeded", 2), ("storkey-paper", 1, "seeded", 1),
                    ("storkey-paper", 1, "paper", 1), ("storkey-paper", 3, "seeded", 2), ("storkey-paper", 3, "paper", 2)]
    keyed = [row for row in json.loads(r.output)["rows"] if row["rule"] == "keyed"]
    assert all(row["exact_fraction"] == 1.0 for row in keyed)
