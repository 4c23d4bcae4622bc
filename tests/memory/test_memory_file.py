"""The memory file: atomic writes, and reads that refuse malformed files."""

import hashlib
import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest

from keras_memgeom import FisherMemory
from keras_memgeom.src.memory import memory_file


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _format_1_file(path, names=None, **meta_changes):
    """Writes a format-1 file by hand: `meta.json` and one `.npy` per array."""
    rng = np.random.default_rng(0)
    names = names or ["dense/kernel", "dense/bias"]
    arrays = {
        name: (rng.normal(size=(3, 2)).astype("float32"),) * 2 for name in names
    }
    meta = {
        "format": "keras_memgeom.FisherMemory",
        "version": 1,
        "num_examples": 40,
        "estimator": "exact",
        "variables": [
            {
                "path": name,
                "shape": [3, 2],
                "dtype": "float32",
                "anchor_sha256": hashlib.sha256(
                    arrays[name][0].tobytes()
                ).hexdigest(),
                "fisher_sha256": hashlib.sha256(
                    np.abs(arrays[name][1]).tobytes()
                ).hexdigest(),
            }
            for name in names
        ],
    }
    meta.update(meta_changes)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.json", json.dumps(meta))
        for i, name in enumerate(names):
            z.writestr(f"anchor/{i}.npy", _npy(arrays[name][0]))
            z.writestr(f"fisher/{i}.npy", _npy(np.abs(arrays[name][1])))
    return arrays


def _memory():
    return FisherMemory(
        {"w": np.ones((3, 2))}, {"w": np.full((3, 2), 0.5)}, num_examples=10
    )


def test_format_1_files_keep_loading(tmp_path):
    arrays = _format_1_file(tmp_path / "old.memory")
    memory = FisherMemory.load(tmp_path / "old.memory")
    assert (
        memory.paths == ["dense/kernel", "dense/bias"]
        and memory.num_examples == 40
    )
    np.testing.assert_array_equal(
        memory.anchor["dense/kernel"], arrays["dense/kernel"][0]
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"version": "1"}, "format version is '1', not a whole number"),
        ({"num_examples": -3}, "number of examples is -3"),
        ({"variables": {"dense/kernel": {}}}, "no list of variables"),
    ],
)
def test_malformed_metadata_is_refused(tmp_path, changes, message):
    _format_1_file(tmp_path / "bad.memory", **changes)
    with pytest.raises(ValueError, match=message):
        FisherMemory.load(tmp_path / "bad.memory")


def test_metadata_that_is_a_list_is_refused(tmp_path):
    path = tmp_path / "list.memory"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "meta.json", json.dumps([{"format": "keras_memgeom.FisherMemory"}])
        )
    with pytest.raises(ValueError, match="metadata is a list, not an object"):
        FisherMemory.load(path)


def test_a_duplicate_variable_path_is_refused(tmp_path):
    _format_1_file(tmp_path / "twice.memory", ["a", "b", "a", "c"])
    with pytest.raises(ValueError, match="variable 'a' appears twice"):
        FisherMemory.load(tmp_path / "twice.memory")


def test_a_small_file_declaring_a_huge_array_is_refused_before_reading(
    tmp_path, monkeypatch
):
    path = tmp_path / "bomb.memory"
    _format_1_file(path)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("meta.json"))
        members = {name: z.read(name) for name in z.namelist()}
    huge = [50_000, 50_000]  # 10 GB of float32
    meta["variables"][0]["shape"] = huge
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": tuple(huge)}
    )
    members["anchor/0.npy"] = header.getvalue() + b"\0" * 64
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)

    def no_allocation(*args, **kwargs):
        raise AssertionError(
            "the reader decoded an array it should have refused"
        )

    monkeypatch.setattr(memory_file.np, "frombuffer", no_allocation)
    with pytest.raises(
        ValueError, match=r"anchor/0.npy declares \d+ bytes where the metadata"
    ):
        FisherMemory.load(path)


def test_a_member_claiming_more_than_compression_can_give_is_refused(tmp_path):
    path = tmp_path / "lying.memory"
    _format_1_file(path)
    raw = bytearray(path.read_bytes())
    # The central directory entry of anchor/0.npy: its uncompressed size
    # sits 24 bytes after the entry's signature.
    entry = raw.index(b"anchor/0.npy", raw.index(b"PK\x01\x02")) - 46
    raw[entry + 24 : entry + 28] = struct.pack("<I", 4_000_000_000)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="more than compression can give"):
        FisherMemory.load(path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_saved_file_follows_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        _memory().save(tmp_path / "a.memory")
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "a.memory").st_mode & 0o777 == mode


def test_a_failed_save_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(memory_file.np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        _memory().save(tmp_path / "a.memory")
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    stale = tmp_path / ".a.memory.999999999.x1y2.tmp"  # no such process
    stale.write_bytes(b"half a file")
    _memory().save(tmp_path / "a.memory")
    assert os.listdir(tmp_path) == ["a.memory"]
    assert FisherMemory.load(tmp_path / "a.memory").num_examples == 10


def test_saving_to_a_folder_or_a_missing_folder_fails_before_any_work(
    tmp_path, monkeypatch
):
    def no_work(*args, **kwargs):
        raise AssertionError(
            "the memory was serialized before the path was checked"
        )

    monkeypatch.setattr(memory_file, "_digest", no_work)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        _memory().save(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _memory().save(tmp_path / "missing" / "a.memory")


def _rewrite_meta(path, change):
    """Rewrites `meta.json` of a saved file with `change(meta)`, arrays kept."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    meta = json.loads(members["meta.json"])
    change(meta)
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _assert_a_consistent_edit_is_refused(memory, path, change, match):
    """Saves `memory`, edits its metadata by `change` with a matching
    checksum (as an older writer's file would be), and expects a refusal."""
    memory.save(path)

    def edited(meta):
        change(meta)
        meta["meta_sha256"] = memory_file._meta_digest(meta)

    _rewrite_meta(path, edited)
    with pytest.raises(ValueError, match=match):
        FisherMemory.load(path)


@pytest.mark.parametrize(
    "key, value",
    [("num_examples", 11), ("estimator", "empirical"), ("extra", 1)],
)
def test_flipped_metadata_is_refused_as_corrupt(tmp_path, key, value):
    path = tmp_path / "a.memory"
    _memory().save(path)
    _rewrite_meta(path, lambda meta: meta.update({key: value}))
    with pytest.raises(ValueError, match="corrupt: its metadata"):
        FisherMemory.load(path)


def test_saved_files_are_of_the_current_version_and_checksummed(tmp_path):
    _memory().save(tmp_path / "a.memory")
    with zipfile.ZipFile(tmp_path / "a.memory") as z:
        meta = json.loads(z.read("meta.json"))
    assert meta["version"] == memory_file.FORMAT_VERSION == 6
    digest = meta.pop("meta_sha256")
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()


def test_format_2_files_without_a_metadata_checksum_keep_loading(tmp_path):
    # A Kronecker-factored memory as version 2 wrote it.
    a = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    g = np.array([[1.0, 0.2], [0.2, 3.0]])
    memory = FisherMemory(
        {"k": np.ones((2, 2)), "b": np.zeros(2)},
        {},
        num_examples=7,
        kronecker={"k": ("b", a, g)},
    )
    path = tmp_path / "v2.memory"
    memory.save(path)

    def as_version_2(meta):
        meta["version"] = 2
        del meta["meta_sha256"]

    _rewrite_meta(path, as_version_2)
    loaded = FisherMemory.load(path)
    assert loaded.num_examples == 7
    np.testing.assert_array_equal(loaded.kronecker["k"].a, a)
    np.testing.assert_array_equal(loaded.kronecker["k"].g, g)


def test_a_diagonal_input_factor_needs_version_4(tmp_path):
    # An Embedding's `a` is stored as its diagonal; a file that claims an
    # older version, or a diagonal output factor, is refused.
    memory = FisherMemory(
        {"e": np.ones((3, 2))},
        {},
        num_examples=5,
        kronecker={"e": (None, np.array([0.5, 0.0, 0.5]), np.eye(2))},
    )
    path = tmp_path / "diagonal.memory"
    memory.save(path)
    loaded = FisherMemory.load(path)
    np.testing.assert_array_equal(loaded.kronecker["e"].a, [0.5, 0.0, 0.5])

    _assert_a_consistent_edit_is_refused(
        memory,
        path,
        lambda meta: meta.update(version=3),
        r"factors of 'e' have shape \[3\]",
    )
    _assert_a_consistent_edit_is_refused(
        memory,
        path,
        lambda meta: meta["kronecker"][0].update(g_shape=[2]),
        r"factors of 'e' have shape \[2\]",
    )


def test_grouped_factors_need_version_5_and_come_in_pairs(tmp_path):
    # A DepthwiseConv2D's block per channel: `a` and `g` stacks of three
    # axes, both; a file claiming version 4, or with one stack, is refused.
    a = np.stack([np.eye(3), 2.0 * np.eye(3)])  # 2 x 1 taps and the bias
    g = np.stack([np.eye(2), [[1.0, 0.5], [0.5, 1.0]]])
    memory = FisherMemory(
        {"k": np.ones((2, 1, 2, 2)), "b": np.zeros(4)},
        {},
        num_examples=5,
        kronecker={"k": ("b", a, g)},
    )
    path = tmp_path / "grouped.memory"
    memory.save(path)
    loaded = FisherMemory.load(path)
    np.testing.assert_array_equal(loaded.kronecker["k"].a, a)
    np.testing.assert_array_equal(loaded.kronecker["k"].g, g)

    for change in (
        lambda meta: meta.update(version=4),
        lambda meta: meta["kronecker"][0].update(g_shape=[4, 4]),
    ):
        _assert_a_consistent_edit_is_refused(
            memory, path, change, r"factors of 'k' have shape \[2, 3"
        )


def test_kernel_axes_need_version_6_and_a_permutation(tmp_path):
    # A heads-first kernel `(heads, dim, head_dim)`: its block's axes are
    # kept; a file claiming version 5 with axes, or axes that do not
    # permute the kernel's, is refused; so is a memory built with them.
    memory = FisherMemory(
        {"k": np.ones((2, 3, 1))},
        {},
        num_examples=5,
        kronecker={"k": (None, np.eye(3), np.eye(2), None, (1, 0, 2))},
    )
    path = tmp_path / "heads.memory"
    memory.save(path)
    assert FisherMemory.load(path).kronecker["k"].axes == (1, 0, 2)
    for change in (
        lambda meta: meta.update(version=5),
        lambda meta: meta["kronecker"][0].update(axes=[1, 1, 2]),
    ):
        _assert_a_consistent_edit_is_refused(
            memory, path, change, r"kernel axes of 'k' are \[1, [01], 2\]"
        )
    with pytest.raises(ValueError, match=r"axes \(0, 1\) of k are not"):
        FisherMemory(
            {"k": np.ones((2, 3, 1))},
            {},
            num_examples=5,
            kronecker={"k": (None, np.eye(3), np.eye(2), None, (0, 1))},
        )
