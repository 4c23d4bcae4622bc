"""No mechanism is written twice: no block of code occurs in two places.

Every `.py` file of `keras_memgeom/` is read as stripped lines, without
blank lines, comments, docstrings, imports, function signatures and calls
that pass their names on unchanged (`f(a, b=b)`): these name an interface,
which a forwarding function repeats by design. A block
of `BLOCK` consecutive such lines found twice, within a file or across
files, fails the test: extract the shared helper.
"""

import ast
import collections
import itertools
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_memgeom"
BLOCK = 6


def _forwards_its_arguments(node):
    """Whether `node` is a call passing on names as they are: `f(a, b=b)`."""
    return (
        isinstance(node, ast.Call)
        and bool(node.args or node.keywords)
        and all(isinstance(arg, ast.Name) for arg in node.args)
        and all(
            isinstance(k.value, ast.Name) and k.value.id == k.arg
            for k in node.keywords
        )
    )


def _skipped_lines(tree):
    """Line numbers of docstrings, imports and function signatures."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skipped.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(
            node,
            (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef),
        ):
            body = node.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                skipped.update(range(first.lineno, first.end_lineno + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skipped.update(range(node.lineno, node.body[0].lineno))
        if _forwards_its_arguments(node):
            skipped.update(range(node.lineno, node.end_lineno + 1))
    return skipped


def normalized_lines(path):
    """`(line number, stripped text)` of the lines that carry code."""
    text = path.read_text()
    skipped = _skipped_lines(ast.parse(text, str(path)))
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if number not in skipped
        and line.strip()
        and not line.strip().startswith("#")
    ]


def repeats(paths, root=ROOT):
    """`{(file, file): [(line, line), ...]}` of blocks found twice."""
    places = collections.defaultdict(list)
    for path in paths:
        name = path.relative_to(root).as_posix()
        lines = normalized_lines(path)
        for start in range(len(lines) - BLOCK + 1):
            block = tuple(text for _, text in lines[start : start + BLOCK])
            places[block].append((name, lines[start][0]))
    found = collections.defaultdict(list)
    for block_places in places.values():
        for a, b in itertools.combinations(sorted(block_places), 2):
            found[(a[0], b[0])].append((a[1], b[1]))
    return dict(found)


def test_no_block_of_code_is_written_twice():
    found = repeats(sorted(PACKAGE.rglob("*.py")))
    assert not found, "\n".join(
        f"{a} and {b}, blocks at lines {lines[:5]}"
        for (a, b), lines in sorted(found.items())
    )


def test_the_checker_finds_a_repeat_and_ignores_what_is_not_code(tmp_path):
    block = "".join(f"    total = total + {i}\n" for i in range(BLOCK))
    first = tmp_path / "first.py"
    first.write_text(
        '"""A module."""\n\nimport os\n\n\ndef f(total):\n'
        f"{block}    return total\n"
    )
    second = tmp_path / "second.py"
    # The same block behind a docstring and comments, and a block that
    # differs in its last line only.
    second.write_text(
        'def g(\n    total,\n):\n    """Docstring."""\n    # A comment.\n'
        f"{block}    return total\n\n\ndef h(total):\n"
        + block.replace(str(BLOCK - 1), "9")
    )
    clean = tmp_path / "clean.py"
    clean.write_text(
        '"""Same docstring."""\n\nimport os\n\n\ndef f(\n    total,\n):\n'
        '    """Docstring."""\n    return os.sep\n'
    )
    # Two windows of the block match: with and without the `return`.
    assert repeats([first, second, clean], tmp_path) == {
        ("first.py", "second.py"): [(7, 6), (8, 7)]
    }


def test_a_call_passing_its_names_on_is_not_a_repeat(tmp_path):
    forward = (
        "def f(a, b, c, d, e):\n    super().__init__(\n        a,\n"
        "        b=b,\n        c=c,\n        d=d,\n        e=e,\n    )\n"
    )
    computed = forward.replace("b=b", "b=b + 1")
    for name in ("first.py", "second.py"):
        (tmp_path / name).write_text(forward)
    (tmp_path / "third.py").write_text(computed)
    (tmp_path / "fourth.py").write_text(computed)
    paths = sorted(tmp_path.glob("*.py"))
    assert list(repeats(paths, tmp_path)) == [("fourth.py", "third.py")]
