"""The `supsup-hf` group itself: commands load on first use, so help and version stay light."""
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from supsup_hopfield.cli.main import COMMANDS, app


def test_every_listed_command_loads_under_its_name():
    for name in COMMANDS:
        cmd = app.get_command(None, name)
        assert isinstance(cmd, click.Command) and cmd.name == name
    assert app.get_command(None, "trian") is None
    out = CliRunner().invoke(app, ["--help"]).output
    assert [line.split()[0] for line in out.split("Commands:")[1].strip().splitlines()] == sorted(COMMANDS)


def test_help_and_version_import_neither_torch_nor_numba():
    code = ("import sys\nfrom supsup_hopfield.cli.main import app\n"
            "for args in (['--help'], ['--version']):\n"
            "    try:\n        app.main(args, prog_name='supsup-hf')\n    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'numba', 'h5py', 'scipy') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage: supsup-hf" in res.stdout and "version" in res.stdout


def test_library_parameter_names_become_the_commands_flags():
    from supsup_hopfield.cli.main import in_flags

    params = app.get_command(None, "train").params
    msg = ("`steps`: expected at least 1; pass `steps=1`, `widths=(300, 100)`, `memory_rule='none'`, "
           "`keep_masks=False`, `resume=True` or `not_an_option=3`")
    assert in_flags(msg, params) == ("--steps: expected at least 1; pass --steps 1, --widths 300,100, "
                                     "--memory-rule none, --no-keep-masks, --resume or not_an_option=3")


def test_check_fits_counts_before_allocating():
    import pytest

    from supsup_hopfield.errors import UserError, check_fits

    check_fits("x", {"a": 2**30, "b": 2**30}, "fix it", available=2**31)  # exactly fits
    with pytest.raises(UserError, match=r"^x would need about 2\.0 GiB \(a 1\.0 GiB, b 1\.0 GiB\), more than this "
                                        r"machine's 1\.5 GiB of RAM; fix it$"):
        check_fits("x", {"a": 2**30, "b": 2**30 + 1, "c": 0}, "fix it", available=3 * 2**29)


def test_bugs_keep_their_traceback_and_user_errors_are_one_line(monkeypatch):
    """A ValueError from a bug (a shape mismatch, say) is not dressed up as a user error."""
    import numpy as np

    import supsup_hopfield.cli.capacity as capacity

    def broken(cfg, progress=None):
        return np.zeros(3) @ np.zeros(4)

    monkeypatch.setattr(capacity, "measure_capacity", broken)
    r = CliRunner().invoke(app, ["capacity", "--dim", "16", "--max-patterns", "2"])
    assert isinstance(r.exception, ValueError) and "mismatch" in str(r.exception) and r.exit_code == 1
    monkeypatch.undo()
    for args, says in [(["capacity", "--dim", "300000", "--max-patterns", "2"], "pass a smaller --dim"),
                       (["basins", "--dim", "100000"], "Hopfield memory 37.3 GiB"),
                       (["storage-report", "--synthetic", "--tasks", "100000", "--shape", "300000,784"],
                        "pass fewer --tasks or a smaller --shape"),
                       (["storage-report", "--synthetic", "--tasks", "2", "--shape", "3000,784",
                         "--hopfield-dim", "1000000"], "pass a smaller --hopfield-dim")]:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)


def test_output_paths_are_checked_before_any_work(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["capacity", "--dim", "64", "--max-patterns", "4", "--plot", f"{missing}/c.png"],
                 ["basins", "--dim", "64", "--plot", f"{missing}/b.png"],
                 ["storage-report", "--synthetic", "--tasks", "2", "--shape", "4,4", "--plot", f"{missing}/s.png"],
                 ["eval", str(tmp_path / "absent.h5"), "--plot", f"{missing}/e.png"],
                 ["train", "--tasks", "1", "--out", f"{missing}/r.h5"]):
        r = CliRunner().invoke(app, args)
        flag = args[-2]
        assert r.exit_code == 2, (args, r.output)
        assert f"Invalid value for '{flag}': folder {missing} does not exist; create it first" in r.output
    r = CliRunner().invoke(app, ["capacity", "--dim", "64", "--max-patterns", "4", "--plot", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_files_that_are_not_archives_get_one_line(tmp_path):
    empty, text = tmp_path / "empty.h5", tmp_path / "notes.h5"
    empty.write_bytes(b"")
    text.write_text("not hdf5\n")
    for path in (empty, text):
        for args in (["inspect", str(path)], ["eval", str(path)], ["storage-report", str(path)]):
            r = CliRunner().invoke(app, args)
            assert r.exit_code == 2 and r.output.strip() == f"Error: {path}: not an HDF5 file; pass an archive " \
                                                          "written by supsup-hf", (args, r.output)
    assert empty.read_bytes() == b"" and text.read_text() == "not hdf5\n"


def test_train_speed_options_refuse_what_they_cannot_do(tmp_path, monkeypatch):
    """Each bad combination: one line, exit code 2, before any work (no --out written)."""
    out = tmp_path / "never.h5"
    base = ["train", "--tasks", "2", "--dataset", "split-fashion-mnist", "--out", str(out)]
    cases = [(["--workers", "2"], "--workers and --ray-address are for --executor ray"),
             (["--ray-address", "auto"], "add --executor ray"),
             (["--parallel-tasks", "0"], "--parallel-tasks"),
             (["--threads", "0"], "--threads"),
             (["--precision", "16-mixed"], "'16-mixed' is not one of '32', 'bf16-mixed'"),
             (["--scenario", "nns", "--parallel-tasks", "4"], "the NNs learner sees one stream in order"),
             (["--model", "resnet18", "--widths", "20,40"], "resnet18 takes one base width")]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    cases.append((["--executor", "ray"], "Ray is not installed; install it with pip install 'supsup-hopfield[ray]'"))
    for args, message in cases:
        r = CliRunner().invoke(app, [*base, *args])
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)
        assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) <= 5
        assert not out.exists()


def test_offline_mnist_download_is_one_line_naming_data_dir(tmp_path, monkeypatch):
    """Permuted MNIST (the default stream) is downloaded when --data-dir lacks it; offline (here: a
    closed port on 127.0.0.1) that fails as one line saying what to do, with no traceback."""
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/", "http://127.0.0.1:9/"])
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    r = CliRunner().invoke(app, ["train", "--tasks", "2500", "--data-dir", str(empty)])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"Error: mnist: expected to download the four IDX files into {empty}, got an error")
    assert "point --data-dir at a folder holding them" in lines[0] and "permuted-fashion-mnist" in lines[0]
    assert "Traceback" not in r.output and not (tmp_path / "run.h5").exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_no_download_refuses_missing_data_without_going_online(tmp_path, monkeypatch, command):
    from supsup_hopfield import data

    monkeypatch.setattr(data, "_download", lambda name, folder: pytest.fail("tried to download"))
    monkeypatch.chdir(tmp_path)
    args = ["--tasks", "2", "--out", "r.h5"] if command == "train" else [str(_mnist_archive(tmp_path))]
    r = CliRunner().invoke(app, [command, *args, "--data-dir", str(tmp_path / "empty"), "--no-download"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(f"Error: mnist: expected the four IDX files (") and str(tmp_path / "empty") in r.output
    assert r.output.strip().endswith("put them there, pass --data-dir pointing at them, or pass --download")


def _tiny_mnist(folder, gz=False):
    """Tiny MNIST-format IDX files (40 train, 20 test images) in `folder`: file name -> MD5."""
    import hashlib

    import numpy as np

    from supsup_hopfield.data import IDX_FILES, write_idx

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for (split, part), stem in IDX_FILES.items():
        n = 40 if split == "train" else 20
        array = rng.integers(0, 256, (n, 28, 28)) if part == "images" else rng.integers(0, 10, n)
        path = folder / (stem + (".gz" if gz else ""))
        write_idx(path, array.astype(np.uint8))
        md5s[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5s


def _mnist_archive(folder):
    """A permuted-mnist run of one task, trained on tiny IDX files in `folder`/tiny."""
    _tiny_mnist(folder / "tiny")
    out = folder / "tiny.h5"
    r = CliRunner().invoke(app, ["train", "--tasks", "1", "--steps", "2", "--batch-size", "8", "--widths", "16,16",
                                 "--device", "cpu", "--data-dir", str(folder / "tiny"), "--out", str(out),
                                 "--no-download"])
    assert r.exit_code == 0, r.output
    return out


def test_eval_on_another_machine_downloads_the_missing_data(tmp_path, monkeypatch, local_http):
    import torchvision.datasets

    served, url, requested = local_http
    md5s = _tiny_mnist(served, gz=True)  # the same tiny files, as a mirror serves them
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [url])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", list(md5s.items()))
    archive = _mnist_archive(tmp_path)
    r = CliRunner().invoke(app, ["eval", str(archive), "--method", "gg", "--device", "cpu", "--json",
                                 "--data-dir", str(tmp_path / "elsewhere")])
    assert r.exit_code == 0, r.output
    assert set(requested) == {"/" + name for name in md5s} and (tmp_path / "elsewhere" / "MNIST" / "raw").is_dir()
