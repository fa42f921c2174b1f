"""`supsup-hf train` and `run.train_run`: masks into memory and archive, resume, kill, errors."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from supsup_hopfield.cli.main import app
from supsup_hopfield.archive import read_archive, read_header
from supsup_hopfield.errors import UserError
from supsup_hopfield.packed import PackedMasks, mask_sha256
from supsup_hopfield.run import RECOVERY_LOAD, RunConfig, choose_memory, memory_slots, slot_pattern, train_run
from supsup_hopfield.training import TrainConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")

# A small hopnet on split Fashion-MNIST: seconds per task on 2 cores.
SMALL = ["--dataset", "split-fashion-mnist", "--model", "hopnet", "--widths", "64,64",
         "--steps", "30", "--device", "cpu"]


def small_config(**kw):
    train = TrainConfig.for_architecture("hopnet", steps=30, device="cpu")
    return RunConfig(dataset="split-fashion-mnist", model="hopnet", widths=(64, 64), train=train, **kw)


def test_memory_slots_layouts_and_blocks():
    per_layer = memory_slots(small_config())
    assert [(s.name, s.layer, s.start, s.stop) for s in per_layer] == [("layer0", 0, 0, 64), ("layer1", 1, 0, 64)]
    joint = memory_slots(small_config(memory_layout="joint"))
    assert [(s.name, s.start, s.stop) for s in joint] == [("joint", 0, 128)]
    blocks = memory_slots(small_config(memory_layout="joint", hopfield_dim=50))
    assert [(s.name, s.start, s.stop) for s in blocks] == [("joint.0", 0, 50), ("joint.1", 50, 100), ("joint.2", 100, 128)]
    masks = [np.arange(64) % 3 == 0, np.arange(64) % 5 == 0]
    np.testing.assert_array_equal(slot_pattern(blocks[1], masks), np.concatenate(masks)[50:100])
    assert memory_slots(small_config(memory_rule=None)) == []


def test_weight_masks_need_hopfield_dim():
    with pytest.raises(UserError, match="needs `hopfield_dim=D`"):
        RunConfig(model="lenet", memory_rule="storkey")
    cfg = RunConfig(model="lenet", memory_rule="projection", hopfield_dim=2048, outputs=500)
    slots = memory_slots(cfg)
    assert sum(s.stop - s.start for s in slots) == 784 * 300 + 300 * 100 + 100 * 500
    assert max(s.stop - s.start for s in slots) <= 2049


def test_auto_memory_holds_and_gives_back_the_tasks_asked_for():
    # hopnet 2048-2048: per-layer memories give back up to 0.12·2048 masks, one joint memory twice that
    assert RECOVERY_LOAD * 2048 == pytest.approx(245.76)
    assert choose_memory("hopnet", None, 245) == ("projection-zd", "per-layer", None)
    assert choose_memory("hopnet", None, 246) == ("projection-zd", "joint", None)
    assert choose_memory("hopnet", (300, 100), 12) == ("projection-zd", "per-layer", None)  # smallest layer
    assert choose_memory("hopnet", (300, 100), 13)[:2] == ("projection-zd", "joint")
    with pytest.raises(UserError, match=r"memory: 2500 masks are more than a memory of this network gives back "
                                        r"without the task id \(measured up to load 0.12: 491 masks at d = 4096\); "
                                        r"widen the network \(`widths` giving the layers together 20834 units"):
        choose_memory("hopnet", None, 2500)
    with pytest.raises(UserError, match="memory: 300 masks .* 245 masks at d = 2048"):
        choose_memory("hopnet", None, 300, layout="per-layer")
    # weight masks: explicit only, unless --hopfield-dim cuts them into memories
    rule, layout, note = choose_memory("lenet", None, 2500)
    assert rule is None and "kept explicitly" in note
    assert choose_memory("lenet", None, 100, hopfield_dim=1024)[:2] == ("projection-zd", "per-layer")
    with pytest.raises(UserError, match="pass `hopfield_dim=20834` or more"):
        choose_memory("lenet", None, 2500, hopfield_dim=1024)
    # a rule named by the user is kept; past the measured load it says what to expect
    rule, layout, note = choose_memory("hopnet", None, 2500, "projection", "joint")
    assert (rule, layout) == ("projection", "joint") and "load 0.61" in note and "491 masks here" in note
    assert choose_memory("hopnet", None, 10, "storkey") == ("storkey", "per-layer", None)
    assert choose_memory("hopnet", None, 10, "none")[0] is None


def test_train_refuses_a_memory_it_cannot_give_back_before_training(tmp_path):
    out = tmp_path / "x.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "2500", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "2500 masks are more than" in r.output
    assert not out.exists()


@needs_data
def test_train_fills_memory_and_archive(tmp_path):
    out = tmp_path / "b.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "3", *SMALL, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 tasks in" in r.output and "3 of them exact fixed points" in r.output
    a = read_archive(out)
    assert [t["task"] for t in a.per_task] == [0, 1, 2]
    assert np.mean([t["accuracy"] for t in a.per_task]) > 0.8  # 2-class tasks, 30 steps
    assert a.masks["layer0"].shape == (3, 64) and a.masks["layer1"].shape == (3, 64)
    for layer in ("layer0", "layer1"):
        mem = a.memories[layer]
        assert (mem.rule, mem.dim, mem.n_stored) == ("projection-zd", 64, 3)
        assert mem.stable(a.masks[layer]).all()  # the masks are the memory's fixed points
    for t, rec in enumerate(a.per_task):
        assert rec["mask_sha256"] == mask_sha256([a.masks["layer0"][t], a.masks["layer1"][t]])
    # the same run again is bit-identical (deterministic on the CPU)
    out2 = tmp_path / "c.h5"
    assert CliRunner().invoke(app, ["train", "--tasks", "3", *SMALL, "--out", str(out2)]).exit_code == 0
    b = read_archive(out2)
    assert [t["mask_sha256"] for t in a.per_task] == [t["mask_sha256"] for t in b.per_task]
    np.testing.assert_array_equal(a.memories["layer0"].weights, b.memories["layer0"].weights)


@needs_data
def test_resume_extends_and_keeps_finished_masks(tmp_path):
    out = tmp_path / "r.h5"
    train_run(small_config(), 2, out)
    first = read_archive(out)
    returned = train_run(small_config(), 4, out, resume=True)
    a = read_archive(out)
    assert len(a.per_task) == 4 and a.memories["layer0"].n_stored == 4
    for t, rec in enumerate(a.per_task):  # the run keeps its masks bit-packed, rows as saved
        rows = [returned.masks[f"layer{l}"] for l in range(2)]
        assert all(isinstance(r, PackedMasks) for r in rows)
        assert rec["mask_sha256"] == mask_sha256([r[t] for r in rows])
        assert np.array_equal(rows[0][t], a.masks["layer0"][t])
    assert [t["mask_sha256"] for t in a.per_task[:2]] == [t["mask_sha256"] for t in first.per_task]
    full = tmp_path / "full.h5"  # resuming gives what one uninterrupted run gives
    train_run(small_config(), 4, full)
    b = read_archive(full)
    assert [t["mask_sha256"] for t in a.per_task] == [t["mask_sha256"] for t in b.per_task]
    np.testing.assert_allclose(a.memories["layer1"].weights, b.memories["layer1"].weights, rtol=1e-6)


@needs_data
@pytest.mark.slow
def test_sigkill_after_second_checkpoint_then_resume(tmp_path):
    out = tmp_path / "k.h5"
    small = [a if a != "split-fashion-mnist" else "permuted-fashion-mnist" for a in SMALL]
    cmd = [sys.executable, "-m", "cli", "train", "--tasks", "6", *small,
           "--checkpoint-every", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if out.exists():
                try:
                    if read_header(out, verify=False).config["tasks"] >= 4:
                        break
                except Exception:  # noqa: BLE001 - a reader may race the atomic rename
                    pass
            time.sleep(0.05)
        else:
            pytest.fail(f"no second checkpoint within 240 s (exit code {proc.poll()})")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = read_archive(out)
    assert len(before.per_task) == 4
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    after = read_archive(out)
    assert len(after.per_task) == 6 and after.memories["layer0"].n_stored == 6
    assert [t["mask_sha256"] for t in after.per_task[:4]] == [t["mask_sha256"] for t in before.per_task]
    for layer in ("layer0", "layer1"):
        np.testing.assert_array_equal(after.masks[layer][:4], before.masks[layer])


@needs_data
def test_ctrl_c_saves_exactly_the_finished_tasks_and_resume_matches_an_uninterrupted_run(tmp_path):
    small = [a if a != "split-fashion-mnist" else "permuted-fashion-mnist" for a in SMALL]
    out, whole = tmp_path / "c.h5", tmp_path / "whole.h5"
    cmd = [sys.executable, "-m", "cli", "train", "--tasks", "4", *small, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:  # one line per finished task
            lines.append(line)
            if line.startswith("task 1:"):
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.readlines()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, "".join(lines)
    text = "".join(lines)
    assert "Traceback" not in text and lines[-1].startswith("interrupted: ")
    finished = sum(line.startswith("task ") for line in lines)
    assert lines[-1].startswith(f"interrupted: {finished} finished tasks are saved in {out}")
    saved = read_archive(out)
    assert [t["task"] for t in saved.per_task] == list(range(finished)) and finished >= 2
    assert all(m.n_stored == finished for m in saved.memories.values())
    assert all(len(m) == finished for m in saved.masks.values())

    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd[:-1] + [str(whole)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = read_archive(out), read_archive(whole)
    assert [t["mask_sha256"] for t in a.per_task] == [t["mask_sha256"] for t in b.per_task]
    for layer in ("layer0", "layer1"):
        np.testing.assert_array_equal(a.masks[layer], b.masks[layer])
        np.testing.assert_array_equal(a.memories[layer].weights, b.memories[layer].weights)


@needs_data
def test_errors_are_one_line_and_nothing_is_overwritten(tmp_path):
    out = tmp_path / "e.h5"
    run = lambda *args: CliRunner().invoke(app, ["train", *args])  # noqa: E731
    r = run("--tasks", "0", *SMALL, "--out", str(out))
    assert r.exit_code == 2 and "tasks: expected at least 1, got 0" in r.output
    r = run("--tasks", "1", "--dataset", "permuted-cifar", "--out", str(out))
    assert r.exit_code == 2 and "permuted-cifar" in r.output
    r = run("--tasks", "1", "--model", "resnet", "--out", str(out))
    assert r.exit_code == 2 and "resnet" in r.output
    r = run("--tasks", "1", "--dataset", "permuted-mnist", "--data-dir", str(tmp_path), "--out", str(out))
    assert r.exit_code == 2 and "--download" in r.output
    assert not out.exists()

    assert run("--tasks", "1", *SMALL, "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    r = run("--tasks", "2", *SMALL, "--out", str(out))
    assert r.exit_code == 2 and "--resume" in r.output and "--force" in r.output
    r = run("--tasks", "2", *SMALL, "--seed", "1", "--out", str(out), "--resume")
    assert r.exit_code == 2 and "different run (base_network.seed: archive 0 vs now 1, run.seed: archive 0 vs " \
        "now 1, run.train.seed: archive 0 vs now 1)" in r.output
    r = run("--tasks", "2", *SMALL, "--lr", "0.5", "--out", str(out), "--resume")
    assert r.exit_code == 2 and "(run.train.lr: archive 0.1 vs now 0.5); resume with the same options" in r.output
    r = run("--tasks", "2", *SMALL, "--memory-rule", "hebbian", "--out", str(out), "--resume")
    assert r.exit_code == 2 and "memory_rule" in r.output
    r = run("--tasks", "2", "--model", "lenet", "--memory-rule", "storkey", "--out", str(out), "--force")
    assert r.exit_code == 2 and "--hopfield-dim" in r.output
    # refused before the first task trains (no task line printed), saying which flags to pass
    cases = [
        (["--tasks", "3", "--steps", "1", "--dataset", "split-fashion-mnist", "--outputs", "3", "--force"],
         "needs at least 10 output neurons, got 3; pass --outputs 10"),
        (["--tasks", "1", "--model", "lenet", "--hopfield-dim", "100000000", "--force"],
         "this run would need about 209.4 GiB (Hopfield memories 209.4 GiB"),
        (["--tasks", "1", *SMALL, "--widths", "100000000", "--force"],
         "base network 1257.1 GiB), more than this machine's"),
    ]
    for args, says in cases:
        r = run(*args, "--out", str(out))
        assert r.exit_code == 2 and says in r.output, args
        assert "pass a smaller --hopfield-dim, --widths or --outputs" in r.output or "--outputs 10" in r.output
        assert len(r.output.strip().splitlines()) == 1 and "task 0" not in r.output
    r = run("--tasks", "1", *SMALL, "--out", str(tmp_path / "nowhere" / "e.h5"))
    assert r.exit_code == 2 and f"folder {tmp_path / 'nowhere'} does not exist; create it first" in r.output
    assert "task 0" not in r.output
    assert out.read_bytes() == before and not (tmp_path / "nowhere").exists()
    output = run("--tasks", "0", *SMALL, "--out", str(out)).output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output


@needs_data
def test_nns_scenario_via_cli(tmp_path):
    out = tmp_path / "nns.h5"
    r = CliRunner().invoke(app, ["train", "--scenario", "nns", "--tasks", "2", "--steps", "200",
                                 "--dataset", "permuted-fashion-mnist", "--model", "lenet",
                                 "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "allocated 2 masks for 2 true tasks" in r.output
    a = read_archive(out)
    assert a.config["scenario"] == "nns" and a.masks["layer0"].shape[0] == 2
    assert [t["mask"] for t in a.per_task] == [0, 1]
    assert all(t["accuracy"] > 0.6 for t in a.per_task)
    r = CliRunner().invoke(app, ["eval", str(out), "--method", "gg"])
    assert r.exit_code == 2 and "NNs run" in r.output
    r = CliRunner().invoke(app, ["eval", str(out), "--method", "oneshot", "--json"])
    assert r.exit_code == 0 and '"task_inference_accuracy": 1.0' in r.output
    before = out.read_bytes()
    r = CliRunner().invoke(app, ["train", "--tasks", "3", "--steps", "200", "--dataset", "permuted-fashion-mnist",
                                 "--model", "lenet", "--device", "cpu", "--out", str(out), "--resume"])
    assert r.exit_code == 2 and "NNs run" in r.output and out.read_bytes() == before


def test_saved_run_reads_the_config_train_recorded(small_run):
    from supsup_hopfield.basenet import BaseNetSpec
    from supsup_hopfield.run import SavedRun, layer_key, masks_by_layer

    arc = read_archive(small_run, packed_masks=True)
    saved = SavedRun.from_config(arc.config)
    assert saved.scenario == "gg" and saved.run.widths == (64, 64) and saved.run.dataset == "split-fashion-mnist"
    assert list(saved.slots) == memory_slots(saved.run)
    assert saved.base_network == BaseNetSpec("hopnet", (64, 64), 10, 0)
    assert [s.name for s in saved.slots] == [layer_key(0), layer_key(1)] == ["layer0", "layer1"]
    assert [m.mask_shape for m in masks_by_layer(arc.masks)] == [(64,), (64,)]
    with pytest.raises(UserError, match=r"^x\.h5: its config is not a run's \(KeyError: 'base_network'\); pass an "
                                        r"archive written by supsup-hf train$"):
        SavedRun.from_config({"run": arc.config["run"]}, "x.h5")


@needs_data
def test_parallel_tasks_checkpoint_per_task_and_resume_with_another_k(tmp_path):
    """Groups of K tasks: checkpoints still count tasks, Ctrl-C keeps the finished groups, and a
    resume with another K gives what K = 1 gives (up to float32 rounding)."""
    class Watch:
        def __init__(self, stop_at=None):
            self.checkpoints, self.steps, self.stop_at = [], [], stop_at

        def start(self, done, total, steps):
            pass

        def step(self, tasks, step, losses):
            self.steps.append((tuple(tasks), step, tuple(losses.shape)))
            if (tuple(tasks), step) == self.stop_at:
                raise KeyboardInterrupt

        def task_done(self, record):
            pass

        def saved(self, path, tasks):
            self.checkpoints.append(tasks)

    whole, one = tmp_path / "whole.h5", tmp_path / "one.h5"
    watch = Watch()
    train_run(small_config(), 5, whole, parallel_tasks=2, checkpoint_every=3, progress=watch)
    assert watch.checkpoints == [4, 5]  # after the group that crossed 3 tasks, and at the end
    assert {(t, s) for t, s, _ in watch.steps} == {(g, s) for g in [(0, 1), (2, 3), (4,)] for s in range(1, 31)}
    assert all(shape == (len(t),) for t, _, shape in watch.steps)
    train_run(small_config(), 5, one, parallel_tasks=1)
    a, b = read_archive(whole), read_archive(one)
    assert [t["task"] for t in a.per_task] == list(range(5))
    for layer in ("layer0", "layer1"):
        assert (a.masks[layer] == b.masks[layer]).mean() > 0.99
    assert abs(np.mean([t["accuracy"] for t in a.per_task]) - np.mean([t["accuracy"] for t in b.per_task])) < 0.02

    cut = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        train_run(small_config(), 5, cut, parallel_tasks=2, progress=Watch(stop_at=((2, 3), 10)))
    saved = read_archive(cut)
    assert [t["task"] for t in saved.per_task] == [0, 1] and saved.memories["layer0"].n_stored == 2
    train_run(small_config(), 5, cut, resume=True, parallel_tasks=3)
    c = read_archive(cut)
    assert [t["task"] for t in c.per_task] == list(range(5)) and c.memories["layer1"].n_stored == 5
    assert [t["mask_sha256"] for t in c.per_task[:2]] == [t["mask_sha256"] for t in a.per_task[:2]]
    for layer in ("layer0", "layer1"):
        assert (c.masks[layer] == b.masks[layer]).mean() > 0.99


@needs_data
def test_precision_is_part_of_the_run(tmp_path):
    out = tmp_path / "p.h5"
    cfg = small_config()
    bf16 = RunConfig(**{**cfg.__dict__, "train": TrainConfig(**{**cfg.train.to_dict(), "precision": "bf16-mixed"})})
    train_run(bf16, 1, out)
    assert read_header(out, verify=False).config["run"]["train"]["precision"] == "bf16-mixed"
    with pytest.raises(UserError, match=r"run.train.precision: archive 'bf16-mixed' vs now '32'"):
        train_run(cfg, 2, out, resume=True)
    train_run(bf16, 2, out, resume=True)
    assert len(read_archive(out).per_task) == 2
    # archives written before precision existed trained in float32, and resume as such
    old = dict(read_header(out, verify=False).config["run"])
    old["train"] = {k: v for k, v in old["train"].items() if k != "precision"}
    assert RunConfig.from_dict(old).train.precision == "32"


@needs_data
def test_bf16_mixed_on_a_cpu_without_bfloat16_says_it_will_be_slow(tmp_path, monkeypatch):
    import torch

    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        r = CliRunner().invoke(app, ["train", "--tasks", "1", *SMALL, "--steps", "2", "--precision", "bf16-mixed",
                                     "--out", str(tmp_path / f"{native}.h5")])
        assert r.exit_code == 0, r.output
        assert ("no bfloat16 arithmetic" in r.stderr) is (not native)
