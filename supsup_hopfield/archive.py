"""HDF5 archives of a run's learned memory (the format is specified in docs/ARCHIVE.md).

One file holds the per-layer Hopfield memories (rule, count, Ψ), optionally the explicit task
masks (bit-packed), the resolved run config, per-task metrics, evaluation results and the
software versions that wrote it. Everything in it is self-checking:

* every group and dataset carries ``encoding-type`` / ``encoding-version``, written by ONE helper
  (`_Writer.stamp`); reading dispatches on (type, version) through `_READERS`, and an unknown
  pair raises `ArchiveError` naming the object, the version found and the versions supported;
* every dataset carries ``sha256`` (of its raw C-order bytes) and every object carries
  ``attrs-sha256`` (of its other attributes, canonical JSON); the root's ``manifest`` lists the
  ``attrs-sha256`` of every object, and the root checks itself. So one flipped byte anywhere
  (data, attribute, name, structure) makes reading fail instead of returning wrong data;
* writing is atomic: a temporary file in the same folder, flushed and fsync'ed, then
  ``os.replace``; a failure midway leaves any old file untouched and removes the temporary.

Public API: `Archive`, `write_archive`, `read_archive`, `read_header` (`Header`, `MemoryInfo`),
`save_memory`, `load_memory`, `software_versions`, `SCHEMA_VERSION`. Masks are kept as
`packed.PackedMasks`, the rows the archive stores.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np

from supsup_hopfield import __version__
from supsup_hopfield.errors import ArchiveError, UserError
from supsup_hopfield.packed import PackedMasks, check_bool, packed_bytes

if TYPE_CHECKING:  # memory.py imports numba; load it only when a memory is rebuilt
    from supsup_hopfield.memory import HopfieldMemory

SCHEMA_VERSION = 1
ARCHIVE_TYPE = "supsup-hopfield-archive"
LIBVER = ("v110", "v110")  # HDF5 >= 1.10 reads it; superblock and object headers checksummed

# encoding-type -> the version this package writes (the root's version is the schema version)
_WRITE_VERSION = {
    ARCHIVE_TYPE: str(SCHEMA_VERSION),
    "json": "1",
    "memory-set": "1",
    "hopfield-memory": "2",
    "keyed-memory": "1",
    "array": "1",
    "mask-set": "1",
    "packed-masks": "1",
}
_WEIGHT_DTYPES = ("<f4", "<f8")
_KEYED_DTYPES = ("<i2", "<i4")
_HASH_BLOCK = 1 << 24  # bytes read per step when a big dataset is only verified


# ----------------------------------------------------------------------------- public types

@dataclass
class Archive:
    """Everything an archive holds. `versions` is filled by `write_archive` (the values there
    are added to / override the given ones); JSON parts come back as JSON decodes them
    (tuples as lists, dict keys as strings)."""

    memories: dict[str, "HopfieldMemory"] = field(default_factory=dict)  # layer -> memory
    masks: dict[str, "np.ndarray | PackedMasks"] | None = None  # layer -> (tasks, *layer_shape)
    config: dict = field(default_factory=dict)  # resolved run config (JSON)
    per_task: list[dict] = field(default_factory=list)  # {"task", "accuracy", "mask_sha256", ...}
    evaluations: list[dict] = field(default_factory=list)  # results of `eval` runs
    versions: dict = field(default_factory=dict)  # software that wrote the file


@dataclass(frozen=True)
class MemoryInfo:
    rule: str
    dim: int
    n_stored: int
    dtype: str  # numpy dtype name: "float32" or "float64"; a keyed memory's "int16" or "int32"
    keys: int | None = None  # a keyed memory's key count (its capacity)


@dataclass(frozen=True)
class Header:
    """An archive without its big arrays: memories summarised, masks as their bool shapes."""

    schema_version: int
    memories: dict[str, MemoryInfo]
    masks: dict[str, tuple] | None  # layer -> (tasks, *layer_shape)
    config: dict
    per_task: list
    evaluations: list
    versions: dict


# ----------------------------------------------------------------------------- small helpers

def software_versions() -> dict:
    """Versions of the software that writes an archive (torch read from its metadata, not imported)."""
    v = {
        "supsup-hopfield": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }
    try:
        v["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    return v


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"value of type {type(o).__name__} is not JSON-serialisable")


def _to_json(value, name: str, sort: bool = False) -> str:
    """Compact ASCII JSON (keys sorted with `sort`); NaN/Infinity allowed, as Python writes them."""
    try:
        return json.dumps(value, sort_keys=sort, separators=(",", ":"), ensure_ascii=True,
                          default=_json_default)
    except (TypeError, ValueError) as e:
        raise UserError(f"{name}: {e}; pass plain dicts, lists, strings and numbers") from None


def _attrs_sha256(attrs: dict) -> str:
    """sha256 of an object's attributes except `attrs-sha256` (all str or int), canonical JSON."""
    body = {k: v for k, v in attrs.items() if k != "attrs-sha256"}
    return hashlib.sha256(_to_json(body, "attributes", sort=True).encode("ascii")).hexdigest()


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not name or name == "." or "/" in name or "\0" in name:
        raise UserError(f"{what}: layer names must be non-empty strings without '/', got {name!r}")
    return name


# ----------------------------------------------------------------------------- writing

class _Writer:
    """Writes objects into an open file, stamping each and collecting the manifest."""

    def __init__(self):
        self.manifest: dict[str, str] = {}

    def stamp(self, obj, etype: str, record: bool = True, **attrs) -> str:
        """THE helper that writes an object's attributes: encoding-type/-version, the given
        ones (str or int), then attrs-sha256 over all of them; records that in the manifest
        (unless `record` is false: the root and the manifest itself) and returns it.

        Strings are written as fixed-length ASCII, never variable-length: those live in HDF5's
        global heap, which has no checksum, and a damaged one can hang the HDF5 library."""
        full = {"encoding-type": etype, "encoding-version": _WRITE_VERSION[etype]}
        for k, v in attrs.items():
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise TypeError(f"attribute {k!r} must be str or int, got {type(v).__name__}")
            full[k.replace("_", "-")] = v
        full["attrs-sha256"] = _attrs_sha256(full)
        for k, v in full.items():
            obj.attrs[k] = np.int64(v) if isinstance(v, int) else np.bytes_(v.encode("ascii"))
        if record:
            self.manifest[obj.name] = full["attrs-sha256"]
        return full["attrs-sha256"]

    def dataset(self, parent, name: str, data: np.ndarray, etype: str, record: bool = True, **attrs):
        data = np.asarray(data, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        ds = parent.create_dataset(name, data=data)
        return self.stamp(ds, etype, record, dtype=data.dtype.str, shape=json.dumps(list(data.shape)),
                          sha256=hashlib.sha256(data.tobytes()).hexdigest(), **attrs)

    def json(self, parent, name: str, text: str, record: bool = True) -> str:
        raw = text.encode("ascii")
        return self.dataset(parent, name, np.array(raw, dtype=f"S{len(raw)}"), "json", record)

    def memory(self, parent, name: str, mem) -> None:
        w = np.asarray(mem.weights)
        w = w.astype(w.dtype.newbyteorder("<"), copy=False)
        g = parent.create_group(name)
        self.dataset(g, "weights", w, "array")
        if mem.rule == "keyed":  # W (dim, keys) of integers; the keys are rebuilt from key-seed
            self.stamp(g, "keyed-memory", rule="keyed", dim=int(w.shape[0]), keys=int(w.shape[1]),
                       n_stored=int(mem.n_stored), key_seed=int(mem.seed))
            return
        extra = {}
        if mem.rule == "margin":  # the patterns it holds, as packed masks (z = +1 -> bit 1)
            held = PackedMasks.pack(np.asarray(mem.patterns) > 0)
            self.dataset(g, "patterns", held.bits, "packed-masks", bit_shape=json.dumps([int(w.shape[0])]))
            extra = {"margin": _to_json(mem.margin.to_dict(), "margin", sort=True),
                     "learned": _to_json(mem.learned, "learned", sort=True)}
        self.stamp(g, "hopfield-memory", rule=str(mem.rule), dim=int(w.shape[0]),
                   n_stored=int(mem.n_stored), **extra)

    def masks(self, parent, masks: dict, n_tasks: int) -> None:
        g = parent.create_group("masks")
        for name, m in masks.items():
            packed = m if isinstance(m, PackedMasks) else PackedMasks.pack(m)
            self.dataset(g, name, packed.bits, "packed-masks", bit_shape=json.dumps(list(packed.mask_shape)))
        self.stamp(g, "mask-set", keys=_to_json(list(masks), "masks"), n_tasks=n_tasks)


def _check_archive(archive: Archive):
    """Validate an Archive for writing; returns (memories, masks, n_tasks) converted."""
    if not isinstance(archive, Archive):
        raise UserError(f"archive: expected an Archive, got {type(archive).__name__}")
    memories = {}
    for name, mem in dict(archive.memories).items():
        _check_name(name, "memories")
        w = np.asarray(getattr(mem, "weights", None))
        keyed = getattr(mem, "rule", None) == "keyed"
        if w.ndim != 2 or (not keyed and w.shape[0] != w.shape[1]) or \
                w.dtype.newbyteorder("<").str not in (_KEYED_DTYPES if keyed else _WEIGHT_DTYPES):
            raise UserError(f"memories[{name!r}]: expected a HopfieldMemory with square float32/"
                            f"float64 weights or a KeyedMemory, got {type(mem).__name__}")
        memories[name] = mem
    masks, n_tasks = None, 0
    if archive.masks is not None:
        masks = {}
        for name, m in dict(archive.masks).items():
            _check_name(name, "masks")
            a = m if isinstance(m, PackedMasks) else check_bool(m, f"masks[{name!r}]")
            if a.ndim < 2:
                raise UserError(f"masks[{name!r}]: expected shape (tasks, *layer_shape), got {a.shape}")
            masks[name] = a
        counts = {a.shape[0] for a in masks.values()}
        if len(counts) > 1:
            raise UserError(f"masks: every layer needs the same number of tasks, got "
                            f"{ {k: a.shape[0] for k, a in masks.items()} }")
        n_tasks = counts.pop() if counts else 0
    for what in ("per_task", "evaluations"):
        value = getattr(archive, what)
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            got = (f"a list holding {next(type(r).__name__ for r in value if not isinstance(r, dict))}"
                   if isinstance(value, list) else type(value).__name__)
            raise UserError(f"{what}: expected a list of dicts, got {got}")
    if not isinstance(archive.config, dict):
        raise UserError(f"config: expected a dict, got {type(archive.config).__name__}")
    return memories, masks, n_tasks


def write_archive(path, archive: Archive) -> None:
    """Write `archive` to `path` atomically (temporary file, fsync, os.replace)."""
    path = Path(path)
    memories, masks, n_tasks = _check_archive(archive)
    versions = {**dict(archive.versions), **software_versions()}
    texts = {k: _to_json(getattr(archive, k), k)  # JSON checked before any file is touched
             for k in ("config", "per_task", "evaluations")}
    texts["versions"] = _to_json(versions, "versions")
    folder = path.parent  # "." for a bare file name
    if not folder.is_dir():
        raise UserError(f"{path}: folder {folder} does not exist; create it first")
    tmp = folder / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with h5py.File(tmp, "x", libver=LIBVER) as f:
            w = _Writer()
            for name, text in texts.items():
                w.json(f, name, text)
            g = f.create_group("memory")
            for name, mem in memories.items():
                w.memory(g, name, mem)
            w.stamp(g, "memory-set", keys=_to_json(list(memories), "memories"))
            if masks is not None:
                w.masks(f, masks, n_tasks)
            top = w.json(f, "manifest", _to_json(w.manifest, "manifest", sort=True), record=False)
            w.stamp(f, ARCHIVE_TYPE, record=False, manifest_sha256=top)
            f.flush()
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(folder, directory=True)
    except BaseException as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise UserError(f"{path}: cannot write the archive ({_one_line(e)}); check the "
                            f"folder's permissions and free space") from e
        raise


def _fsync(p: Path, directory: bool = False) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        if directory:  # some systems cannot open folders; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def save_memory(path, memory: "HopfieldMemory") -> None:
    """Write one memory as an archive whose only layer is named "memory"."""
    write_archive(path, Archive(memories={"memory": memory}))


# ----------------------------------------------------------------------------- reading

_READERS: dict[tuple[str, str], Callable] = {}


def _reader(etype: str, version: str):
    def register(fn):
        _READERS[(etype, version)] = fn
        return fn
    return register


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_DAMAGED = "the file is damaged; restore it from a backup or write it again"


class _Reader:
    """Walks an open archive: every object it touches is checked against the manifest."""

    def __init__(self, path, f: h5py.File, load: bool, verify: bool):
        self.path, self.f, self.load, self.verify = path, f, load, verify
        self.manifest: dict[str, str] = {}

    def error(self, problem: str, fix: str = _DAMAGED) -> ArchiveError:
        return ArchiveError(f"{self.path}: {problem}; {fix}")

    def attrs(self, obj, name: str) -> dict:
        out = {}
        for k in obj.attrs:
            v = obj.attrs[k]
            if isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, bytes):  # np.bytes_ too: fixed-length ASCII strings
                try:
                    v = v.decode("ascii")
                except UnicodeDecodeError:
                    raise self.error(f"attribute {k!r} of {name} is not ASCII text") from None
            else:
                raise self.error(f"attribute {k!r} of {name} has unexpected type {type(v).__name__}")
            out[k] = v
        if out.get("attrs-sha256") != _attrs_sha256(out):
            raise self.error(f"checksum mismatch in the attributes of {name}")
        return out

    def get(self, name: str, kind: str = "object"):
        """Object `name` (absolute path) with its verified attributes."""
        if name not in self.manifest:
            raise self.error(f"{name} is not listed in the manifest")
        obj = self.f.get(name)
        if obj is None:
            raise self.error(f"missing {kind} {name}")
        attrs = self.attrs(obj, name)
        if attrs["attrs-sha256"] != self.manifest[name]:
            raise self.error(f"attributes of {name} do not match the manifest")
        return obj, attrs

    def decode(self, name: str, kind: str = "object"):
        obj, attrs = self.get(name, kind)
        return self.dispatch(name, obj, attrs)

    def dispatch(self, name: str, obj, attrs: dict):
        etype, version = attrs.get("encoding-type"), attrs.get("encoding-version")
        fn = _READERS.get((etype, version))
        if fn is None:
            known = sorted(v for t, v in _READERS if t == etype)
            if not known:
                raise self.error(f"{name} has unknown encoding-type {etype!r}",
                                 "it was written by other software or is damaged")
            raise self.error(f"{name} has encoding {etype!r} version {version!r}, this package "
                             f"reads versions {', '.join(known)}", "upgrade supsup-hopfield")
        return fn(self, name, obj, attrs)

    def data(self, name: str, obj, attrs: dict, dtypes=None, ndim=None, load=None):
        """The dataset's array (when loading) or None (header only: verified when self.verify).
        Its dtype and shape are checked before any data is read."""
        load = self.load if load is None else load
        if not isinstance(obj, h5py.Dataset):
            raise self.error(f"{name} should be a dataset")
        try:
            want_shape = tuple(json.loads(attrs["shape"]))
            want_dtype, want_sha = attrs["dtype"], attrs["sha256"]
        except (KeyError, TypeError, ValueError):
            raise self.error(f"{name} lacks valid dtype/shape/sha256 attributes") from None
        if dtypes is not None and want_dtype not in dtypes:
            raise self.error(f"{name} has dtype {want_dtype}, expected one of {', '.join(dtypes)}")
        if ndim is not None and len(want_shape) != ndim:
            raise self.error(f"{name} has {len(want_shape)} dimensions, expected {ndim}")
        if obj.dtype.str != want_dtype:
            raise self.error(f"{name} has dtype {obj.dtype.str}, expected {want_dtype}")
        if tuple(obj.shape) != want_shape:
            raise self.error(f"{name} has shape {tuple(obj.shape)}, expected {want_shape}")
        if not (load or self.verify):
            return None
        h, arr = hashlib.sha256(), None
        if load or obj.ndim == 0 or obj.size == 0:
            arr = np.asarray(obj[...], order="C")
            h.update(arr.tobytes())
        else:  # verify a big dataset in blocks of rows, without holding it
            step = max(1, _HASH_BLOCK // max(1, obj.dtype.itemsize * (obj.size // obj.shape[0])))
            for i in range(0, obj.shape[0], step):
                h.update(np.ascontiguousarray(obj[i:i + step]).tobytes())
        if h.hexdigest() != want_sha:
            raise self.error(f"checksum mismatch in the data of {name}")
        return arr if load else None

    def keys(self, name: str, attrs: dict) -> list[str]:
        keys = json.loads(attrs["keys"])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise self.error(f"{name} has an invalid 'keys' attribute")
        return keys


@_reader("json", "1")
def _read_json(r: _Reader, name, obj, attrs):
    arr = r.data(name, obj, attrs, ndim=0, load=True)  # small: read even for a header
    if arr.dtype.kind != "S":
        raise r.error(f"{name} should hold JSON text, got dtype {arr.dtype.str}")
    return json.loads(arr.tobytes().decode("ascii"))


@_reader("array", "1")
def _read_array(r: _Reader, name, obj, attrs):
    return r.data(name, obj, attrs)


def _read_weights(r: _Reader, name, shape: tuple, dtypes: tuple):
    """A memory's child `weights`, checked to be an `array` of `shape` with one of `dtypes`
    before any data is read: (the array, or None for a header; its attributes)."""
    wname = f"{name}/weights"
    wobj, wattrs = r.get(wname, "dataset")
    if wattrs.get("encoding-type") != "array":
        raise r.error(f"{wname} should be an 'array', got {wattrs.get('encoding-type')!r}")
    if json.loads(wattrs["shape"]) != list(shape):
        raise r.error(f"{wname} has shape {tuple(json.loads(wattrs['shape']))}, expected {tuple(shape)}")
    if wattrs["dtype"] not in dtypes:
        raise r.error(f"{wname} has dtype {wattrs['dtype']}, expected one of {', '.join(dtypes)}")
    return r.dispatch(wname, wobj, wattrs), wattrs


@_reader("hopfield-memory", "1")
@_reader("hopfield-memory", "2")
def _read_memory(r: _Reader, name, obj, attrs):
    """Version 2 adds, for rule `margin` only, the dataset `patterns` and the attributes
    `margin` and `learned` (JSON); a version-1 memory is read the same way."""
    rule, dim, n_stored = attrs["rule"], attrs["dim"], attrs["n-stored"]
    w, wattrs = _read_weights(r, name, (dim, dim), _WEIGHT_DTYPES)
    held = margin = learned = None
    if rule == "margin":
        pname = f"{name}/patterns"
        if pname not in r.manifest:
            raise r.error(f"{name} is a margin memory without its patterns ({pname})")
        pobj, pattrs = r.get(pname, "dataset")
        if (pattrs.get("encoding-type"), pattrs.get("encoding-version")) != ("packed-masks", "1"):
            raise r.error(f"{pname} should be 'packed-masks' version 1")
        held = _read_packed(r, pname, pobj, pattrs, n_tasks=n_stored)
        try:
            margin, learned = json.loads(attrs["margin"]), json.loads(attrs["learned"])
        except (KeyError, ValueError):
            raise r.error(f"{name} lacks valid 'margin' and 'learned' attributes") from None
    if not r.load:
        return MemoryInfo(rule, dim, n_stored, np.dtype(wattrs["dtype"]).name)
    from supsup_hopfield.memory import HopfieldMemory
    from supsup_hopfield.rules import MarginConfig

    try:
        if rule == "margin":
            return HopfieldMemory.from_state(w, rule, n_stored, np.where(held[:], 1, -1).astype(np.int8),
                                             MarginConfig(**margin), learned)
        return HopfieldMemory.from_state(w, rule, n_stored)
    except (ValueError, TypeError) as e:
        raise r.error(f"{name} does not hold a valid memory ({_one_line(e)})") from None


@_reader("keyed-memory", "1")
def _read_keyed_memory(r: _Reader, name, obj, attrs):
    """A `keyed.KeyedMemory`: the dataset `weights` (dim, keys) of int16/int32 and the attributes
    rule ("keyed"), dim, keys, n-stored and key-seed (what rebuilds the keys)."""
    try:
        dim, keys, n_stored, seed = (int(attrs[k]) for k in ("dim", "keys", "n-stored", "key-seed"))
    except (KeyError, TypeError, ValueError):
        raise r.error(f"{name} lacks valid dim, keys, n-stored and key-seed attributes") from None
    w, wattrs = _read_weights(r, name, (dim, keys), _KEYED_DTYPES)
    if not r.load:
        return MemoryInfo("keyed", dim, n_stored, np.dtype(wattrs["dtype"]).name, keys)
    from supsup_hopfield.keyed import KeyedMemory

    try:
        return KeyedMemory.from_state(w, n_stored, seed)
    except (ValueError, TypeError) as e:
        raise r.error(f"{name} does not hold a valid keyed memory ({_one_line(e)})") from None


@_reader("memory-set", "1")
def _read_memory_set(r: _Reader, name, obj, attrs):
    return {k: r.decode(f"{name}/{k}", "memory") for k in r.keys(name, attrs)}


@_reader("packed-masks", "1")
def _read_packed(r: _Reader, name, obj, attrs, n_tasks=None):
    shape = tuple(json.loads(attrs["bit-shape"]))
    n_bits = int(np.prod(shape, dtype=np.int64))
    want = (n_tasks, packed_bytes(n_bits))
    got = tuple(json.loads(attrs["shape"]))
    if n_tasks is not None and got != want:
        raise r.error(f"{name} has shape {got}, expected {want}")
    packed = r.data(name, obj, attrs, dtypes=("|u1",), ndim=2)
    if not r.load:
        return (got[0],) + shape
    try:
        return PackedMasks(packed, shape)
    except ValueError as e:
        raise r.error(f"{name}: {e}") from None


@_reader("mask-set", "1")
def _read_mask_set(r: _Reader, name, obj, attrs):
    out = {}
    for k in r.keys(name, attrs):
        child = f"{name}/{k}"
        cobj, cattrs = r.get(child, "dataset")
        if (cattrs.get("encoding-type"), cattrs.get("encoding-version")) != ("packed-masks", "1"):
            out[k] = r.dispatch(child, cobj, cattrs)  # a newer mask encoding: let the registry say so
        else:
            out[k] = _read_packed(r, child, cobj, cattrs, n_tasks=attrs["n-tasks"])
    return out


@_reader(ARCHIVE_TYPE, "1")
def _read_root(r: _Reader, name, obj, attrs):
    parts = {k: r.decode(f"/{k}", "dataset") for k in ("config", "per_task", "evaluations", "versions")}
    for k, kind in (("config", dict), ("per_task", list), ("evaluations", list), ("versions", dict)):
        if not isinstance(parts[k], kind):
            raise r.error(f"/{k} should hold a JSON {'object' if kind is dict else 'array'}")
    parts["memories"] = r.decode("/memory", "group")
    parts["masks"] = r.decode("/masks", "group") if "/masks" in r.manifest else None
    return parts


def _h5open(path) -> h5py.File:
    """Open read-only without HDF5 file locking (archives never change once renamed into place,
    and locking fails on some network file systems); older HDF5 builds lack the option."""
    try:
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError) as e:
        if "locking" not in str(e):
            raise
        return h5py.File(path, "r")


@contextmanager
def _guard(path):
    """Turn anything h5py (or a damaged file) raises into one ArchiveError."""
    try:
        yield
    except ArchiveError:
        raise
    except Exception as e:
        text = _one_line(e)
        problem = "the file is truncated" if "truncated file" in text else "cannot read the archive"
        raise ArchiveError(f"{path}: {problem} ({type(e).__name__}: {text}); {_DAMAGED}") from e


def _read(path, load: bool, verify: bool) -> dict:
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ArchiveError(f"{path}: is a folder, not an archive; pass the .h5 file")
    with _guard(path):
        if not h5py.is_hdf5(path):
            raise ArchiveError(f"{path}: not an HDF5 file; pass an archive written by supsup-hf")
        with _h5open(path) as f:
            r = _Reader(path, f, load, verify)
            raw = {k: f.attrs[k] for k in ("encoding-type", "encoding-version") if k in f.attrs}
            raw = {k: v.decode("ascii", "replace") if isinstance(v, bytes) else v for k, v in raw.items()}
            if raw.get("encoding-type") != ARCHIVE_TYPE:
                raise r.error("not a supsup-hopfield archive (no encoding-type "
                              f"{ARCHIVE_TYPE!r} on the root)", "pass an archive written by supsup-hf")
            version = raw.get("encoding-version")
            if (ARCHIVE_TYPE, version) not in _READERS:
                if isinstance(version, str) and version.isdigit() and int(version) > SCHEMA_VERSION:
                    raise r.error(f"archive schema version {version} is newer than this package "
                                  f"reads ({SCHEMA_VERSION})", "upgrade supsup-hopfield")
                raise r.error(f"unknown archive schema version {version!r} (this package reads "
                              f"{SCHEMA_VERSION})", "upgrade supsup-hopfield or check the file")
            attrs = r.attrs(f, "the root group")
            r.manifest = {"/manifest": attrs["manifest-sha256"]}
            manifest = r.decode("/manifest", "dataset")
            if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
                raise r.error("/manifest is not a JSON object of checksums")
            r.manifest = manifest
            parts = r.dispatch("/", f, attrs)
            parts["schema_version"] = int(version)
            return parts


def read_archive(path, packed_masks: bool = False) -> Archive:
    """Read and fully verify an archive. Raises ArchiveError for anything wrong with the file.
    Masks come back as bool arrays (tasks, *layer_shape), or as `PackedMasks` (8x smaller) with
    `packed_masks=True`."""
    p = _read(path, load=True, verify=True)
    masks = p["masks"]
    if masks is not None and not packed_masks:
        masks = {k: np.asarray(m) for k, m in masks.items()}
    return Archive(memories=p["memories"], masks=masks, config=p["config"],
                   per_task=p["per_task"], evaluations=p["evaluations"], versions=p["versions"])


def read_header(path, verify: bool = True) -> Header:
    """Everything but the big arrays. With verify=True (default) the arrays' checksums are still
    checked (read in blocks, not kept), so a damaged file fails here as in `read_archive`;
    verify=False reads only attributes and the JSON parts (fast, for huge files)."""
    p = _read(path, load=False, verify=verify)
    return Header(schema_version=p["schema_version"], memories=p["memories"], masks=p["masks"],
                  config=p["config"], per_task=p["per_task"], evaluations=p["evaluations"],
                  versions=p["versions"])


def load_memory(path, layer: str | None = None) -> "HopfieldMemory":
    """The memory of an archive: its only one, or the one named `layer`."""
    memories = read_archive(path).memories
    if layer is None:
        if len(memories) != 1:
            raise UserError(f"{path}: holds {len(memories)} memories ({', '.join(memories) or 'none'}); "
                            f"name one with layer=... or use read_archive")
        return next(iter(memories.values()))
    if layer not in memories:
        raise UserError(f"{path}: no memory named {layer!r}; it holds {', '.join(memories) or 'none'}")
    return memories[layer]


__all__ = ["SCHEMA_VERSION", "Archive", "Header", "MemoryInfo", "write_archive", "read_archive",
           "read_header", "save_memory", "load_memory", "software_versions"]
