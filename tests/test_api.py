"""The public API is documented: in the API reference, and in docstrings.

The public names are the `__all__` of the package and of its public
subpackages. Each must be documented in `docs/api/*.md` (a `::: path` entry
resolving to the same object, or, for a module or a constant, its name);
each class and function must have a docstring with a one-sentence summary
line, an `Example` section with code, and an `Args:` section when it takes
parameters (for a class, those of its constructor).
"""

import dataclasses
import glob
import importlib
import inspect
import os
import re
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = [
    "keras_memgeom",
    "keras_memgeom.memory",
    "keras_memgeom.callbacks",
    "keras_memgeom.frontal_lobe",
    "keras_memgeom.layers",
    "keras_memgeom.continual",
    "keras_memgeom.merging",
    "keras_memgeom.pruning",
    "keras_memgeom.symmetry",
    "keras_memgeom.backend",
]


def _public_names():
    """`(package, name)` for every name of every public `__all__`."""
    return [
        (package, name)
        for package in PACKAGES
        for name in importlib.import_module(package).__all__
    ]


def _public_callables():
    """One `(public path, object)` per public class or function."""
    seen = {}
    for package, name in _public_names():
        module = importlib.import_module(package)
        if not hasattr(module, name):
            continue  # reported by test_all_names_exist
        obj = getattr(module, name)
        if isinstance(obj, type) or inspect.isfunction(obj):
            seen.setdefault(id(obj), (f"{package}.{name}", obj))
    return sorted(seen.values(), key=lambda item: item[0])


def _api_text():
    text = ""
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "api", "*.md"))):
        with open(path) as f:
            text += f.read() + "\n"
    return text


def _resolve(path):
    """The object a dotted path names, or None."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for part in parts[split:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def test_all_names_exist():
    missing = [
        f"{package}.{name}"
        for package, name in _public_names()
        if not hasattr(importlib.import_module(package), name)
    ]
    assert not missing, f"Named in __all__ but not defined: {missing}"


def test_every_public_name_is_in_the_api_reference():
    text = _api_text()
    documented = [
        _resolve(path) for path in re.findall(r"^:::\s*(\S+)", text, re.M)
    ]
    documented_ids = {id(obj) for obj in documented if obj is not None}
    missing = []
    for package, name in _public_names():
        module = importlib.import_module(package)
        if not hasattr(module, name):
            continue
        obj = getattr(module, name)
        if isinstance(obj, type) or inspect.isfunction(obj):
            if id(obj) not in documented_ids:
                missing.append(f"{package}.{name}")
        elif isinstance(obj, types.ModuleType) or not callable(obj):
            # Modules and constants: named in the reference.
            if not re.search(rf"\b{re.escape(name)}\b", text):
                missing.append(f"{package}.{name}")
    assert not missing, (
        "Public names without a `::: path` entry (or, for modules and "
        f"constants, a mention) in docs/api/*.md: {missing}"
    )


def test_api_entries_resolve():
    broken = [
        path
        for path in re.findall(r"^:::\s*(\S+)", _api_text(), re.M)
        if _resolve(path) is None
    ]
    assert not broken, f"docs/api/*.md entries naming nothing: {broken}"


def _parameters(obj):
    """The names of the parameters a caller passes (for a class: its
    constructor's)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name != "self"]


def _docstrings(obj):
    """The docstrings that may document `obj`'s parameters."""
    docs = [inspect.getdoc(obj) or ""]
    init = obj.__dict__.get("__init__") if isinstance(obj, type) else None
    if init is not None and init.__doc__:
        docs.append(inspect.getdoc(init))
    return docs


@pytest.mark.parametrize(
    "path,obj", _public_callables(), ids=[p for p, _ in _public_callables()]
)
def test_docstring(path, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{path} has no docstring."
    lines = doc.splitlines()
    summary = lines[0].strip()
    problems = []
    if not summary.endswith(".") or (len(lines) > 1 and lines[1].strip()):
        problems.append(
            "its first line is not a one-line summary ending with a period"
        )
    elif re.search(r"[.!?]\s+[A-Z]", summary[:-1]):
        problems.append("its summary line is more than one sentence")
    example = re.search(r"^Examples?:?\s*$(.*)", doc, flags=re.M | re.S)
    if example is None or not re.search(
        r"^\s*(```python|>>>)", example.group(1), flags=re.M
    ):
        problems.append(
            "it has no `Example:` section with code (```python or >>>)"
        )
    parameters = _parameters(obj)
    if parameters:
        headings = ["Args:"]
        if dataclasses.is_dataclass(obj) or hasattr(obj, "_fields"):
            # A dataclass's or named tuple's constructor takes its fields.
            headings.append("Attributes:")
        if not any(
            re.search(rf"^\s*{heading}\s*$", text, flags=re.M)
            for text in _docstrings(obj)
            for heading in headings
        ):
            problems.append(f"it takes {parameters} but has no `Args:` section")
    assert not problems, f"{path}: " + "; ".join(problems)
