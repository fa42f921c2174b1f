"""Datasets as whole tensors: an IDX (MNIST format) reader and `load_dataset` (docs/METHOD.md §7).

The paper's task streams (Wortsman et al. 2020, §4 and Appendix) are built from MNIST; this
package also runs them over Fashion-MNIST, which installs offline from Debian. A dataset is loaded
ONCE as uint8 tensors (N, 28, 28) with int64 labels, on the device, so that task streams can
gather, permute and normalise whole batches there (`streams.py`) instead of running a per-sample
Python transform pipeline.

IDX format (LeCun): a big-endian header of two zero bytes, a dtype code (0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Files may be gzip-compressed.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from supsup_hopfield.errors import UserError

DATASETS = ("mnist", "fashion-mnist")

# (mean, std) of the training pixels scaled to [0, 1]: the constants every MNIST recipe uses.
NORMALISATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}

DEFAULT_DIRS = {
    "mnist": "~/.cache/supsup-hopfield/mnist",
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",  # Debian's dataset-fashion-mnist
}

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


# ------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Dataset:
    """A whole image-classification dataset on one device.

    train_images/test_images: uint8 (N, 28, 28); train_labels/test_labels: int64 (N,).
    `mean`/`std` normalise pixels scaled to [0, 1]: x = (u8 / 255 - mean) / std.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float
    source: str  # the folder the IDX files came from

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


def load_dataset(name: str, data_dir=None, download: bool = False, device="cpu") -> Dataset:
    """Load the whole of `name` ("mnist" or "fashion-mnist") as uint8/int64 tensors on `device`.

    MNIST: the four IDX files are looked for in `data_dir` (default ~/.cache/supsup-hopfield/mnist);
    with `download=True` torchvision fetches them into `data_dir` first (needs internet) unless
    all four are already there.
    Fashion-MNIST: default folder /usr/share/datasets/fashion-mnist (Debian package
    dataset-fashion-mnist); any folder via `data_dir`.
    """
    if name not in DATASETS:
        raise UserError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}; pick one of those")
    folder = Path(os.path.expanduser(str(data_dir if data_dir is not None else DEFAULT_DIRS[name])))
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
    device = torch.device(device)
    mean, std = NORMALISATION[name]

    def to_tensor(a, dtype):
        return torch.from_numpy(a).to(device=device, dtype=dtype)

    return Dataset(
        name=name,
        train_images=to_tensor(arrays[("train", "images")], torch.uint8),
        train_labels=to_tensor(arrays[("train", "labels")], torch.int64),
        test_images=to_tensor(arrays[("test", "images")], torch.uint8),
        test_labels=to_tensor(arrays[("test", "labels")], torch.int64),
        mean=mean,
        std=std,
        source=str(folder),
    )


def _download(name: str, folder: Path) -> None:
    """Fetch the IDX files with torchvision into `folder` (they land in <folder>/<Name>/raw)."""
    from torchvision import datasets  # imported here: only the download path needs it

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(folder), train=train, download=True)
    except Exception as e:  # network errors come as many types (URLError, RuntimeError, ...)
        reason = " ".join(str(e).split())[:200]
        raise UserError(
            f"{name}: expected to download the IDX files into {folder}, got an error ({reason}); "
            f"check the internet connection or put the four IDX files there and pass `data_dir`"
        ) from e
