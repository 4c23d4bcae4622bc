"""The README's and the documentation's code blocks run as written.

Each page's ```python blocks run in order in one namespace (later blocks use
names from earlier ones), in a temporary working directory, under the
backend of the test process. A block whose preceding line is
`<!-- skip: <reason> -->` is not run; ```bash blocks are never run. A
page with a line `<!-- needs: <module> -->` (for an optional package, such
as `keras_hub`) is skipped where that module does not import.
"""

import glob
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
)

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_SKIP = re.compile(r"^\s*<!--\s*skip:\s*\S.*-->\s*$")
_NEEDS = re.compile(r"^\s*<!--\s*needs:\s*([\w.]+)\s*-->\s*$", re.M)


def python_blocks(text):
    """The ```python blocks of a Markdown text.

    Returns a list of `(line, code, skipped)`: the 1-based line number of the
    block's first code line, its code (dedented by the fence's indentation)
    and whether a `<!-- skip: reason -->` line precedes its fence.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, language = match.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"Unclosed code fence at line {i + 1}.")
        if language == "python":
            code = "\n".join(
                line[len(indent) :] if line.startswith(indent) else line
                for line in lines[i + 1 : end]
            )
            skipped = i > 0 and _SKIP.match(lines[i - 1]) is not None
            blocks.append((i + 2, code + "\n", skipped))
        i = end + 1
    return blocks


def _page_id(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_page_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with open(path) as f:
        text = f.read()
    for module in _NEEDS.findall(text):
        pytest.importorskip(module)
    blocks = python_blocks(text)
    namespace = {"__name__": "__main__"}
    for line, code, skipped in blocks:
        if skipped:
            continue
        # Padded so that a traceback names the page's own line numbers.
        source = "\n" * (line - 1) + code
        try:
            exec(compile(source, path, "exec"), namespace)
        except Exception as error:
            raise AssertionError(
                f"{_page_id(path)}: the block at line {line} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
    if path == README:
        # The README's story: a memory is trained with, reported and saved.
        assert "memory_penalty" in namespace["history"].history
        assert (tmp_path / "digits.memory").exists()


def test_readme_has_examples():
    with open(README) as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 2
    assert not any(skipped for _, _, skipped in blocks)


def test_skip_needs_a_reason_and_fences_close():
    text = "\n".join(
        [
            "<!-- skip: needs two GPUs -->",
            "```python",
            "x = 1",
            "```",
            "<!-- skip: -->",
            "```python",
            "y = 2",
            "```",
            "```bash",
            "echo no",
            "```",
            "  ```python",
            "  z = 3",
            "  ```",
        ]
    )
    assert python_blocks(text) == [
        (3, "x = 1\n", True),
        (7, "y = 2\n", False),
        (13, "z = 3\n", False),
    ]
    with pytest.raises(ValueError, match="line 1"):
        python_blocks("```python\nx = 1\n")


def test_a_page_names_the_optional_modules_it_needs():
    text = "<!-- needs: keras_hub -->\n# Title\n<!-- needs: -->\n"
    assert _NEEDS.findall(text) == ["keras_hub"]


def test_readme_commands_name_existing_extras():
    with open(README) as f:
        text = f.read()
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    extras = re.findall(r'-e "\.\[([^\]]+)\]"', text)
    assert extras
    for group in extras:
        for extra in group.split(","):
            assert re.search(
                rf"^{re.escape(extra)} = \[", pyproject, flags=re.M
            ), extra


def _make_figures():
    path = os.path.join(ROOT, "docs", "make_figures.py")
    spec = importlib.util.spec_from_file_location("make_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_figure_exists_and_has_a_maker():
    """Each image the pages show exists and says what draws it."""
    make_figures = _make_figures()
    made = set(make_figures.FIGURES) | set(make_figures.OTHER_FIGURES)
    shown = []
    for path in PAGES:
        with open(path) as f:
            for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", f.read()):
                shown.append((path, target))
    assert shown
    for path, target in shown:
        image = os.path.normpath(os.path.join(os.path.dirname(path), target))
        assert os.path.exists(image), f"{_page_id(path)}: {target} is missing"
        assert os.path.dirname(image) == os.path.join(ROOT, "docs", "figures")
        assert os.path.basename(image) in made, (
            f"{_page_id(path)}: {target} is neither drawn by "
            "docs/make_figures.py nor listed in its OTHER_FIGURES"
        )
    for name in make_figures.FIGURES:
        image = os.path.join(ROOT, "docs", "figures", name)
        assert os.path.exists(image), f"docs/make_figures.py: {name} missing"
        assert os.path.getsize(image) < 200_000, name
