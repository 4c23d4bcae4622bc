"""The on-disk format of a Fisher memory: versioned, atomic, checked."""

import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "keras_memgeom.FisherMemory"
FORMAT_VERSION = 1


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def write_memory_file(path, anchor, fisher, num_examples, estimator):
    """Writes a memory to `path` atomically (a temporary file, then rename).

    The file is a zip of `.npy` arrays and a `meta.json` with the format
    version, each variable's path, shape, dtype and checksum, the estimator
    and the number of examples.
    """
    path = os.fspath(path)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "num_examples": int(num_examples),
        "estimator": estimator,
        "variables": [
            {
                "path": name,
                "shape": list(anchor[name].shape),
                "dtype": str(anchor[name].dtype),
                "anchor_sha256": _digest(anchor[name]),
                "fisher_sha256": _digest(fisher[name]),
            }
            for name in anchor
        ],
    }
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".memory-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("meta.json", json.dumps(meta, indent=1))
            for i, name in enumerate(anchor):
                for kind, arrays in (("anchor", anchor), ("fisher", fisher)):
                    buffer = io.BytesIO()
                    np.save(buffer, arrays[name], allow_pickle=False)
                    z.writestr(f"{kind}/{i}.npy", buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load_array(raw):
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as error:
        raise EOFError(str(error)) from error


def read_memory_file(path):
    """Reads a memory written by `write_memory_file`.

    Returns:
        `(anchor, fisher, num_examples, estimator)`.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is corrupt or truncated, is not a memory, or
            was written by a newer format version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No memory file at {path!r}.")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("meta.json"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path!r} is not a keras_memgeom memory file.")
            if meta["version"] > FORMAT_VERSION:
                raise ValueError(
                    f"{path!r} was written by format version {meta['version']}; "
                    f"this keras_memgeom reads up to version {FORMAT_VERSION}. "
                    "Upgrade keras_memgeom to read it."
                )
            anchor, fisher = {}, {}
            for i, entry in enumerate(meta["variables"]):
                for kind, arrays in (("anchor", anchor), ("fisher", fisher)):
                    array = _load_array(z.read(f"{kind}/{i}.npy"))
                    if list(array.shape) != entry["shape"] or _digest(array) != entry[f"{kind}_sha256"]:
                        raise ValueError(
                            f"{path!r} is corrupt: the {kind} of {entry['path']} "
                            "does not match its recorded shape or checksum."
                        )
                    arrays[entry["path"]] = array
    except (zipfile.BadZipFile, zlib.error, KeyError, EOFError, json.JSONDecodeError, OSError) as error:
        raise ValueError(
            f"{path!r} is corrupt or truncated and was not read ({error})."
        ) from error
    return anchor, fisher, meta["num_examples"], meta.get("estimator")
