"""IDX reader/writer and `load_dataset` (supsup_hopfield/data.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_hopfield import data as data_module
from supsup_hopfield.data import IDX_FILES, load_dataset, read_idx, write_idx
from supsup_hopfield.errors import UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("array", [
    np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
    np.array([3, -7, 1 << 20], dtype=np.int32),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    np.array([-5, 5], dtype=np.int8),
])
def test_idx_round_trip(tmp_path, name, array):
    path = tmp_path / name
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_gzip_detected_from_content_not_name(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix, yet compressed
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8), compress=True)
    np.testing.assert_array_equal(read_idx(path), [1, 2, 3])


def test_header_bytes_are_the_mnist_format(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros((5, 28, 28), dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert int.from_bytes(raw[4:8], "big") == 5 and len(raw) == 16 + 5 * 784


@pytest.mark.parametrize("payload, match", [
    (b"PK\x03\x04not idx", "expected an IDX file"),
    (b"", "expected an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01x", "dtype code"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "expected 5 data bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "expected 2 data bytes"),
    (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
])
def test_bad_idx_file_is_one_line_user_error(tmp_path, payload, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=match) as e:
        read_idx(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "t.gz"
    write_idx(path, np.zeros((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError, match="damaged gzip"):
        read_idx(path)


def _write_tiny_mnist(folder: Path, gz: bool, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        ("train", "images"): rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        ("train", "labels"): rng.integers(0, 10, n_train).astype(np.uint8),
        ("test", "images"): rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        ("test", "labels"): rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), parts[key])
    return parts


def test_missing_mnist_files_say_where_and_how(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path) in msg and "`download=True`" in msg and "`data_dir`" in msg
    assert all(stem in msg for stem in IDX_FILES.values()) and "\n" not in msg


def test_partly_missing_files_name_the_missing_one(tmp_path):
    _write_tiny_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match=r"missing t10k-labels-idx1-ubyte;"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("gz, layout", [(False, ""), (True, "MNIST/raw")])
def test_load_mnist_from_idx_files(tmp_path, gz, layout):
    parts = _write_tiny_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    d = load_dataset("mnist", data_dir=tmp_path)
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape == (20, 28, 28)
    assert d.test_labels.dtype == torch.int64 and d.test_labels.shape == (10,)
    np.testing.assert_array_equal(d.train_images.numpy(), parts[("train", "images")])
    np.testing.assert_array_equal(d.test_labels.numpy(), parts[("test", "labels")])
    assert (d.mean, d.std) == (0.1307, 0.3081)


def test_wrong_image_shape_is_user_error(tmp_path):
    _write_tiny_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 27, 28), dtype=np.uint8))
    with pytest.raises(UserError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_label_count_mismatch_is_user_error(tmp_path):
    _write_tiny_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9, dtype=np.uint8))
    with pytest.raises(UserError, match="expected 10 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_unknown_dataset():
    with pytest.raises(UserError, match="expected one of mnist, fashion-mnist, cifar100, got 'cifar'"):
        load_dataset("cifar")


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_default_folder():
    d = load_dataset("fashion-mnist")
    assert d.train_images.shape == (60000, 28, 28) and d.test_images.shape == (10000, 28, 28)
    assert d.n_classes == 10 and (d.mean, d.std) == (0.2860, 0.3530)
    assert abs(d.train_images.float().mean().item() / 255 - 0.2860) < 1e-3


def test_failed_download_is_user_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(UserError, match=r"expected to download the four IDX files into .*name resolution"):
        load_dataset("mnist", data_dir=tmp_path / "m", download=True)


def test_download_skipped_when_files_present(tmp_path, monkeypatch):
    import torchvision.datasets

    _write_tiny_mnist(tmp_path, gz=True)
    monkeypatch.setattr(torchvision.datasets, "MNIST", None)  # would fail if called
    assert load_dataset("mnist", data_dir=tmp_path, download=True).train_images.shape == (20, 28, 28)


# ------------------------------------------------------------------ downloads, by default when missing
CLOSED_PORT = "http://127.0.0.1:9/"  # nothing listens there: a download attempt fails at once, locally


def test_offline_mnist_download_is_one_line_naming_data_dir_and_fashion_streams(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [CLOSED_PORT, CLOSED_PORT])
    with pytest.raises(UserError) as e:
        load_dataset("mnist", data_dir=tmp_path / "m")  # missing, so downloaded by default
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"mnist: expected to download the four IDX files into {tmp_path / 'm'}")
    assert "refused" in msg and "`data_dir`" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert all(s in msg for s in ("permuted-fashion-mnist", "rotated-fashion-mnist", "split-fashion-mnist"))
    assert capsys.readouterr().out == ""  # torchvision's narration of its mirrors is not shown
    assert not (tmp_path / "m").exists()  # nor are the folders it made left behind


def test_no_download_never_goes_online(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_download", lambda name, folder: pytest.fail("tried to download"))
    with pytest.raises(UserError, match=r"missing .*; put them there, pass `data_dir` pointing at them, or pass "
                                        r"`download=True`$"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def _serve_mnist(folder, monkeypatch, url, cls="MNIST"):
    """Tiny gzipped IDX files in the served `folder`; torchvision's `cls` fetches them from `url`."""
    import hashlib

    import torchvision.datasets

    parts = _write_tiny_mnist(folder, gz=True)
    resources = [(stem + ".gz", hashlib.md5((folder / (stem + ".gz")).read_bytes()).hexdigest())
                 for stem in IDX_FILES.values()]
    monkeypatch.setattr(getattr(torchvision.datasets, cls), "mirrors", [url])
    monkeypatch.setattr(getattr(torchvision.datasets, cls), "resources", resources)
    return parts


def test_missing_mnist_is_downloaded_with_progress(tmp_path, monkeypatch, local_http, capsys):
    served, url, requested = local_http
    parts = _serve_mnist(served, monkeypatch, url)
    d = load_dataset("mnist", data_dir=tmp_path / "cache")
    assert set(requested) == {f"/{s}.gz" for s in IDX_FILES.values()}
    np.testing.assert_array_equal(d.train_images.numpy(), parts[("train", "images")])
    np.testing.assert_array_equal(d.test_labels.numpy(), parts[("test", "labels")])
    assert d.source == str(tmp_path / "cache")
    assert "100%" in capsys.readouterr().err  # torchvision's progress bars
    n = len(requested)
    load_dataset("mnist", data_dir=tmp_path / "cache")  # all four there: nothing fetched again
    assert len(requested) == n


def test_fashion_mnist_without_debian_package_downloads_to_the_cache(tmp_path, monkeypatch, local_http):
    served, url, requested = local_http
    parts = _serve_mnist(served, monkeypatch, url, cls="FashionMNIST")
    monkeypatch.setitem(data_module.DEFAULT_DIRS, "fashion-mnist", str(tmp_path / "no-debian-package"))
    monkeypatch.setattr(data_module, "FASHION_MNIST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="install the Debian package dataset-fashion-mnist"):
        load_dataset("fashion-mnist", download=False)  # the Debian folder is named, nothing fetched
    assert requested == []
    d = load_dataset("fashion-mnist")
    assert d.source == str(tmp_path / "cache") and (d.mean, d.std) == (0.2860, 0.3530)
    np.testing.assert_array_equal(d.train_labels.numpy(), parts[("train", "labels")])
    assert load_dataset("fashion-mnist", download=False).source == str(tmp_path / "cache")  # found there later

    monkeypatch.setattr(data_module, "FASHION_MNIST_CACHE", str(tmp_path / "other"))
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [CLOSED_PORT])
    with pytest.raises(UserError, match=r"check the internet connection, or offline: install them from Debian "
                                        r"\(apt-get install dataset-fashion-mnist\)") as e:
        load_dataset("fashion-mnist")
    assert "permuted-fashion-mnist" not in str(e.value)


def test_tests_reach_no_host_but_127_0_0_1():
    """conftest.py: every download a test triggers by mistake fails here as it would offline."""
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError, match="tests may not reach ossci-datasets.s3.amazonaws.com"):
        urllib.request.urlopen("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz")
