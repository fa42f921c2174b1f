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
from supsup_hopfield.keyed import memory_bytes
from supsup_hopfield.packed import PackedMasks, mask_sha256
from supsup_hopfield.run import MemoryChoice, RunConfig, choose_memory, memory_slots, slot_pattern, train_run
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
    # auto: one joint keyed memory with the smallest power of two of keys >= tasks, and says so
    c = choose_memory("hopnet", None, 2500, available=64 << 30)
    assert (c.rule, c.layout, c.keys) == ("keyed", "joint", 4096)
    assert c.note.startswith("keyed memory (4,096 mask entries x 4,096 keys, 33.6 MB): gives back all 2,500 masks")
    assert "load 0.12" in c.note  # why not an attractor memory
    assert choose_memory("hopnet", None, 1).keys == 2 and choose_memory("hopnet", None, 4096).keys == 4096
    assert choose_memory("hopnet", None, 4097).keys == 8192
    assert choose_memory("hopnet", None, 300, layout="per-layer").layout == "per-layer"
    # past what RAM allows (a quarter of it), the memory holds the first masks and says so
    c = choose_memory("hopnet", None, 2500, available=4 * memory_bytes(4096, 1024))
    assert c.keys == 1024 and "holds the first 1,024 of the 2,500 masks" in c.note
    # weight masks: explicit only (with the keyed memory's bytes), unless --hopfield-dim asks for memories
    c = choose_memory("lenet", None, 2500, outputs=500)
    assert c.rule is None and "315,200 entries each), kept explicitly" in c.note and "2,582.1 MB" in c.note
    assert choose_memory("lenet", None, 100, hopfield_dim=1024).rule == "keyed"
    # a rule named by the user is kept; past the measured load it says what to expect
    c = choose_memory("hopnet", None, 2500, "projection", "joint")
    assert (c.rule, c.layout) == ("projection", "joint") and "load 0.61" in c.note and "491 masks here" in c.note
    assert choose_memory("hopnet", None, 10, "storkey") == MemoryChoice("storkey", "per-layer")
    assert choose_memory("hopnet", None, 10, "keyed", keys=64).keys == 64
    assert choose_memory("hopnet", None, 10, "none").rule is None
    with pytest.raises(UserError, match="only a keyed memory has keys"):
        choose_memory("hopnet", None, 10, "storkey", keys=64)
    with pytest.raises(UserError, match="keys: expected a power of two"):
        choose_memory("hopnet", None, 10, "keyed", keys=100)


def test_train_takes_2500_tasks_and_refuses_only_what_is_missing(tmp_path):
    # the memory no longer refuses 2500 masks; without the data and without downloading, one line
    out = tmp_path / "x.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "2500", "--no-download", "--data-dir", str(tmp_path),
                                 "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "IDX" in r.output and "more than" not in r.output
    assert not out.exists()


@needs_data
def test_train_fills_memory_and_archive(tmp_path):
    out = tmp_path / "b.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "3", *SMALL, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("note: keyed memory (128 mask entries x 4 keys, 1,024 bytes): gives back all 3")
    assert "3 tasks in" in r.output and "3 of them given back exactly from their keys" in r.output
    a = read_archive(out)
    assert [t["task"] for t in a.per_task] == [0, 1, 2]
    assert np.mean([t["accuracy"] for t in a.per_task]) > 0.8  # 2-class tasks, 30 steps
    assert a.masks["layer0"].shape == (3, 64) and a.masks["layer1"].shape == (3, 64)
    mem = a.memories["joint"]  # one keyed memory over both layers' masks
    assert (mem.rule, mem.dim, mem.keys, mem.n_stored) == ("keyed", 128, 4, 3)
    joint = np.concatenate([a.masks["layer0"], a.masks["layer1"]], axis=1)
    assert (mem.recall() == np.where(joint, 1, -1)).all()  # every mask given back from its key
    for t, rec in enumerate(a.per_task):
        assert rec["mask_sha256"] == mask_sha256([a.masks["layer0"][t], a.masks["layer1"][t]])
    # the same run again is bit-identical (deterministic on the CPU)
    out2 = tmp_path / "c.h5"
    assert CliRunner().invoke(app, ["train", "--tasks", "3", *SMALL, "--out", str(out2)]).exit_code == 0
    b = read_archive(out2)
    assert [t["mask_sha256"] for t in a.per_task] == [t["mask_sha256"] for t in b.per_task]
    np.testing.assert_array_equal(a.memories["joint"].weights, b.memories["joint"].weights)


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
    cmd = [sys.executable, "-m", "supsup_hopfield.cli", "train", "--tasks", "6", *small,
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
    assert len(after.per_task) == 6 and all(m.n_stored == 6 for m in after.memories.values())
    assert [t["mask_sha256"] for t in after.per_task[:4]] == [t["mask_sha256"] for t in before.per_task]
    for layer in ("layer0", "layer1"):
        np.testing.assert_array_equal(after.masks[layer][:4], before.masks[layer])


@needs_data
def test_ctrl_c_saves_exactly_the_finished_tasks_and_resume_matches_an_uninterrupted_run(tmp_path):
    small = [a if a != "split-fashion-mnist" else "permuted-fashion-mnist" for a in SMALL]
    out, whole = tmp_path / "c.h5", tmp_path / "whole.h5"
    # 12 tasks of ~0.1 s: the interrupt sent after task 1 lands long before the run could end (with
    # 4 tasks the run sometimes finished first, and the test failed)
    cmd = [sys.executable, "-m", "supsup_hopfield.cli", "train", "--tasks", "12", *small, "--out", str(out)]
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
    assert list(a.memories) == list(b.memories) == ["joint"]
    np.testing.assert_array_equal(a.memories["joint"].weights, b.memories["joint"].weights)


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
    r = run("--tasks", "1", "--dataset", "permuted-mnist", "--data-dir", str(tmp_path), "--out", str(out),
            "--no-download")
    assert r.exit_code == 2 and "or pass --download" in r.output
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
        (["--tasks", "1", "--model", "lenet", "--memory-rule", "projection-zd", "--hopfield-dim", "100000000",
          "--force"],
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


@needs_data
def test_a_keyed_memory_past_its_keys_keeps_the_first_masks_and_says_so(tmp_path):
    out = tmp_path / "k.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "3", *SMALL, "--steps", "2", "--memory-rule", "keyed",
                                 "--memory-keys", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "note: keyed memory (128 mask entries x 2 keys, 512 bytes) holds the first 2 of the 3 masks" in r.output
    assert "2 masks stored, 2 of them given back exactly from their keys" in r.output
    a = read_archive(out)
    assert len(a.per_task) == 3 and len(a.masks["layer0"]) == 3  # every mask kept explicitly
    assert a.memories["joint"].n_stored == 2 and a.config["run"]["memory_keys"] == 2
    # resuming to more tasks keeps the run's keys (its memory is fixed when the run starts)
    r = CliRunner().invoke(app, ["train", "--tasks", "5", *SMALL, "--steps", "2", "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    a = read_archive(out)
    assert len(a.per_task) == 5 and a.memories["joint"].n_stored == 2
    # without explicit masks the rest would be lost: refused before training
    r = CliRunner().invoke(app, ["train", "--tasks", "3", *SMALL, "--steps", "2", "--memory-rule", "keyed",
                                 "--memory-keys", "2", "--no-keep-masks", "--out", str(tmp_path / "n.h5")])
    assert r.exit_code == 2 and "--memory-keys 4" in r.output and len(r.output.strip().splitlines()) == 1
