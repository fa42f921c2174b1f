"""SplitCIFAR100 on the masked resnet18, end to end through `supsup-hf`: train with checkpoints and
resume, masks and BatchNorm statistics saved and reloaded (same accuracy per task), eval,
storage-report, inspect, and bad files refused in one line. Data: a learnable CIFAR-100-format set
written here (each class one colour, plus noise), in the binary version's records."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from supsup_hopfield.archive import read_archive
from supsup_hopfield.cli.main import app
from supsup_hopfield.streams import cifar_class_split


def write_colour_cifar(folder, per_class_train=20, per_class_test=10, seed=0):
    """train.bin and test.bin in `folder`: every fine class a colour of its own, pixel noise ±40."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(100, 3))
    for name, per_class in (("train.bin", per_class_train), ("test.bin", per_class_test)):
        fine = np.repeat(np.arange(100), per_class)
        images = colours[fine][:, :, None, None] + rng.integers(-40, 41, size=(len(fine), 3, 32, 32))
        records = np.empty((len(fine), 3074), np.uint8)
        records[:, 0], records[:, 1] = fine // 5, fine
        records[:, 2:] = images.clip(0, 255).astype(np.uint8).reshape(len(fine), 3072)
        (folder / name).write_bytes(records.tobytes())
    return folder


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory):
    return write_colour_cifar(tmp_path_factory.mktemp("cifar"))


def train_args(data_dir, out, tasks=2):
    return ["train", "--tasks", str(tasks), "--steps", "30", "--batch-size", "32", "--dataset", "split-cifar100",
            "--model", "resnet18", "--widths", "8", "--outputs", "5", "--device", "cpu", "--threads", "1",
            "--checkpoint-every", "1", "--data-dir", str(data_dir), "--out", str(out)]


def test_split_cifar_trains_saves_reloads_resumes_and_reports(colour_dir, tmp_path):
    out = tmp_path / "c.h5"
    r = CliRunner().invoke(app, train_args(colour_dir, out))
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("note: resnet18 learns weight masks (174,872 entries each), kept explicitly; a keyed "
                               "memory of them would take 0.7 MB (--memory-rule keyed)")
    a = read_archive(out)
    assert [t["task"] for t in a.per_task] == [0, 1]
    assert np.mean([t["accuracy"] for t in a.per_task]) >= 0.9, [t["accuracy"] for t in a.per_task]
    assert a.config["stream"]["class_split"] == cifar_class_split(0).tolist()  # the split, recorded
    assert a.config["run"]["train"]["optimizer"] == "adam" and a.masks["layer0"].shape == (2, 8, 3, 3, 3)
    assert len(a.masks) == 21 and not a.memories  # weight masks: explicit only without --hopfield-dim
    widths = [len(mean) for mean, _ in a.per_task[0]["batchnorm"]]
    assert len(widths) == 20 and widths[0] == 8 and widths[-1] == 64
    assert a.per_task[0]["batchnorm"] != a.per_task[1]["batchnorm"]  # each task its own statistics

    # reloaded masks and statistics give every task the accuracy it had when trained
    r = CliRunner().invoke(app, ["eval", str(out), "--method", "gg", "--device", "cpu", "--batch-size", "1000",
                                 "--data-dir", str(colour_dir), "--json"])
    assert r.exit_code == 0, r.output
    gg = json.loads(r.stdout)
    assert [t["accuracy"] for t in gg["per_task"]] == [t["accuracy"] for t in a.per_task]
    r = CliRunner().invoke(app, ["eval", str(out), "--method", "oneshot", "--device", "cpu", "--data-dir",
                                 str(colour_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["per_task"][0]["task_inference_accuracy"] is not None

    r = CliRunner().invoke(app, train_args(colour_dir, out, tasks=3) + ["--resume"])
    assert r.exit_code == 0, r.output
    b = read_archive(out)
    assert [t["mask_sha256"] for t in b.per_task[:2]] == [t["mask_sha256"] for t in a.per_task]
    assert len(b.per_task) == 3 and b.masks["layer20"].shape == (3, 5, 64)

    r = CliRunner().invoke(app, ["storage-report", str(out), "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0 and "resnet18" in r.output, r.output


def test_bad_cifar_files_and_wrong_models_are_one_line(colour_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test.bin").write_bytes((colour_dir / "test.bin").read_bytes())
    (bad / "train.bin").write_bytes((colour_dir / "train.bin").read_bytes()[:-100])  # truncated
    for args, message in [(train_args(bad, tmp_path / "x.h5"), "train.bin"),
                          ([*train_args(colour_dir, tmp_path / "y.h5"), "--model", "lenet", "--widths", "30,20"],
                           "pass `model='resnet18'`".replace("`model='resnet18'`", "--model resnet18"))]:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert message in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
