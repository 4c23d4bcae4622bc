"""The built documentation site documents the public API, as rendered.

The site is built once (`mkdocs build --strict`) into a temporary
directory; the API pages' HTML is then read back: every public name has an
anchor, the models' `compile` included, and every rendered parameter table
agrees with the signature it documents (one row per parameter, a parameter
with a default shown with that default, never as required).
"""

import ast
import html.parser
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys

import pytest

from tests.test_api import PACKAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Methods that `keras_memgeom.Model` and `Sequential` add to Keras's, listed
# in the models' API entries as inherited members.
MODEL_METHODS = ["compile", "memory_penalty", "set_information_penalty", "save"]


class _ApiPage(html.parser.HTMLParser):
    """Anchors and parameter tables of one mkdocstrings page.

    `anchors` lists the ids of the objects' headings in page order;
    `tables` maps an anchor to the rows `(name, default)` of the first
    "Parameters:" table after its heading (`default` is `None` where the
    table says "required").
    """

    def __init__(self):
        super().__init__()
        self.anchors = []
        self.tables = {}
        self._text = []
        self._in_title = False
        self._table_owner = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "doc-heading" in classes and attrs.get("id"):
            self.anchors.append(attrs["id"])
        elif tag == "span" and "doc-section-title" in classes:
            self._in_title = True
            self._text = []
        elif tag == "tr" and self._table_owner is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "span" and self._in_title:
            self._in_title = False
            title = "".join(self._text).strip()
            owner = self.anchors[-1] if self.anchors else None
            if title == "Parameters:" and owner not in self.tables:
                self._table_owner = owner
                self.tables[owner] = []
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                name, default = self._row[0], self._row[-1]
                self.tables[self._table_owner].append(
                    (name, None if default == "required" else default)
                )
            self._row = None
        elif tag == "table" and self._table_owner is not None:
            self._table_owner = None

    def handle_data(self, data):
        if self._in_title:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The folder of a fresh strict build of the site."""
    for module in ("mkdocs", "mkdocstrings", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(
                f"{module} is not installed: the site cannot be built "
                "(pip install -e '.[docs]')."
            )
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def site(built_site):
    """The API pages of the built site, parsed, by file name."""
    out = built_site
    pages = {}
    for name in sorted(os.listdir(out / "api")):
        if name.endswith(".html"):
            parser = _ApiPage()
            parser.feed((out / "api" / name).read_text())
            pages[name] = parser
    return pages


def _anchors(site):
    return {anchor for page in site.values() for anchor in page.anchors}


def _public_paths():
    """Public paths `package.name` of the classes, functions and modules."""
    paths = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if (
                inspect.ismodule(obj)
                or isinstance(obj, type)
                or inspect.isfunction(obj)
            ):
                paths.append(f"{package}.{name}")
    return sorted(set(paths))


def _documented_at(path, site, anchors):
    """Whether `path`, or the object it names, has an anchor (or a page)."""
    if path in anchors:
        return True
    package, name = path.rsplit(".", 1)
    obj = getattr(importlib.import_module(package), name)
    if inspect.ismodule(obj):
        return f"{name}.html" in site  # a subpackage has its own page
    # A re-exported name is documented under its subpackage's path.
    return any(
        anchor.rsplit(".", 1)[-1] == name and _resolve(anchor) is obj
        for anchor in anchors
    )


def _resolve(path):
    """The object a rendered anchor names, or `None`."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def test_every_public_name_has_an_anchor(site):
    anchors = _anchors(site)
    missing = [
        p for p in _public_paths() if not _documented_at(p, site, anchors)
    ]
    assert not missing, f"No anchor on the API pages for {missing}."


@pytest.mark.parametrize("model", ["Model", "Sequential"])
def test_models_render_their_compile(site, model):
    anchors = _anchors(site)
    for method in MODEL_METHODS:
        assert f"keras_memgeom.{model}.{method}" in anchors
    rows = dict(
        site["keras_memgeom.html"].tables[f"keras_memgeom.{model}.compile"]
    )
    for parameter in ("strength", "num_train_examples", "frontal_lobe"):
        assert rows[parameter] is not None, parameter


def _rendered_name(parameter):
    prefix = {
        inspect.Parameter.VAR_POSITIONAL: "*",
        inspect.Parameter.VAR_KEYWORD: "**",
    }.get(parameter.kind, "")
    return prefix + parameter.name


def _tables(site):
    return [
        (anchor, rows)
        for page in site.values()
        for anchor, rows in page.tables.items()
    ]


def test_parameter_tables_match_signatures(site):
    problems = []
    for anchor, rows in _tables(site):
        obj = _resolve(anchor)
        assert obj is not None, anchor
        parameters = {
            _rendered_name(p): p
            for p in inspect.signature(obj).parameters.values()
        }
        names = [name for name, _ in rows]
        if len(names) != len(set(names)):
            problems.append(f"{anchor}: a parameter listed twice: {names}")
        undocumented = [
            name
            for name in parameters
            if name not in names and name not in ("self", "cls")
        ]
        if undocumented:
            problems.append(f"{anchor}: no row for {undocumented}")
        for name, default in rows:
            parameter = parameters.get(name)
            if parameter is None:
                problems.append(f"{anchor}: row {name!r} is no parameter")
                continue
            if parameter.kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                continue
            if parameter.default is inspect.Parameter.empty:
                if default is not None:
                    problems.append(f"{anchor}: {name} is required")
                continue
            if default is None:
                problems.append(f"{anchor}: {name} shown as required")
                continue
            try:
                shown = ast.literal_eval(default)
            except (ValueError, SyntaxError):
                continue  # an expression (a constant's name): shown as written
            if shown != parameter.default:
                problems.append(
                    f"{anchor}: {name} shown with default {default}, "
                    f"is {parameter.default!r}"
                )
    assert not problems, "\n".join(problems)


def test_parser_reads_rows_and_defaults():
    page = _ApiPage()
    page.feed(
        '<h2 id="pkg.f" class="doc doc-heading">f</h2>'
        '<p><span class="doc-section-title">Parameters:</span></p>'
        "<table><tbody>"
        '<tr class="doc-section-item"><td><code>a</code></td><td></td>'
        "<td>first</td><td><em>required</em></td></tr>"
        '<tr class="doc-section-item"><td><code>b</code></td><td></td>'
        "<td>second</td><td><code>2</code></td></tr>"
        "</tbody></table>"
        '<p><span class="doc-section-title">Returns:</span></p>'
        "<table><tr><td>x</td></tr></table>"
    )
    assert page.anchors == ["pkg.f"]
    assert page.tables == {"pkg.f": [("a", None), ("b", "2")]}


def test_every_image_of_the_built_site_exists(built_site):
    root = built_site
    images = 0
    for page in root.rglob("*.html"):
        for source in re.findall(r'<img[^>]*\ssrc="([^"]+)"', page.read_text()):
            if source.startswith(("http:", "https:", "data:")):
                continue
            images += 1
            assert (page.parent / source).resolve().is_file(), (
                f"{page.relative_to(root)}: {source} is missing"
            )
    assert images, "the site shows no figure"
