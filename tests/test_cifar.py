"""CIFAR-100 (binary version) reading, its checked download, and the split-cifar100 stream
(supsup_hopfield/data.py, supsup_hopfield/streams.py). Every file is built here; nothing is
downloaded from the internet (a local server stands in for it)."""
import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch

from supsup_hopfield import data as data_module
from supsup_hopfield.data import (NORMALISATION, Dataset, extract_cifar100_archive, find_cifar100_files,
                                  load_dataset, read_cifar100_bin)
from supsup_hopfield.errors import UserError
from supsup_hopfield.streams import (CIFAR_SPLIT_TAG, STREAMS, TaskStream, augment_crop_flip, cifar_class_split,
                                     make_stream, parse_stream_name)

MEAN, STD = NORMALISATION["cifar100"]


def records(images, fine, coarse=None) -> bytes:
    """The binary-version bytes of uint8 images (N, 3, 32, 32) with their labels."""
    n = len(images)
    coarse = np.asarray(fine) // 5 if coarse is None else np.asarray(coarse)
    out = np.empty((n, 3074), np.uint8)
    out[:, 0], out[:, 1], out[:, 2:] = coarse, fine, np.asarray(images, np.uint8).reshape(n, 3072)
    return out.tobytes()


def tiny_cifar(per_class_train=3, per_class_test=2, seed=0) -> Dataset:
    """Every fine class present; pixels 1..255 so that zero padding is recognisable."""
    g = torch.Generator().manual_seed(seed)

    def part(per_class):
        labels = torch.arange(100).repeat(per_class)
        return torch.randint(1, 256, (len(labels), 3, 32, 32), dtype=torch.uint8, generator=g), labels

    (tx, ty), (vx, vy) = part(per_class_train), part(per_class_test)
    return Dataset("cifar100", tx, ty, vx, vy, MEAN, STD, "memory")


@pytest.fixture(scope="module")
def cifar():
    return tiny_cifar()


def normalise(u8):
    """uint8 (N, 3, 32, 32) -> float (N, 3072), per channel."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((u8.float() / 255 - mean) / std).reshape(len(u8), -1)


def unnormalise(x):
    """float (B, 3072) -> uint8 (B, 3, 32, 32)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x.reshape(-1, 3, 32, 32) * std + mean) * 255).round().to(torch.uint8)


def shift_matches(out, originals, pad=4):
    """bool (B, K, 9, 9, 2): out[b] == originals[k] shifted by (oy - pad, ox - pad), zero fill,
    flipped left to right when the last index is 1."""
    padded = torch.nn.functional.pad(originals, (pad,) * 4)
    side = 2 * pad + 1
    found = torch.zeros(len(out), len(originals), side, side, 2, dtype=torch.bool)
    for oy in range(side):
        for ox in range(side):
            window = padded[:, :, oy:oy + 32, ox:ox + 32]  # (K, 3, 32, 32)
            for f, cand in enumerate((window, window.flip(-1))):
                found[:, :, oy, ox, f] = (out[:, None] == cand[None]).flatten(2).all(-1)
    return found


# ---------------------------------------------------------------------------------- the reader
def test_records_parsed_into_channels_rows_and_labels(tmp_path):
    raw = bytearray(2 * 3074)
    raw[0], raw[1] = 7, 42  # record 0: coarse 7, fine 42
    raw[3074], raw[3075] = 19, 99  # record 1: the largest labels
    raw[2 + 0 * 1024 + 0 * 32 + 1] = 10  # record 0, red, row 0, column 1
    raw[2 + 1 * 1024 + 2 * 32 + 3] = 20  # record 0, green, row 2, column 3
    raw[2 + 2 * 1024 + 31 * 32 + 31] = 30  # record 0, blue, row 31, column 31
    raw[3074 + 2 + 1 * 1024 + 5 * 32 + 0] = 255  # record 1, green, row 5, column 0
    path = tmp_path / "train.bin"
    path.write_bytes(bytes(raw))
    images, fine = read_cifar100_bin(path)
    assert images.dtype == np.uint8 and images.shape == (2, 3, 32, 32)
    assert fine.dtype == np.int64 and fine.tolist() == [42, 99]
    assert images[0, 0, 0, 1] == 10 and images[0, 1, 2, 3] == 20 and images[0, 2, 31, 31] == 30
    assert images[1, 1, 5, 0] == 255
    assert images.sum() == 10 + 20 + 30 + 255  # nothing else set
    _, fine2, coarse = read_cifar100_bin(path, coarse=True)
    assert coarse.dtype == np.int64 and coarse.tolist() == [7, 19] and fine2.tolist() == [42, 99]


@pytest.mark.parametrize("size", [0, 3073, 3074 + 10, 2 * 3074 - 1])
def test_truncated_file_is_one_line_user_error(tmp_path, size):
    path = tmp_path / "test.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(UserError, match=f"expected a positive multiple of 3074 bytes.*got {size} bytes; the file is "
                                        "truncated or not the CIFAR-100 binary format") as e:
        read_cifar100_bin(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "`download=True`" in message and "`data_dir`" in message


@pytest.mark.parametrize("column, value, match", [
    (1, 100, "expected fine labels 0..99, got 100 in record 1"),
    (1, 255, "expected fine labels 0..99, got 255 in record 1"),
    (0, 20, "expected coarse labels 0..19, got 20 in record 1"),
])
def test_label_out_of_range_is_one_line_user_error(tmp_path, column, value, match):
    raw = bytearray(records(np.zeros((3, 3, 32, 32), np.uint8), [1, 2, 3]))
    raw[3074 + column] = value
    path = tmp_path / "train.bin"
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=match) as e:
        read_cifar100_bin(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value) and "`download=True`" in str(e.value)


# ------------------------------------------------------------------------------- load_dataset
def write_cifar(folder, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        (folder / f"{split}.bin").write_bytes(records(images, fine))
        parts[split] = (images, fine)
    return parts


@pytest.mark.parametrize("sub", ["", "cifar-100-binary"])
def test_load_dataset_finds_files_in_data_dir_or_its_archive_folder(tmp_path, sub):
    parts = write_cifar(tmp_path / sub if sub else tmp_path)
    d = load_dataset("cifar100", data_dir=tmp_path)
    assert d.name == "cifar100" and d.mean == MEAN and d.std == STD and d.source == str(tmp_path / sub)
    for split, images, labels in (("train", d.train_images, d.train_labels), ("test", d.test_images, d.test_labels)):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        np.testing.assert_array_equal(images.numpy(), parts[split][0])
        np.testing.assert_array_equal(labels.numpy(), parts[split][1])
    assert set(find_cifar100_files(tmp_path)) == {"train", "test"}


def test_missing_files_say_where_and_what_to_do(tmp_path):
    (tmp_path / "train.bin").write_bytes(records(np.zeros((1, 3, 32, 32), np.uint8), [0]))
    with pytest.raises(UserError, match=r"expected train.bin and test.bin .* missing test.bin") as e:
        load_dataset("cifar100", data_dir=tmp_path, download=False)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message and str(tmp_path / "cifar-100-binary") in message
    assert "`data_dir`" in message and "`download=True`" in message


# -------------------------------------------------------------------------- the checked download
def make_archive(path, members):
    """A tar.gz of `members`: name -> bytes, or name -> ("symlink", target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_archive_checked_and_only_the_two_files_extracted(tmp_path):
    train = records(np.full((2, 3, 32, 32), 5, np.uint8), [3, 4])
    test = records(np.full((1, 3, 32, 32), 6, np.uint8), [5])
    archive = tmp_path / "a.tar.gz"
    md5 = make_archive(archive, {
        "cifar-100-binary/fine_label_names.txt": b"apple\n",
        "cifar-100-binary/train.bin": train,
        "../evil-cifar-a.bin": b"x",
        "/tmp/evil-cifar-b.bin": b"x",
        "cifar-100-binary/../../evil-cifar-c.bin": b"x",
        "./cifar-100-binary/test.bin": test,
    })
    dest = tmp_path / "out" / "deep"
    written = extract_cifar100_archive(archive, dest, md5=md5)
    assert written == {"train": dest / "cifar-100-binary/train.bin", "test": dest / "cifar-100-binary/test.bin"}
    assert written["train"].read_bytes() == train and written["test"].read_bytes() == test
    every = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert every == {"a.tar.gz", "out/deep/cifar-100-binary/train.bin", "out/deep/cifar-100-binary/test.bin"}
    d = load_dataset("cifar100", data_dir=dest)
    assert d.train_labels.tolist() == [3, 4] and d.test_images.unique().tolist() == [6]


def test_wrong_checksum_is_refused_and_nothing_written(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_archive(archive, {"cifar-100-binary/train.bin": b"1", "cifar-100-binary/test.bin": b"2"})
    with pytest.raises(UserError, match="expected MD5 03b5dce01913d631647c71ecec9e9cb8, got [0-9a-f]{32}; the download "
                                        "is damaged") as e:
        extract_cifar100_archive(archive, tmp_path / "out")  # the official MD5 by default
    assert "\n" not in str(e.value) and "`download=True`" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("members, match", [
    ({"cifar-100-binary/train.bin": ("symlink", "/etc/passwd"), "cifar-100-binary/test.bin": b"2"},
     "expected member cifar-100-binary/train.bin to be a regular file, got a link"),
    ({"cifar-100-binary/../cifar-100-binary/train.bin": b"1", "cifar-100-binary/test.bin": b"2"},
     "missing cifar-100-binary/train.bin; the archive is not the CIFAR-100 binary version"),
])
def test_links_and_indirect_names_are_refused(tmp_path, members, match):
    archive = tmp_path / "a.tar.gz"
    md5 = make_archive(archive, members)
    with pytest.raises(UserError, match=match) as e:
        extract_cifar100_archive(archive, tmp_path / "out", md5=md5)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "cifar-100-binary" / "train.bin").exists()


def test_damaged_archive_with_right_checksum(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="expected a gzip-compressed tar archive, got a damaged one"):
        extract_cifar100_archive(archive, tmp_path / "out", md5=md5)


def test_download_from_a_local_server(tmp_path, monkeypatch, local_http, capsys):
    served, url, requested = local_http
    images = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3, 32, 32)
    md5 = make_archive(served / "cifar-100-binary.tar.gz", {"cifar-100-binary/train.bin": records(images, [8, 9]),
                                                            "cifar-100-binary/test.bin": records(images[:1], [7])})
    monkeypatch.setattr(data_module, "CIFAR100_URL", url + "cifar-100-binary.tar.gz")
    monkeypatch.setattr(data_module, "CIFAR100_MD5", md5)
    folder = tmp_path / "cache"
    d = load_dataset("cifar100", data_dir=folder)  # missing: downloaded by default
    assert "/cifar-100-binary.tar.gz" in requested
    np.testing.assert_array_equal(d.train_images.numpy(), images)
    assert d.test_labels.tolist() == [7] and d.source == str(folder / "cifar-100-binary")
    assert sorted(p.name for p in folder.rglob("*")) == ["cifar-100-binary", "test.bin", "train.bin"]  # no archive left
    assert "100%" in capsys.readouterr().err  # torchvision's progress bar
    n = len(requested)
    load_dataset("cifar100", data_dir=folder)  # both files there: no second download
    assert len(requested) == n

    monkeypatch.setattr(data_module, "CIFAR100_MD5", "0" * 32)  # a damaged download: refused, nothing kept
    with pytest.raises(UserError, match="expected MD5 0{32}, got " + md5):
        load_dataset("cifar100", data_dir=tmp_path / "damaged")
    assert not (tmp_path / "damaged").exists()  # nor the folder it made


def test_download_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_module, "CIFAR100_URL", "http://127.0.0.1:9/cifar-100-binary.tar.gz")  # a closed port
    with pytest.raises(UserError, match=r"expected to download .* got an error \(<urlopen error .*refused>\); "
                                        "check the internet connection, or offline: put train.bin and test.bin") as e:
        load_dataset("cifar100", data_dir=tmp_path / "other")
    assert "\n" not in str(e.value) and "`data_dir`" in str(e.value)
    assert not (tmp_path / "other").exists()  # nor the folder it made
    assert capsys.readouterr().out == ""


def test_no_download_never_goes_online(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_download_cifar100", lambda folder: pytest.fail("tried to download"))
    with pytest.raises(UserError, match="missing train.bin, test.bin; .* or pass `download=True`"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------- the class split
def test_class_split_seeded_partition():
    split = cifar_class_split(0)
    assert split.shape == (20, 5) and split.dtype == np.int64
    assert sorted(split.ravel().tolist()) == list(range(100))
    np.testing.assert_array_equal(split, cifar_class_split(0))
    np.testing.assert_array_equal(split, np.random.default_rng([0, CIFAR_SPLIT_TAG]).permutation(100).reshape(20, 5))
    assert not np.array_equal(split, cifar_class_split(1))
    assert not np.array_equal(split.ravel(), np.arange(100))


def test_stream_name_and_recipe(cifar):
    assert "split-cifar100" in STREAMS and parse_stream_name("split-cifar100") == ("split", "cifar100")
    stream = TaskStream("split-cifar100", cifar, seed=3)
    assert stream.n_tasks == 20 and stream.n_classes == 5
    recipe = stream.recipe()
    assert recipe == {"name": "split-cifar100", "seed": 3, "n_tasks": 20, "relabel": True,
                      "class_split": cifar_class_split(3).tolist()}
    assert make_stream("split-cifar100", seed=3, n_tasks=4, dataset=cifar).recipe()["class_split"] == \
        recipe["class_split"]
    with pytest.raises(UserError, match="expected 1..20 tasks, got 21"):
        TaskStream("split-cifar100", cifar, n_tasks=21)
    with pytest.raises(UserError, match="expected the cifar100 dataset, got fashion-mnist"):
        TaskStream("split-cifar100", Dataset("fashion-mnist", *[None] * 4, 0.0, 1.0, "memory"))


def test_tasks_hold_their_five_classes_relabeled(cifar):
    stream = TaskStream("split-cifar100", cifar, seed=5)
    split = cifar_class_split(5)
    for i in range(20):
        task = stream.task(i)
        classes = split[i].tolist()
        assert task.description["classes"] == classes and task.n_train == 15 and task.n_test == 10
        x, y = next(task.test_batches(1000))
        assert x.shape == (10, 3072) and x.dtype == torch.float32 and y.dtype == torch.int64
        rows = torch.nonzero(torch.isin(cifar.test_labels, torch.tensor(classes))).squeeze(1)
        torch.testing.assert_close(x, normalise(cifar.test_images[rows]))
        assert y.tolist() == [classes.index(c) for c in cifar.test_labels[rows].tolist()]
        assert set(y.tolist()) == {0, 1, 2, 3, 4}
        _, yb = next(task.batches(8, torch.Generator().manual_seed(0)))
        assert set(yb.tolist()) <= {0, 1, 2, 3, 4}
    assert stream.task(0) is stream.task(0)


# ---------------------------------------------------------------------------- augmentation
def test_crop_flip_is_a_zero_filled_shift_possibly_flipped():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    out = augment_crop_flip(images, torch.Generator().manual_seed(11))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    found = shift_matches(out, images)  # (64, 64, 9, 9, 2)
    own = found[torch.arange(64), torch.arange(64)]  # each against its own original
    assert (own.flatten(1).sum(1) == 1).all()  # exactly one shift and flip explains every image
    where = own.flatten(1).int().argmax(1)
    flips, shifts = where % 2, {(int(w) // 2 // 9 - 4, int(w) // 2 % 9 - 4) for w in where}
    assert 0 < int(flips.sum()) < 64  # both flipped and unflipped images
    assert len(shifts) >= 20 and {dy for dy, _ in shifts} >= {-4, 4} and {dx for _, dx in shifts} >= {-4, 4}
    assert torch.equal(out, augment_crop_flip(images, torch.Generator().manual_seed(11)))
    assert not torch.equal(out, augment_crop_flip(images, torch.Generator().manual_seed(12)))


def test_training_batches_are_augmented_reproducibly_test_batches_plain(cifar):
    task = TaskStream("split-cifar100", cifar, seed=0).task(2)
    x1, y1 = next(task.batches(12, torch.Generator().manual_seed(4)))
    x2, y2 = next(task.batches(12, torch.Generator().manual_seed(4)))
    assert x1.shape == (12, 3072) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # un-normalised, each training row is a shifted (zero fill), maybe flipped, training image of its class
    pool = cifar.train_images[torch.isin(cifar.train_labels, torch.tensor(task.description["classes"]))]
    pool_labels = torch.tensor([task.description["classes"].index(c) for c in
                                cifar.train_labels[torch.isin(cifar.train_labels,
                                                              torch.tensor(task.description["classes"]))].tolist()])
    found = shift_matches(unnormalise(x1), pool)  # (12, 15, 9, 9, 2)
    hits = found.flatten(2).any(-1)
    assert (hits.sum(1) == 1).all()
    assert torch.equal(pool_labels[hits.int().argmax(1)], y1)
    assert not torch.equal(unnormalise(x1), pool[hits.int().argmax(1)])  # really augmented
    # test batches: the plain normalised images, the same every time
    xt, _ = next(task.test_batches(1000))
    rows = torch.nonzero(torch.isin(cifar.test_labels, torch.tensor(task.description["classes"]))).squeeze(1)
    torch.testing.assert_close(xt, normalise(cifar.test_images[rows]))
    assert torch.equal(unnormalise(xt), cifar.test_images[rows])
