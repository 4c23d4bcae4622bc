"""The implementation's imports form a ladder: each floor uses only lower ones.

Every module under `keras_memgeom/src` and `keras_memgeom/backend` is parsed
with `ast` (imports inside functions count too). A module may import its own
floor or a lower one, never a higher floor or the package root
`keras_memgeom`. The public packages (`keras_memgeom.memory`, ...) only
re-export names from `src`; they form the floor below the CLI, the one
application built on them. No `_private` name is imported from another
package.
"""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_memgeom"

# Bottom to top.
FLOORS = (
    "keras_memgeom.src.utils",
    "keras_memgeom.backend",
    "keras_memgeom.src.layers",
    "keras_memgeom.src.memory",
    "keras_memgeom.src.pruning",
    "keras_memgeom.src.symmetry",
    "keras_memgeom.src.frontal_lobe",
    "keras_memgeom.src.training",
    "keras_memgeom.src.merging",
    "keras_memgeom.src.continual",
    (
        "keras_memgeom.callbacks",
        "keras_memgeom.continual",
        "keras_memgeom.frontal_lobe",
        "keras_memgeom.layers",
        "keras_memgeom.memory",
        "keras_memgeom.merging",
        "keras_memgeom.pruning",
        "keras_memgeom.symmetry",
        "keras_memgeom.version",
    ),
    "keras_memgeom.src.cli",
)


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name):
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def _floor(name):
    """The index in `FLOORS` of the floor holding module `name`, or `None`."""
    for index, floor in enumerate(FLOORS):
        for prefix in (floor,) if isinstance(floor, str) else floor:
            if name == prefix or name.startswith(prefix + "."):
                return index
    return None


def _is_private(name):
    return bool(name) and name.startswith("_") and not name.endswith("__")


def _imports(path):
    """`(imported module, imported name or None)` of every import in a file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[
                    : len(package.split(".")) - node.level + 1
                ]
                source = ".".join(base + ([source] if source else []))
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if _is_module(submodule):
                    yield submodule, None
                else:
                    yield source, alias.name


def _modules():
    paths = sorted((PACKAGE / "src").rglob("*.py"))
    return paths + sorted((PACKAGE / "backend").rglob("*.py"))


def _violations():
    found = []
    for path in _modules():
        module = _module_name(path)
        own = _floor(module)
        if own is None:
            if module != "keras_memgeom.src":
                found.append(f"{module}: in no floor of FLOORS")
            continue
        for target, name in _imports(path):
            if not target.startswith("keras_memgeom"):
                continue
            floor = _floor(target)
            if floor is None:
                found.append(f"{module} imports {target} (not in src/backend)")
            elif floor > own:
                found.append(f"{module} imports {target} (higher floor)")
            elif _is_private(name) and floor != own:
                found.append(f"{module} imports private {target}.{name}")
    return found


def test_every_module_imports_only_its_floor_or_lower():
    assert _violations() == []


def test_the_checker_sees_every_kind_of_violation(tmp_path, monkeypatch):
    # The checker against hand-written imports of each forbidden kind.
    source = "\n".join(
        [
            "import keras_memgeom",
            "from keras_memgeom import memory",
            "from keras_memgeom.src.continual import harness",
            "from keras_memgeom.src.layers.connectivity_mask import _hidden",
            "from keras_memgeom.src.utils.checks import check_number",
            "def f():",
            "    from keras_memgeom.src.cli import main",
        ]
    )
    fake = tmp_path / "keras_memgeom" / "src" / "memory" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "_modules", lambda: [fake])
    monkeypatch.setattr(this, "ROOT", tmp_path)
    submodules = {"keras_memgeom.memory", "keras_memgeom.src.continual.harness"}
    monkeypatch.setattr(this, "_is_module", submodules.__contains__)
    assert _violations() == [
        "keras_memgeom.src.memory.fake imports keras_memgeom "
        "(not in src/backend)",
        "keras_memgeom.src.memory.fake imports keras_memgeom.memory "
        "(higher floor)",
        "keras_memgeom.src.memory.fake imports "
        "keras_memgeom.src.continual.harness (higher floor)",
        "keras_memgeom.src.memory.fake imports private "
        "keras_memgeom.src.layers.connectivity_mask._hidden",
        "keras_memgeom.src.memory.fake imports keras_memgeom.src.cli "
        "(higher floor)",
    ]
