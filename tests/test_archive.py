"""HDF5 archives: round trips, checksums, damaged files (truncated, flipped bytes), atomic writes,
and `supsup-hf inspect` (docs/ARCHIVE.md)."""
import hashlib
import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import supsup_hopfield
from supsup_hopfield import archive as A
from supsup_hopfield.cli.main import app as cli_app
from supsup_hopfield.errors import ArchiveError, UserError
from supsup_hopfield.memory import HopfieldMemory
from supsup_hopfield.packed import PackedMasks, mask_sha256
from supsup_hopfield.rules import RULES


def pm(rng, n, d):
    return np.where(rng.random((n, d)) < 0.5, 1, -1).astype(np.int8)


def sample_archive(seed=0, dim=64, n=6) -> A.Archive:
    """Two memories, masks of two shapes (sizes not multiples of 8), config and metrics."""
    rng = np.random.default_rng(seed)
    masks = {"layer0": rng.random((n, dim)) < 0.5, "layer1": rng.random((n, 3, 7)) < 0.3}
    memories = {"layer0": HopfieldMemory(dim, "storkey").store(masks["layer0"]),
                "layer1": HopfieldMemory(21, "projection", "float64").store(masks["layer1"].reshape(n, -1))}
    per_task = [{"task": i, "accuracy": float(rng.random()), "seconds": np.float32(1.5),
                 "mask_sha256": mask_sha256([masks["layer0"][i], masks["layer1"][i]])} for i in range(n)]
    config = {"run": {"dataset": "permuted-fashion-mnist", "model": "hopnet", "widths": [dim, 21]},
              "base_network": {"architecture": "hopnet", "widths": [dim, 21], "outputs": 10, "seed": 0,
                               "init": "signed-constant"},
              "stream": {"name": "permuted-fashion-mnist", "seed": 0}, "tasks": n, "note": "ünïcode"}
    return A.Archive(memories=memories, masks=masks, config=config, per_task=per_task,
                     evaluations=[{"scenario": "GNu", "accuracy": 0.5, "nan": float("nan")}])


def assert_same(a: A.Archive, b: A.Archive):
    assert list(a.memories) == list(b.memories)
    for k in a.memories:
        x, y = a.memories[k], b.memories[k]
        assert (x.rule, x.n_stored, x.dim, x.dtype) == (y.rule, y.n_stored, y.dim, y.dtype)
        assert x.weights.tobytes() == y.weights.tobytes()
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        assert list(a.masks) == list(b.masks)
        for k in a.masks:
            assert b.masks[k].dtype == bool and b.masks[k].shape == np.shape(a.masks[k])
            assert np.array_equal(a.masks[k], b.masks[k])
    norm = lambda v: json.loads(json.dumps(v, default=A._json_default))  # noqa: E731
    assert json.dumps(norm(a.config), sort_keys=True) == json.dumps(b.config, sort_keys=True)
    assert json.dumps(norm(a.per_task), sort_keys=True) == json.dumps(b.per_task, sort_keys=True)
    assert json.dumps(norm(a.evaluations), sort_keys=True) == json.dumps(b.evaluations, sort_keys=True)  # NaN kept


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "run.h5"
    arc = sample_archive()
    A.write_archive(path, arc)
    return path, arc


def invoke(*args):
    return CliRunner().invoke(cli_app, [str(a) for a in args])


# ----------------------------------------------------------------------------- round trips

def test_round_trip_every_rule_and_dtype(tmp_path):
    rng = np.random.default_rng(1)
    mems = {f"{rule}-{dt}": HopfieldMemory(24, rule, dt).store(pm(rng, 5, 24))
            for rule in RULES for dt in ("float32", "float64")}
    mems["empty"] = HopfieldMemory(8, "hebbian")  # nothing stored yet
    arc = A.Archive(memories=mems)
    A.write_archive(tmp_path / "a.h5", arc)
    back = A.read_archive(tmp_path / "a.h5")
    assert_same(arc, back)
    assert back.masks is None
    for name, m in back.memories.items():  # the loaded memories answer as the saved ones
        probes = pm(rng, 8, m.dim)
        np.testing.assert_array_equal(m.stable(probes), mems[name].stable(probes))
        np.testing.assert_array_equal(m.recall(probes, seed=1), mems[name].recall(probes, seed=1))
    import importlib.metadata
    import platform
    assert back.versions == {"supsup-hopfield": supsup_hopfield.__version__, "python": platform.python_version(),
                             "numpy": np.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
                             "torch": importlib.metadata.version("torch")}


@pytest.mark.parametrize("shape", [(3, 13), (2, 3, 5), (4, 8), (1, 2, 2, 3), (0, 9), (2, 0), (5, 1)])
def test_round_trip_masks_of_any_shape(tmp_path, shape):
    rng = np.random.default_rng(2)
    masks = {"a": rng.random(shape) < 0.5, "ones": np.ones(shape, bool), "zeros": np.zeros(shape, bool)}
    arc = A.Archive(masks=masks, config={"x": [1, 2.5, None, True, "s"]}, per_task=[{"task": 0}])
    A.write_archive(tmp_path / "m.h5", arc)
    assert_same(arc, A.read_archive(tmp_path / "m.h5"))
    assert A.read_header(tmp_path / "m.h5").masks == {k: shape for k in masks}


def test_packed_rows_are_the_task_mask_sha256(saved):
    path, arc = saved
    with h5py.File(path, "r") as f:
        for t, rec in enumerate(arc.per_task):
            rows = b"".join(f["masks"][k][t].tobytes() for k in ("layer0", "layer1"))
            assert hashlib.sha256(rows).hexdigest() == rec["mask_sha256"]
    m = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], bool)  # -> bytes 0xB0 0x80
    assert mask_sha256([m]) == hashlib.sha256(b"\xb0\x80").hexdigest()
    assert mask_sha256([m[:8], np.ones((2, 2), int)]) == hashlib.sha256(b"\xb0\xf0").hexdigest()


def test_header_and_single_memory(saved, tmp_path):
    path, arc = saved
    h = A.read_header(path)
    assert h.schema_version == A.SCHEMA_VERSION == 1
    assert h.memories["layer0"] == A.MemoryInfo("storkey", 64, 6, "float32")
    assert h.memories["layer1"] == A.MemoryInfo("projection", 21, 6, "float64")
    assert h.masks == {"layer0": (6, 64), "layer1": (6, 3, 7)}
    assert [r["task"] for r in h.per_task] == list(range(6))

    mem = arc.memories["layer0"]
    A.save_memory(tmp_path / "one.h5", mem)
    back = A.load_memory(tmp_path / "one.h5")
    assert back.weights.tobytes() == mem.weights.tobytes() and back.n_stored == mem.n_stored
    assert A.load_memory(path, "layer1").rule == "projection"
    with pytest.raises(UserError, match=r"holds 2 memories \(layer0, layer1\); name one with layer=\.\.\."):
        A.load_memory(path)
    with pytest.raises(UserError, match=r"no memory named 'nope'; it holds layer0, layer1$"):
        A.load_memory(path, "nope")
    assert h.versions == A.read_archive(path).versions and h.versions["numpy"] == np.__version__


def test_bad_input_is_refused_before_writing(tmp_path):
    p = tmp_path / "x.h5"
    two = np.zeros((2, 3), bool)
    bad = [(A.Archive(masks={"a": np.full((2, 3), 2)}), "masks['a']: expected a boolean (or 0/1) mask, got dtype int64"),
           (A.Archive(masks={"a": np.zeros(3, bool)}), "masks['a']: expected shape (tasks, *layer_shape), got (3,)"),
           (A.Archive(masks={"a": two, "b": np.zeros((3, 3), bool)}),
            "masks: every layer needs the same number of tasks, got {'a': 2, 'b': 3}"),
           (A.Archive(config={"f": open}), "config: value of type builtin_function_or_method is not "
                                           "JSON-serialisable; pass plain dicts, lists, strings and numbers"),
           (A.Archive(per_task=[{"f": open}]), "per_task: value of type builtin_function_or_method is not "
                                               "JSON-serialisable; pass plain dicts, lists, strings and numbers"),
           (A.Archive(memories={"m": object()}),
            "memories['m']: expected a HopfieldMemory with square float32/float64 weights or a KeyedMemory, got object"),
           (A.Archive(memories={"m": HopfieldMemory(4, "storkey")}, per_task="x"),
            "per_task: expected a list of dicts, got str"),
           (A.Archive(evaluations=[{}, 3]), "evaluations: expected a list of dicts, got a list holding int"),
           (A.Archive(config=[1]), "config: expected a dict, got list"),
           (7, "archive: expected an Archive, got int")]
    for name in ("", ".", "a/b", "a\0b", 5):
        bad.append((A.Archive(masks={name: two}), f"masks: layer names must be non-empty strings without '/', "
                                                  f"got {name!r}"))
        bad.append((A.Archive(memories={name: HopfieldMemory(4, "storkey")}),
                    f"memories: layer names must be non-empty strings without '/', got {name!r}"))
    for arc, msg in bad:
        with pytest.raises(ValueError) as e:
            A.write_archive(p, arc)
        assert str(e.value) == msg, (str(e.value), msg)
    assert A.write_archive(p, A.Archive(masks={"a": two})) is None and A.read_header(p).masks == {"a": (2, 3)}
    p.unlink()
    square = HopfieldMemory(4, "storkey")
    square._W = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"^memories\['m'\]: expected a HopfieldMemory with square"):
        A.write_archive(p, A.Archive(memories={"m": square}))
    with pytest.raises(UserError, match="does not exist"):
        A.write_archive(tmp_path / "no" / "x.h5", A.Archive())
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- damaged files

def raw_data_bytes(path) -> np.ndarray:
    """Mask of the file's bytes that are dataset contents (the rest: HDF5 metadata)."""
    is_data = np.zeros(os.path.getsize(path), bool)
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                start = obj.id.get_offset()
                is_data[start:start + obj.id.get_storage_size()] = True
        f.visititems(visit)
    return is_data


def test_truncated_or_flipped_files_load_identically_or_fail(saved, tmp_path):
    path, arc = saved
    data = path.read_bytes()
    n = len(data)
    rng = np.random.default_rng(1234)
    is_data = raw_data_bytes(path)
    meta = np.flatnonzero(~is_data)
    assert 0.1 < is_data.mean() < 0.9  # both regions are really sampled
    cuts = np.unique(np.linspace(1, n - 1, 20).astype(int) + rng.integers(-50, 50, 20)).clip(0, n - 1)
    flips = np.concatenate([np.arange(0, 4), rng.choice(meta, 26, replace=False),  # header, metadata
                            np.linspace(0, n - 1, 20).astype(int)])  # and everywhere
    cases = [("cut", int(c), data[:c]) for c in cuts]
    for off in flips:
        d = bytearray(data)
        d[off] ^= int(rng.integers(1, 256))
        cases.append(("flip", int(off), bytes(d)))
    assert len(cases) == 70
    failed = 0
    for kind, off, blob in cases:
        p = tmp_path / f"{kind}{off}.h5"
        p.write_bytes(blob)
        try:
            back = A.read_archive(p)
        except ArchiveError as e:
            failed += 1
            assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
            r = invoke("inspect", p)
            assert r.exit_code == 2 and r.stdout == "", (kind, off, r.output)
            assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("Error: ")
            continue
        assert_same(arc, back)  # unused bytes: the same data, never different data
    assert failed >= 40  # nearly every damage is detected rather than harmless


def test_not_hdf5_and_not_an_archive(saved, tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("hello\n")
    with pytest.raises(ArchiveError, match="text.h5: not an HDF5 file; "):
        A.read_archive(p)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ArchiveError) as e:
        A.read_header(tmp_path / "other.h5")
    assert str(e.value) == (f"{tmp_path / 'other.h5'}: not a supsup-hopfield archive (no encoding-type "
                            f"{A.ARCHIVE_TYPE!r} on the root); pass an archive written by supsup-hf")
    with pytest.raises(ArchiveError, match="no such file"):
        A.read_archive(tmp_path / "missing.h5")
    with pytest.raises(ArchiveError, match=r"is a folder, not an archive; pass the \.h5 file$"):
        A.read_archive(tmp_path)
    A.write_archive(tmp_path / "empty.h5", A.Archive())
    with pytest.raises(UserError, match=r"holds 0 memories \(none\); name one"):
        A.load_memory(tmp_path / "empty.h5")
    with pytest.raises(UserError, match=r"no memory named 'x'; it holds none$"):
        A.load_memory(tmp_path / "empty.h5", "x")
    (tmp_path / "cut.h5").write_bytes(saved[0].read_bytes()[:5000])
    with pytest.raises(ArchiveError, match="cut.h5: the file is truncated"):
        A.read_archive(tmp_path / "cut.h5")


def test_newer_schema_and_unknown_encoding(tmp_path, monkeypatch):
    monkeypatch.setitem(A._WRITE_VERSION, A.ARCHIVE_TYPE, "2")
    A.write_archive(tmp_path / "new.h5", sample_archive(n=2))
    with pytest.raises(ArchiveError, match=r"schema version 2 is newer than this package reads \(1\); upgrade"):
        A.read_archive(tmp_path / "new.h5")
    for odd in ("0", "x1", ""):  # older or not a number: not "newer", just unknown
        monkeypatch.setitem(A._WRITE_VERSION, A.ARCHIVE_TYPE, odd)
        A.write_archive(tmp_path / "odd.h5", sample_archive(n=2))
        with pytest.raises(ArchiveError, match=f"unknown archive schema version '{odd}' \\(this package reads 1\\); "
                                               "upgrade supsup-hopfield or check the file"):
            A.read_archive(tmp_path / "odd.h5")
    monkeypatch.setitem(A._WRITE_VERSION, A.ARCHIVE_TYPE, "1")
    monkeypatch.setitem(A._WRITE_VERSION, "hopfield-memory", "7")
    A.write_archive(tmp_path / "mem7.h5", sample_archive(n=2))
    with pytest.raises(ArchiveError, match="/memory/layer0 has encoding 'hopfield-memory' version '7', "
                                           "this package reads versions 1, 2; upgrade supsup-hopfield"):
        A.read_archive(tmp_path / "mem7.h5")


def copy_of(saved, tmp_path, name):
    p = tmp_path / name
    p.write_bytes(saved[0].read_bytes())
    return p


def test_missing_misshaped_and_tampered_objects(saved, tmp_path):
    p = copy_of(saved, tmp_path, "missing.h5")
    with h5py.File(p, "r+") as f:
        del f["memory/layer0/weights"]
    with pytest.raises(ArchiveError, match="missing dataset /memory/layer0/weights"):
        A.read_archive(p)

    p = copy_of(saved, tmp_path, "shape.h5")
    with h5py.File(p, "r+") as f:  # same attributes (checksums included), wrong shape
        attrs = dict(f["memory/layer0/weights"].attrs)
        del f["memory/layer0/weights"]
        ds = f.create_dataset("memory/layer0/weights", data=np.zeros((32, 64), "<f4"))
        ds.attrs.update(attrs)
    with pytest.raises(ArchiveError, match=r"weights has shape \(32, 64\), expected \(64, 64\)"):
        A.read_archive(p)

    p = copy_of(saved, tmp_path, "data.h5")
    with h5py.File(p, "r+") as f:
        f["memory/layer0/weights"][3, 4] += 1
    with pytest.raises(ArchiveError, match="checksum mismatch in the data of /memory/layer0/weights; "):
        A.read_archive(p)
    A.read_header(p, verify=False)  # attributes only: still readable
    with pytest.raises(ArchiveError, match="checksum mismatch"):
        A.read_header(p)

    p = copy_of(saved, tmp_path, "attr.h5")
    with h5py.File(p, "r+") as f:
        f["memory/layer0"].attrs["n-stored"] = np.int64(7)
    with pytest.raises(ArchiveError, match="checksum mismatch in the attributes of /memory/layer0"):
        A.read_header(p, verify=False)

    p = copy_of(saved, tmp_path, "json.h5")
    with h5py.File(p, "r+") as f:
        text = f["per_task"][()].replace(b'"task":0', b'"task":9')
        attrs = dict(f["per_task"].attrs)
        del f["per_task"]
        f.create_dataset("per_task", data=np.bytes_(text)).attrs.update(attrs)
    with pytest.raises(ArchiveError, match="checksum mismatch in the data of /per_task"):
        A.read_header(p, verify=False)


def test_tampering_that_keeps_every_objects_own_checksums(saved, tmp_path):
    """Objects swapped, moved in from another archive, or removed: each object still checks out
    on its own, so only the manifest can tell; reading fails, and inspect/eval say so in one line."""
    swapped = copy_of(saved, tmp_path, "swapped.h5")
    with h5py.File(swapped, "r+") as f:  # the two memories trade places
        f.move("memory/layer0", "memory/tmp")
        f.move("memory/layer1", "memory/layer0")
        f.move("memory/tmp", "memory/layer1")
    with pytest.raises(ArchiveError, match="attributes of /memory/layer0 do not match the manifest"):
        A.read_archive(swapped)

    other = tmp_path / "other.h5"
    A.write_archive(other, sample_archive(seed=9))
    foreign = copy_of(saved, tmp_path, "foreign.h5")
    with h5py.File(foreign, "r+") as f, h5py.File(other, "r") as g:  # a valid memory of another run
        del f["memory/layer0"]
        g.copy(g["memory/layer0"], f["memory"], name="layer0")
    with pytest.raises(ArchiveError, match="attributes of /memory/layer0(/weights)? do not match the manifest"):
        A.read_archive(foreign)
    masks_in = copy_of(saved, tmp_path, "masks_in.h5")
    with h5py.File(masks_in, "r+") as f, h5py.File(other, "r") as g:  # the masks of another run
        del f["masks/layer1"]
        g.copy(g["masks/layer1"], f["masks"], name="layer1")
    with pytest.raises(ArchiveError, match="attributes of /masks/layer1 do not match the manifest"):
        A.read_archive(masks_in)

    removed = copy_of(saved, tmp_path, "removed.h5")
    with h5py.File(removed, "r+") as f:
        del f["memory/layer1"]
    with pytest.raises(ArchiveError, match="missing memory /memory/layer1"):
        A.read_archive(removed)

    for path in (swapped, foreign, removed):
        for args in (("inspect", path), ("eval", path, "--method", "gg")):
            r = invoke(*args)
            assert r.exit_code == 2, r.output
            assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
            assert "the file is damaged" in r.output or "missing memory" in r.output


# ----------------------------------------------------------------------------- atomic writes

def test_interrupted_write_keeps_the_old_file(saved, tmp_path, monkeypatch):
    p = copy_of(saved, tmp_path, "run.h5")
    before, listing = p.read_bytes(), sorted(os.listdir(tmp_path))

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(A._Writer, "masks", boom)  # after the memories are written
    with pytest.raises(RuntimeError, match="disk on fire"):
        A.write_archive(p, sample_archive(seed=5))
    with pytest.raises(RuntimeError):
        A.write_archive(tmp_path / "new.h5", sample_archive(seed=5))
    monkeypatch.undo()
    monkeypatch.setattr(A.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(UserError, match="cannot write the archive .*No space left"):
        A.write_archive(p, sample_archive(seed=5))
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing  # no temporary left behind
    monkeypatch.undo()
    A.write_archive(p, sample_archive(seed=5))  # a finished write replaces it
    assert_same(sample_archive(seed=5), A.read_archive(p))


# ----------------------------------------------------------------------------- inspect

def test_inspect_text_and_json(saved):
    path, arc = saved
    r = invoke("inspect", path)
    assert r.exit_code == 0, r.output
    for text in ("schema version  1", "tasks finished  6", "permuted-fashion-mnist", "hopnet",
                 "storkey", "projection", "mask_sha256", arc.per_task[0]["mask_sha256"][:16]):
        assert text in r.stdout
    r = invoke("inspect", path, "--json")
    s = json.loads(r.stdout)
    assert s["schema_version"] == 1 and s["tasks"] == 6 and s["dataset"] == "permuted-fashion-mnist"
    assert s["model"] == "hopnet"
    assert s["memory"]["layer0"] == {"rule": "storkey", "dim": 64, "n_stored": 6, "dtype": "float32"}
    assert [t["mask_sha256"] for t in s["per_task"]] == [t["mask_sha256"] for t in arc.per_task]
    assert {"task", "accuracy"} <= set(s["per_task"][0]) and s["evaluations"][0]["scenario"] == "GNu"


def test_inspect_bad_files_one_line_exit_2(tmp_path):
    (tmp_path / "t.h5").write_text("not hdf5")
    for p in (tmp_path / "t.h5", tmp_path / "missing.h5"):
        r = invoke("inspect", p)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("shape", [(3, 13), (2, 3, 5), (4, 8), (0, 9)])
def test_packed_masks_are_the_archive_rows(tmp_path, shape):
    """PackedMasks holds exactly the rows an archive stores: unpacking gives the bool masks back,
    each row hashes like `mask_sha256`, and writing packed or bool masks gives the same archive."""
    masks = np.random.default_rng(3).random(shape) < 0.5
    packed = PackedMasks.pack(masks)
    assert packed.shape == shape and len(packed) == shape[0] and packed.bits.shape[1] == -(-np.prod(shape[1:]) // 8)
    assert np.array_equal(np.asarray(packed), masks) and np.array_equal(packed[1:3], masks[1:3])
    for t in range(shape[0]):
        assert np.array_equal(packed[t], masks[t])
        assert hashlib.sha256(packed.bits[t].tobytes()).hexdigest() == mask_sha256([masks[t]])
    A.write_archive(tmp_path / "p.h5", A.Archive(masks={"m": packed}))
    A.write_archive(tmp_path / "b.h5", A.Archive(masks={"m": masks}))
    for name in ("p.h5", "b.h5"):
        back = A.read_archive(tmp_path / name, packed_masks=True).masks["m"]
        assert isinstance(back, PackedMasks) and np.array_equal(back.bits, packed.bits)
        assert np.array_equal(A.read_archive(tmp_path / name).masks["m"], masks)


def test_packed_masks_reject_wrong_rows():
    with pytest.raises(ValueError, match="uint8 bits of shape"):
        PackedMasks(np.zeros((2, 3), np.uint8), (13,))  # 13 bits need 2 bytes
    with pytest.raises(ValueError, match="uint8 bits of shape"):
        PackedMasks(np.zeros((2, 2), np.int16), (13,))
    with pytest.raises(ValueError, match="padding bits"):
        PackedMasks(np.array([[0, 1]], np.uint8), (13,))  # bit 16 of a 13-bit mask
    with pytest.raises(ValueError, match=r"^masks: expected shape \(tasks, \*mask_shape\), got \(3,\)$"):
        PackedMasks.pack(np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"^masks: expected a boolean \(or 0/1\) mask, got dtype int64$"):
        PackedMasks.pack(np.full((2, 3), 2))


def test_packed_masks_unpack_like_an_array():
    masks = np.random.default_rng(3).random((4, 3, 5)) < 0.5
    packed = PackedMasks.pack(masks)
    assert np.array_equal(np.asarray(packed), masks) and np.array_equal(np.array(packed, copy=True), masks)
    as_bytes = np.asarray(packed, dtype=np.uint8)
    assert as_bytes.dtype == np.uint8 and np.array_equal(as_bytes, masks.astype(np.uint8))
    with pytest.raises(ValueError, match=r"^packed masks: unpacking to bool always copies; call np\.asarray "
                                         r"without copy=False$"):
        np.asarray(packed, copy=False)


def test_an_archive_written_by_an_earlier_version_still_reads():
    """tests/data/run-hopnet-64-526d08b.h5 was written by `supsup-hf train --tasks 3 --steps 20
    --model hopnet --widths 64,64 --dataset split-fashion-mnist` at commit 526d08b. It reads, its
    masks hash to the recorded mask_sha256, and today's code rebuilds its memories bit for bit
    from its masks (so it would also have trained the same memories)."""
    from pathlib import Path

    from supsup_hopfield.run import replay_memories

    path = Path(__file__).parent / "data" / "run-hopnet-64-526d08b.h5"
    arc = A.read_archive(path)
    packed = A.read_archive(path, packed_masks=True)
    assert len(arc.per_task) == 3 and sorted(arc.memories) == ["layer0", "layer1"]
    for t, rec in enumerate(arc.per_task):
        assert mask_sha256([arc.masks["layer0"][t], arc.masks["layer1"][t]]) == rec["mask_sha256"]
        assert np.array_equal(packed.masks["layer1"][t], arc.masks["layer1"][t])
    again = replay_memories(arc.config, arc.masks, "projection-zd", 3)
    for name, mem in arc.memories.items():
        assert mem.n_stored == 3 and again[name].weights.tobytes() == mem.weights.tobytes()


def test_causes_are_quoted_on_one_line_of_at_most_200_characters():
    assert A._one_line(OSError("disk\n   full")) == "disk full"
    assert A._one_line(KeyError()) == "KeyError"
    assert A._one_line(ValueError("x" * 200)) == "x" * 200
    assert A._one_line(ValueError("y" * 201)) == "y" * 197 + "..."


@pytest.mark.parametrize("block", [1, 40, 1 << 24])
def test_header_verification_in_blocks_sees_every_row(tmp_path, monkeypatch, block):
    """read_header(verify=True) checks big datasets block by block without loading them: a byte
    flipped in the last row of a tall mask dataset is found whatever the block size."""
    monkeypatch.setattr(A, "_HASH_BLOCK", block)
    masks = np.random.default_rng(0).random((50, 3, 7)) < 0.5  # 50 rows of 3 bytes: taller than wide
    path = tmp_path / "tall.h5"
    A.write_archive(path, A.Archive(masks={"layer0": masks}))
    assert A.read_header(path).masks == {"layer0": (50, 3, 7)}
    with h5py.File(path, "r+") as f:
        ds = f["masks/layer0"]
        row = ds[49]
        row[0] ^= 0x80
        ds[49] = row
    with pytest.raises(ArchiveError, match="checksum mismatch in the data of /masks/layer0"):
        A.read_header(path)
    assert A.read_header(path, verify=False).masks == {"layer0": (50, 3, 7)}
