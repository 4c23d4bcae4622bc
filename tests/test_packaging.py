"""What the distribution promises: its license, version and dependencies."""

import importlib.metadata
import os
import subprocess
import sys
import tomllib

import keras_memgeom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_license_file_matches_the_declared_license():
    assert _pyproject()["project"]["license"] == "Apache-2.0"
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_the_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert (
        importlib.metadata.version("keras-memgeom") == keras_memgeom.__version__
    )


def test_the_core_package_imports_without_the_harness_extras():
    # `None` in sys.modules makes an import fail as if the package were absent.
    code = (
        "import sys\nfor name in ('matplotlib', 'sklearn', 'mlxtend', "
        "'tensorflow_datasets'):\n    sys.modules[name] = None\nimport "
        "keras_memgeom\nfrom keras_memgeom.src.utils.figures import "
        "new_figure\ntry:\n    new_figure()\nexcept ImportError as error:\n    "
        "assert 'keras-memgeom[harness]' in str(error)\nelse:\n    raise "
        "AssertionError('matplotlib was imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dependencies = " ".join(_pyproject()["project"]["dependencies"])
    assert (
        "matplotlib" not in dependencies and "scikit-learn" not in dependencies
    )
