"""The on-disk format of a Fisher memory: versioned, atomic, checked."""

import hashlib
import io
import json
import math
import os
import zipfile
import zlib

import numpy as np

from keras_memgeom.src.memory.kronecker import EigenFactor
from keras_memgeom.src.utils.atomic_write import atomic_write
from keras_memgeom.src.utils.atomic_write import check_writable_file_path

FORMAT = "keras_memgeom.FisherMemory"
# Version 2 added Kronecker blocks; version 3 checksums the metadata itself
# (`num_examples`, the estimator, the list of variables), not only the
# arrays, and may hold truncated Kronecker factors (`EigenFactor`); version
# 4 may hold a diagonal input factor (an Embedding's, `a_shape` of one
# axis), which a version 3 reader would refuse as malformed; version 5 may
# hold grouped factors (a DepthwiseConv2D's block per channel, `a_shape` and
# `g_shape` of three axes); version 6 may hold a block's kernel axes (a
# kernel stored heads first, `axes`). Versions 1 to 5 are still read.
FORMAT_VERSION = 6

# Deflate never shrinks data more than about 1032:1; a member that claims
# more is lying about its size (a zip bomb) and is refused before reading.
_MAX_DEFLATE_RATIO = 1032
_MAX_META_BYTES = 64 * 2**20
# An .npy header: a 10-byte preamble at least, 64 KiB at most (format 1.0).
_MIN_NPY_HEADER_BYTES = 10
_MAX_NPY_HEADER_BYTES = 65536 + 16


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _meta_digest(meta):
    """The checksum of every metadata entry but the checksum itself."""
    canonical = json.dumps(
        {k: v for k, v in meta.items() if k != "meta_sha256"},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_memory_file(
    path, anchor, fisher, num_examples, estimator, kronecker=None
):
    """Writes a memory to `path` atomically (see `atomic_write`).

    The file is a zip of `.npy` arrays and a `meta.json` with the format
    version, each variable's path, shape, dtype and checksum, the estimator
    and the number of examples; a Kronecker-factored memory also lists each
    block (kernel and bias paths, the factors' shapes and checksums). A
    checksum of the metadata covers all of it, so a flipped number of
    examples is caught as surely as a flipped weight. It gets
    the permissions the user's umask gives new files; a failed write leaves
    `path` as it was and no temporary file behind.

    Raises:
        IsADirectoryError, FileNotFoundError, PermissionError: if `path` is
            a folder or its folder is missing or read-only, before any work.
    """
    path = check_writable_file_path(path, "memory file")
    kronecker = kronecker or {}
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
                "fisher_sha256": _digest(fisher[name])
                if name in fisher
                else None,
            }
            for name in anchor
        ],
    }
    if kronecker:
        meta["kronecker"] = [
            _block_meta(kernel, block) for kernel, block in kronecker.items()
        ]
    meta["meta_sha256"] = _meta_digest(meta)
    members = []
    for i, name in enumerate(anchor):
        members.append((f"anchor/{i}.npy", anchor[name]))
        if name in fisher:
            members.append((f"fisher/{i}.npy", fisher[name]))
    for j, block in enumerate(kronecker.values()):
        for kind in ("a", "g"):
            factor = getattr(block, kind)
            if isinstance(factor, EigenFactor):
                members += [
                    (f"kronecker_{kind}/{j}.npy", factor.vectors),
                    (f"kronecker_{kind}_values/{j}.npy", factor.values),
                ]
            else:
                members.append((f"kronecker_{kind}/{j}.npy", factor))
        if block.mask is not None:
            members.append((f"kronecker_mask/{j}.npy", block.mask))
    with (
        atomic_write(path, "memory file") as f,
        zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z,
    ):
        z.writestr("meta.json", json.dumps(meta, indent=1))
        for member, array in members:
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            z.writestr(member, buffer.getvalue())


def _block_meta(kernel, block):
    """A Kronecker block's metadata; a truncated factor (version 3) stores
    its eigenvectors as the factor (`{kind}_shape` is theirs), its
    eigenvalues as a second member and its remainder here."""
    meta = {
        "kernel": kernel,
        "bias": block.bias,
        "dtype": str(
            (
                block.a.vectors if isinstance(block.a, EigenFactor) else block.a
            ).dtype
        ),
        "mask_sha256": _digest(block.mask) if block.mask is not None else None,
        "axes": list(block.axes) if block.axes is not None else None,
    }
    for kind in ("a", "g"):
        factor = getattr(block, kind)
        truncated = isinstance(factor, EigenFactor)
        stored = factor.vectors if truncated else factor
        meta[f"{kind}_shape"] = list(stored.shape)
        meta[f"{kind}_sha256"] = _digest(stored)
        if truncated:
            meta[f"{kind}_rank"] = int(stored.shape[1])
            meta[f"{kind}_values_sha256"] = _digest(factor.values)
            meta[f"{kind}_remainder"] = float(factor.remainder)
    return meta


def _invalid(path, problem):
    return ValueError(f"{path!r} is not a valid memory file: {problem}.")


_DTYPES = ("float32", "float64", "float16")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_meta(path, meta):
    """Checks the metadata's structure; returns the variable entries."""
    if not isinstance(meta, dict):
        raise _invalid(
            path, f"its metadata is a {type(meta).__name__}, not an object"
        )
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a keras_memgeom memory file.")
    version = meta.get("version")
    if not _is_count(version) or version < 1:
        raise _invalid(
            path, f"its format version is {version!r}, not a whole number >= 1"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} was written by format version {version}; this "
            f"keras_memgeom reads up to version {FORMAT_VERSION}. Upgrade "
            "keras_memgeom to read it."
        )
    if version >= 3 and meta.get("meta_sha256") != _meta_digest(meta):
        raise ValueError(
            f"{path!r} is corrupt: its metadata (number of examples, "
            "estimator, variables) does not match its recorded checksum."
        )
    if not _is_count(meta.get("num_examples")) or meta["num_examples"] < 1:
        raise _invalid(
            path, f"its number of examples is {meta.get('num_examples')!r}"
        )
    entries = meta.get("variables")
    if not isinstance(entries, list):
        raise _invalid(path, "its metadata has no list of variables")
    seen = set()
    for entry in entries:
        keys = ("path", "shape", "dtype", "anchor_sha256", "fisher_sha256")
        if not isinstance(entry, dict) or not all(key in entry for key in keys):
            raise _invalid(
                path, f"a variable entry lacks one of {keys}: {entry!r}"
            )
        name, shape = entry["path"], entry["shape"]
        if not isinstance(name, str):
            raise _invalid(path, f"a variable path is {name!r}, not a string")
        if name in seen:
            raise _invalid(path, f"the variable {name!r} appears twice")
        seen.add(name)
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _invalid(path, f"the shape of {name!r} is {shape!r}")
        if entry["dtype"] not in _DTYPES:
            raise _invalid(path, f"the dtype of {name!r} is {entry['dtype']!r}")
    blocks = meta.get("kronecker", []) if version >= 2 else []
    if not isinstance(blocks, list):
        raise _invalid(path, "its Kronecker blocks are not a list")
    covered = set()
    for block in blocks:
        keys = (
            "kernel",
            "bias",
            "dtype",
            "a_shape",
            "g_shape",
            "a_sha256",
            "g_sha256",
        )
        if not isinstance(block, dict) or not all(key in block for key in keys):
            raise _invalid(
                path, f"a Kronecker block lacks one of {keys}: {block!r}"
            )
        for role in ("kernel", "bias"):
            name = block[role]
            if (role == "kernel" or name is not None) and (
                name not in seen or name in covered
            ):
                raise _invalid(path, f"a Kronecker block's {role} is {name!r}")
            covered.add(name)
        axes = block.get("axes")
        kernel = next(e for e in entries if e["path"] == block["kernel"])
        if axes is not None and (
            version < 6
            or not isinstance(axes, list)
            or not all(_is_count(axis) for axis in axes)
            or sorted(axes) != list(range(len(kernel["shape"])))
        ):
            raise _invalid(
                path, f"the kernel axes of {block['kernel']!r} are {axes!r}"
            )
        grouped = [
            isinstance(block[f"{kind}_shape"], list)
            and len(block[f"{kind}_shape"]) == 3
            for kind in ("a", "g")
        ]
        for kind in ("a", "g"):
            shape = block[f"{kind}_shape"]
            # A diagonal input factor (version 4) is stored as its diagonal;
            # grouped factors (version 5) as stacks, both or neither.
            axes = (1, 2) if kind == "a" and version >= 4 else (2,)
            axes += (3,) if version >= 5 and all(grouped) else ()
            if not (
                isinstance(shape, list)
                and len(shape) in axes
                and all(_is_count(d) for d in shape)
                and (len(shape) == 2 or block.get(f"{kind}_rank") is None)
            ):
                raise _invalid(
                    path,
                    f"the Kronecker factors of {block['kernel']!r} have shape "
                    f"{shape!r}",
                )
        for kind in ("a", "g") if version >= 3 else ():
            rank = block.get(f"{kind}_rank")
            if rank is None:
                continue
            remainder = block.get(f"{kind}_remainder")
            if (
                not _is_count(rank)
                or rank != block[f"{kind}_shape"][1]
                or not isinstance(block.get(f"{kind}_values_sha256"), str)
                or not isinstance(remainder, (int, float))
                or isinstance(remainder, bool)
                or not math.isfinite(remainder)
                or remainder < 0
            ):
                raise _invalid(
                    path,
                    f"the truncated Kronecker factor {kind} of "
                    f"{block['kernel']!r} has a malformed rank, eigenvalues "
                    "or remainder",
                )
        if block["dtype"] not in _DTYPES:
            raise _invalid(
                path,
                f"the Kronecker factors of {block['kernel']!r} are "
                f"{block['dtype']!r}",
            )
    for entry in entries:
        if (entry["fisher_sha256"] is None) != (entry["path"] in covered):
            raise _invalid(
                path,
                f"{entry['path']!r} has both or neither a diagonal Fisher and "
                "a block",
            )
    return entries, blocks


def _checked_info(path, z, member, min_bytes, max_bytes):
    """The member's zip entry, its sizes checked before any decompression."""
    try:
        info = z.getinfo(member)
    except KeyError:
        raise _invalid(path, f"it has no {member}") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _invalid(
            path,
            f"{member} uses an unsupported compression ({info.compress_type})",
        )
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise _invalid(
            path,
            f"{member} declares {info.file_size} bytes from "
            f"{info.compress_size} compressed bytes, more than compression can "
            "give",
        )
    if not min_bytes <= info.file_size <= max_bytes:
        raise _invalid(
            path,
            f"{member} declares {info.file_size} bytes where the metadata "
            f"allows {min_bytes} to {max_bytes}",
        )
    return info


def _read_array(path, z, member, entry):
    """Reads one `.npy` member, its header checked against the metadata."""
    dtype = np.dtype(entry["dtype"])
    nbytes = math.prod(entry["shape"]) * dtype.itemsize
    _checked_info(
        path,
        z,
        member,
        nbytes + _MIN_NPY_HEADER_BYTES,
        nbytes + _MAX_NPY_HEADER_BYTES,
    )
    with z.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, stored_dtype = read_header(f)
        except ValueError as error:
            raise _invalid(
                path, f"{member} is not a readable .npy array ({error})"
            ) from None
        if list(shape) != entry["shape"] or stored_dtype != dtype:
            raise _invalid(
                path,
                f"{member} holds a {stored_dtype} array of shape {shape} where "
                f"the metadata of {entry['path']!r} says {dtype} "
                f"{tuple(entry['shape'])}",
            )
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        raise EOFError(
            f"{member} holds {len(data)} bytes of data where {nbytes} are due"
        )
    order = "F" if fortran_order else "C"
    return (
        np.frombuffer(data, dtype=dtype)
        .reshape(entry["shape"], order=order)
        .copy()
    )


def _read_checked(path, z, member, entry, kind):
    array = _read_array(path, z, member, entry)
    if _digest(array) != entry[f"{kind}_sha256"]:
        raise ValueError(
            f"{path!r} is corrupt: the {kind} of {entry['path']} "
            "does not match its recorded shape or checksum."
        )
    return array


def _read_factor(path, z, block, j, kind):
    """One Kronecker factor of block `j`: a matrix, or an `EigenFactor`."""
    factor = _read_checked(
        path,
        z,
        f"kronecker_{kind}/{j}.npy",
        {
            "path": block["kernel"],
            "shape": block[f"{kind}_shape"],
            "dtype": block["dtype"],
            f"{kind}_sha256": block[f"{kind}_sha256"],
        },
        kind,
    )
    if block.get(f"{kind}_rank") is None:
        return factor
    values = _read_checked(
        path,
        z,
        f"kronecker_{kind}_values/{j}.npy",
        {
            "path": block["kernel"],
            "shape": [block[f"{kind}_rank"]],
            "dtype": block["dtype"],
            f"{kind}_values_sha256": block[f"{kind}_values_sha256"],
        },
        f"{kind}_values",
    )
    return EigenFactor(factor, values, block[f"{kind}_remainder"])


def read_memory_file(path):
    """Reads a memory written by `write_memory_file`.

    Every size is checked against the metadata and a bound before anything
    is decompressed, so a small file cannot make the reader allocate a
    huge array.

    Returns:
        `(anchor, fisher, num_examples, estimator, kronecker)`; `kronecker`
        maps a kernel's path to `(bias_path, a, g, mask, axes)` (empty for
        version 1), with `a` or `g` an `EigenFactor` where truncated
        (version 3) and `axes` a list where the kernel's axes are permuted
        (version 6), else `None`.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is corrupt or truncated, is not a memory, has
            malformed metadata (a wrong type, a duplicate variable, sizes
            that disagree), or was written by a newer format version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No memory file at {path!r}.")
    try:
        with zipfile.ZipFile(path) as z:
            _checked_info(path, z, "meta.json", 0, _MAX_META_BYTES)
            meta = json.loads(z.read("meta.json"))
            entries, blocks = _check_meta(path, meta)
            anchor, fisher, kronecker = {}, {}, {}
            for i, entry in enumerate(entries):
                for kind, arrays in (("anchor", anchor), ("fisher", fisher)):
                    if entry[f"{kind}_sha256"] is not None:
                        member = f"{kind}/{i}.npy"
                        arrays[entry["path"]] = _read_checked(
                            path, z, member, entry, kind
                        )
            for j, block in enumerate(blocks):
                a, g = (_read_factor(path, z, block, j, kind) for kind in "ag")
                mask = None
                if block.get("mask_sha256") is not None:
                    kernel_entry = next(
                        e for e in entries if e["path"] == block["kernel"]
                    )
                    # A grouped `g` stands for `groups * m` units.
                    units = math.prod(block["g_shape"][::2])
                    fan_in = math.prod(kernel_entry["shape"]) // units
                    mask_entry = {
                        "path": block["kernel"],
                        "shape": [fan_in, units],
                        "dtype": "float32",
                        "mask_sha256": block["mask_sha256"],
                    }
                    mask = _read_checked(
                        path, z, f"kronecker_mask/{j}.npy", mask_entry, "mask"
                    )
                kronecker[block["kernel"]] = (
                    block["bias"],
                    a,
                    g,
                    mask,
                    block.get("axes"),
                )
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        OSError,
    ) as error:
        raise ValueError(
            f"{path!r} is corrupt or truncated and was not read ({error})."
        ) from error
    return (
        anchor,
        fisher,
        meta["num_examples"],
        meta.get("estimator"),
        kronecker,
    )
