"""Datasets as whole tensors: an IDX (MNIST format) reader, a CIFAR-100 (binary version) reader
and `load_dataset` (docs/METHOD.md §7).

The paper's task streams (Wortsman et al. 2020, §4 and Appendix) are built from MNIST; this
package also runs them over Fashion-MNIST, which installs offline from Debian, and builds SplitCIFAR100
from CIFAR-100. A dataset is loaded ONCE as uint8 tensors (N, 28, 28) (MNIST-like) or
(N, 3, 32, 32) (CIFAR-100) with int64 labels, on the device, so that task streams can gather,
permute, augment and normalise whole batches there (`streams.py`) instead of running a per-sample
Python transform pipeline.

IDX format (LeCun): a big-endian header of two zero bytes, a dtype code (0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Files may be gzip-compressed.

CIFAR-100 binary version (Krizhevsky): `train.bin` (50,000 records) and `test.bin` (10,000), each a
plain sequence of 3074-byte records: 1 byte coarse label (0..19), 1 byte fine label (0..99), then
3072 pixel bytes, 1024 red, 1024 green, 1024 blue, each channel a row-major 32x32 image. Read
with `np.frombuffer`, never unpickled.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from supsup_hopfield.errors import UserError

DATASETS = ("mnist", "fashion-mnist", "cifar100")

# (mean, std) of the training pixels scaled to [0, 1]: the constants every MNIST recipe uses;
# per channel (red, green, blue) for CIFAR-100, the constants of the CIFAR-100 recipes.
NORMALISATION = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

DEFAULT_DIRS = {
    "mnist": "~/.cache/supsup-hopfield/mnist",
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",  # Debian's dataset-fashion-mnist
    "cifar100": "~/.cache/supsup-hopfield/cifar100",
}
# Where Fashion-MNIST is downloaded to, and looked for, when the Debian folder above has no files.
FASHION_MNIST_CACHE = "~/.cache/supsup-hopfield/fashion-mnist"

# The four files of a dataset, by (split, part); the stem is searched with the suffixes below.
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_SUFFIXES = ("", ".gz")  # a raw file first: no decompression needed

# IDX dtype code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("=").str: code for code, dt in _IDX_DTYPES.items()}

# CIFAR-100, binary version: the two files by split, the archive's folder, the official archive.
CIFAR100_FILES = {"train": "train.bin", "test": "test.bin"}
CIFAR100_FOLDER = "cifar-100-binary"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR100_MD5 = "03b5dce01913d631647c71ecec9e9cb8"  # of cifar-100-binary.tar.gz, as published
CIFAR_RECORD_BYTES = 2 + 3 * 32 * 32  # coarse label, fine label, pixels


# ------------------------------------------------------------------------------------ IDX files
def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw; detected from the content, not the name).

    Returns a native-endian numpy array of the stored shape. Raises UserError naming the file
    when it is not a valid IDX file (bad magic, unknown dtype, size not matching its header).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read IDX file {path}: {e.strerror or e}; check the path") from e
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(
                f"{path}: expected a valid gzip-compressed IDX file, got a damaged gzip stream "
                f"({e}); download the file again"
            ) from e
    return _parse_idx(raw, str(path))


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        got = raw[:4].hex() if raw else "an empty file"
        raise UserError(
            f"{name}: expected an IDX file (magic 0x0000TTNN), got {got}; "
            "pass the MNIST-format files (e.g. train-images-idx3-ubyte[.gz])"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise UserError(
            f"{name}: expected an IDX dtype code in {sorted(hex(c) for c in _IDX_DTYPES)}, "
            f"got {code:#04x}; the file is not an IDX file or is damaged"
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(
            f"{name}: expected an IDX header with {max(ndim, 1)} dimension(s), got a file of "
            f"{len(raw)} bytes; the file is truncated or damaged, download it again"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"{name}: expected {expected} data bytes for shape {tuple(dims)}, got "
            f"{len(raw) - header}; the file is truncated or damaged, download it again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path, array, compress: Optional[bool] = None) -> None:
    """Write `array` as an IDX file; gzip-compressed when `compress` (default: name ends .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    key = array.dtype.newbyteorder("=").str
    if key not in _IDX_CODES or array.ndim == 0 or array.ndim > 255:
        raise UserError(
            f"write_idx: expected a 1-255 dimensional array of uint8/int8/int16/int32/float32/"
            f"float64, got {array.dtype} with {array.ndim} dimension(s); convert the array first"
        )
    code = _IDX_CODES[key]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(_IDX_DTYPES[code], copy=False).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6)
    path.write_bytes(payload)


# --------------------------------------------------------------------------- CIFAR-100 files
def read_cifar100_bin(path, coarse: bool = False):
    """Read one CIFAR-100 binary file (`train.bin` or `test.bin`).

    Returns (images uint8 (N, 3, 32, 32), fine labels int64 (N,)), with the coarse labels int64
    (N,) as a third item when `coarse`. Raises UserError naming the file when it is not the
    CIFAR-100 binary format (size not a positive multiple of 3074 bytes, a label out of range).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read CIFAR-100 file {path}: {e.strerror or e}; check the path") from e
    return _parse_cifar100(raw, str(path), coarse)


def _parse_cifar100(raw: bytes, name: str, coarse: bool = False):
    redo = "download it again with `download=True`, or point `data_dir` at the binary version (cifar-100-binary)"
    if len(raw) == 0 or len(raw) % CIFAR_RECORD_BYTES:
        raise UserError(
            f"{name}: expected a positive multiple of {CIFAR_RECORD_BYTES} bytes (records of coarse label, "
            f"fine label, 3072 pixels), got {len(raw)} bytes; the file is truncated or not the CIFAR-100 "
            f"binary format: {redo}"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    for column, what, top in ((0, "coarse", 19), (1, "fine", 99)):
        labels = records[:, column]
        if labels.max() > top:
            bad = int(np.argmax(labels > top))
            raise UserError(
                f"{name}: expected {what} labels 0..{top}, got {int(labels[bad])} in record {bad}; the file "
                f"is not the CIFAR-100 binary format (CIFAR-10's has one label byte): {redo}"
            )
    images = records[:, 2:].reshape(-1, 3, 32, 32).copy()  # (N, C, H, W): the stored channel order
    fine = records[:, 1].astype(np.int64)
    if coarse:
        return images, fine, records[:, 0].astype(np.int64)
    return images, fine


def find_cifar100_files(folder) -> dict:
    """Map split ("train"/"test") -> path of `train.bin`/`test.bin` in `folder` or in
    `<folder>/cifar-100-binary` (the archive's layout). Missing entries are left out."""
    folder = Path(folder).expanduser()
    found = {}
    for split, fname in CIFAR100_FILES.items():
        hit = next((base / fname for base in (folder, folder / CIFAR100_FOLDER) if (base / fname).is_file()), None)
        if hit is not None:
            found[split] = hit
    return found


def extract_cifar100_archive(archive, folder, md5: Optional[str] = None) -> dict:
    """Check `archive` (a cifar-100-binary.tar.gz) against `md5` (default: the official
    CIFAR100_MD5), then write its members cifar-100-binary/train.bin and test.bin, and nothing
    else, to `<folder>/cifar-100-binary/`. Returns split -> written path.

    Only those two member names are read, as regular files, into paths this function chooses, so
    no member can write outside `folder`; each file is written to a temporary name and renamed.
    """
    archive, folder = Path(archive), Path(folder).expanduser()
    expected = (md5 if md5 is not None else CIFAR100_MD5).lower()
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security
    try:
        with archive.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise UserError(f"cannot read CIFAR-100 archive {archive}: {e.strerror or e}; check the path") from e
    if digest.hexdigest() != expected:
        raise UserError(
            f"{archive}: expected MD5 {expected}, got {digest.hexdigest()}; the download is damaged or not the "
            f"official {CIFAR100_URL.rsplit('/', 1)[1]}: download it again with `download=True`, or put "
            f"train.bin and test.bin in `data_dir`"
        )
    wanted = {f"{CIFAR100_FOLDER}/{fname}": split for split, fname in CIFAR100_FILES.items()}
    dest = folder / CIFAR100_FOLDER
    written = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                split = wanted.get(name)
                if split is None or split in written:
                    continue  # anything else in the archive is never written
                if not member.isreg():
                    raise UserError(
                        f"{archive}: expected member {name} to be a regular file, got a "
                        f"{'link' if member.issym() or member.islnk() else 'non-file'}; the archive is not the "
                        f"official one: download it again with `download=True`"
                    )
                dest.mkdir(parents=True, exist_ok=True)
                written[split] = _write_atomically(tar.extractfile(member), dest / CIFAR100_FILES[split])
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(
            f"{archive}: expected a gzip-compressed tar archive, got a damaged one ({e}); "
            f"download it again with `download=True`"
        ) from e
    missing = [n for n, split in wanted.items() if split not in written]
    if missing:
        raise UserError(
            f"{archive}: expected members {', '.join(wanted)}, missing {', '.join(missing)}; the archive is "
            f"not the CIFAR-100 binary version: download it again with `download=True`"
        )
    return written


def _write_atomically(source, target: Path) -> Path:
    """Copy the file object `source` to `target` through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ------------------------------------------------------------------------------------- datasets
Normalisation = Union[float, Tuple[float, ...]]


@dataclass(frozen=True)
class Dataset:
    """A whole image-classification dataset on one device.

    train_images/test_images: uint8 (N, 28, 28), or (N, 3, 32, 32) for CIFAR-100;
    train_labels/test_labels: int64 (N,). `mean`/`std` normalise pixels scaled to [0, 1]:
    x = (u8 / 255 - mean) / std; floats for one channel, tuples of one float per channel
    (red, green, blue) for CIFAR-100.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: Normalisation
    std: Normalisation
    source: str  # the folder the IDX (or CIFAR-100 .bin) files came from

    @property
    def n_classes(self) -> int:
        return int(self.train_labels.max().item()) + 1

    @property
    def device(self) -> torch.device:
        return self.train_images.device


def find_idx_files(folder) -> dict:
    """Map (split, part) -> path of the four IDX files in `folder` (or its torchvision layout
    `<folder>/<Name>/raw`), accepting `.gz` or raw files. Missing entries are left out."""
    folder = Path(folder).expanduser()
    found = {}
    candidates = [folder, folder / "MNIST" / "raw", folder / "FashionMNIST" / "raw"]
    for key, stem in IDX_FILES.items():
        for base in candidates:
            hit = next(
                (base / (s + suf) for s in (stem, stem.replace("-idx", ".idx"))
                 for suf in _SUFFIXES if (base / (s + suf)).is_file()),
                None,
            )
            if hit is not None:
                found[key] = hit
                break
    return found


def load_dataset(name: str, data_dir=None, download: bool = True, device="cpu") -> Dataset:
    """Load the whole of `name` ("mnist", "fashion-mnist" or "cifar100") as uint8/int64 tensors
    on `device`.

    With `download` (the default), a dataset whose files are missing from its folder is first
    fetched into it (needs internet; torchvision draws a progress bar on stderr); a failed
    download is a one-line UserError saying what to do offline. `download=False` never touches
    the network and refuses missing files.
    MNIST: the four IDX files are looked for in `data_dir` (default ~/.cache/supsup-hopfield/mnist);
    torchvision downloads them there.
    Fashion-MNIST: default folder /usr/share/datasets/fashion-mnist (Debian package
    dataset-fashion-mnist), or ~/.cache/supsup-hopfield/fashion-mnist (where it is downloaded)
    when that has no files; any folder via `data_dir`.
    CIFAR-100: train.bin and test.bin (binary version) in `data_dir` or its cifar-100-binary/
    (default ~/.cache/supsup-hopfield/cifar100); a download fetches the official archive, checks
    its MD5 and extracts those two files.
    """
    if name not in DATASETS:
        raise UserError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}; pick one of those")
    folder = Path(os.path.expanduser(str(data_dir if data_dir is not None else DEFAULT_DIRS[name])))
    if name == "fashion-mnist" and data_dir is None and not find_idx_files(folder):
        cache = Path(os.path.expanduser(FASHION_MNIST_CACHE))  # no Debian package: the download's folder
        if download or find_idx_files(cache):
            folder = cache
    if name == "cifar100":
        return _load_cifar100(folder, download, torch.device(device))
    if download and len(find_idx_files(folder)) < len(IDX_FILES):
        _download(name, folder)
    files = find_idx_files(folder)
    missing = [IDX_FILES[k] for k in IDX_FILES if k not in files]
    if missing:
        hint = ("install the Debian package dataset-fashion-mnist, pass `data_dir`, or pass `download=True`"
                if name == "fashion-mnist" else "pass `data_dir` pointing at them, or pass `download=True`")
        raise UserError(
            f"{name}: expected the four IDX files ({', '.join(IDX_FILES.values())}, .gz or not) in "
            f"{folder}, missing {', '.join(missing)}; put them there, {hint}"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise UserError(
                f"{files[(split, 'images')]}: expected uint8 images of shape (N, 28, 28), got "
                f"{images.dtype} {images.shape}; pass the MNIST-format image file"
            )
        if labels.shape != (images.shape[0],) or labels.size == 0 or labels.max() > 9:
            raise UserError(
                f"{files[(split, 'labels')]}: expected {images.shape[0]} labels in 0..9, got shape "
                f"{labels.shape}; pass the label file matching {files[(split, 'images')].name}"
            )
    splits = {split: (arrays[(split, "images")], arrays[(split, "labels")]) for split in ("train", "test")}
    return _on_device(name, splits, folder, device)


def _on_device(name: str, splits: dict, source, device) -> Dataset:
    """The Dataset of `name` from split -> (uint8 images, labels) numpy arrays, on `device`."""
    device = torch.device(device)
    mean, std = NORMALISATION[name]

    def to_tensor(a, dtype):
        return torch.from_numpy(a).to(device=device, dtype=dtype)

    return Dataset(
        name=name,
        train_images=to_tensor(splits["train"][0], torch.uint8),
        train_labels=to_tensor(splits["train"][1], torch.int64),
        test_images=to_tensor(splits["test"][0], torch.uint8),
        test_labels=to_tensor(splits["test"][1], torch.int64),
        mean=mean,
        std=std,
        source=str(source),
    )


def _load_cifar100(folder: Path, download: bool, device: torch.device) -> Dataset:
    if download and len(find_cifar100_files(folder)) < len(CIFAR100_FILES):
        _download_cifar100(folder)
    files = find_cifar100_files(folder)
    missing = [fname for split, fname in CIFAR100_FILES.items() if split not in files]
    if missing:
        raise UserError(
            f"cifar100: expected {' and '.join(CIFAR100_FILES.values())} (CIFAR-100 binary version) in {folder} "
            f"or {folder / CIFAR100_FOLDER}, missing {', '.join(missing)}; put them there, pass `data_dir` "
            f"pointing at them, or pass `download=True`"
        )
    return _on_device("cifar100", {split: read_cifar100_bin(path) for split, path in files.items()},
                      files["train"].parent, device)


def _download_cifar100(folder: Path) -> None:
    """Fetch the official archive with torchvision's `download_url` (progress bar on stderr) into
    a temporary folder in `folder`, then check its MD5 and extract it (`extract_cifar100_archive`,
    whose refusal says which MD5 it got); the archive is deleted afterwards."""
    from torchvision.datasets.utils import download_url  # imported here: only the download path needs it

    with _quiet_network(folder) as printed:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".cifar-100-download."))
        except OSError as e:
            raise UserError(f"cifar100: cannot create {folder}: {e.strerror or e}; pass a writable `data_dir`") from e
        try:
            archive = tmp / CIFAR100_URL.rsplit("/", 1)[1]
            try:
                download_url(CIFAR100_URL, str(tmp), filename=archive.name)
            except Exception as e:  # network errors come as many types (URLError, TimeoutError, ...)
                raise _download_failed("cifar100", CIFAR100_URL, folder, e, printed.getvalue()) from e
            extract_cifar100_archive(archive, folder, md5=CIFAR100_MD5)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _download(name: str, folder: Path) -> None:
    """Fetch the four IDX files with torchvision (its mirrors, MD5 checks and progress bars)
    into `folder` (they land in <folder>/<Name>/raw)."""
    from torchvision import datasets  # imported here: only the download path needs it

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    with _quiet_network(folder / cls.__name__ / "raw") as printed:  # torchvision's `raw_folder`
        try:
            folder.mkdir(parents=True, exist_ok=True)
            cls(str(folder), train=False, download=True)  # downloads all four files, loads the test split
        except Exception as e:  # network errors come as many types (URLError, RuntimeError, ...)
            raise _download_failed(name, "the four IDX files", folder, e, printed.getvalue()) from e


@contextlib.contextmanager
def _quiet_network(deepest: Path, timeout: float = 60.0):
    """Around a download into `deepest`: a socket waiting `timeout` seconds for data gives up (a
    firewalled network fails instead of hanging), and what torchvision prints to stdout (older
    versions say "Downloading ..." and "Failed to download (trying next)" per mirror) is kept in
    the StringIO yielded, so that a failure stays the one line of its UserError. Its progress
    bars (tqdm, on stderr) still show. A failure removes the folders on the way to `deepest`
    that did not exist before, where it left them empty."""
    new = [p for p in (deepest, *deepest.parents) if not p.exists()]  # deepest first
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield printed
    except BaseException:
        for path in new:
            try:
                path.rmdir()
            except FileNotFoundError:  # never made
                continue
            except OSError:  # not empty (a partial download, kept for the next try)
                break
        raise
    finally:
        socket.setdefaulttimeout(previous)


_OFFLINE = {  # what to do instead of downloading, per dataset
    "mnist": "point `data_dir` at a folder holding them, or use the Fashion-MNIST streams "
             "(permuted-fashion-mnist, rotated-fashion-mnist, split-fashion-mnist), which install offline "
             "from Debian (apt-get install dataset-fashion-mnist)",
    "fashion-mnist": "install them from Debian (apt-get install dataset-fashion-mnist), or point `data_dir` "
                     "at a folder holding them",
    "cifar100": "put train.bin and test.bin (CIFAR-100 binary version) there, or point `data_dir` at a "
                "folder holding them",
}
# torchvision's narration of its attempts, as opposed to the error that ended one
_NARRATION = ("Downloading", "Failed to download", "Tried ", "Error downloading", "Extracting", "Using downloaded")


def _download_failed(name: str, what: str, folder: Path, error: Exception, printed: str = "") -> UserError:
    """The one-line error of a download that failed: the last error torchvision met (in `error`'s
    message or, for older versions, in what it `printed`), and what to do offline."""
    lines = [line.strip() for line in f"{printed}\n{error}".splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(_NARRATION)] or lines or [type(error).__name__]
    reason = " ".join(causes[-1].split())[:200]
    return UserError(f"{name}: expected to download {what} into {folder}, got an error ({reason}); "
                     f"check the internet connection, or offline: {_OFFLINE[name]}")
