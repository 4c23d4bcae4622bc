"""The Keras backend is settled before Keras is imported, never stranding."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from keras_memgeom.src.utils import keras_backend
from keras_memgeom.src.utils.keras_backend import configure_backend
from keras_memgeom.src.utils.keras_backend import keras_config_path

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def finder(*installed):
    """A `find_spec` that sees only the given top-level modules."""
    return lambda name: object() if name in installed else None


def configure(tmp_path, environ=(), installed=("jax", "torch", "tensorflow")):
    environ = {"KERAS_HOME": str(tmp_path), **dict(environ)}
    choice = configure_backend(
        environ, find_spec=finder(*installed), modules={}
    )
    return choice, environ


def write_config(tmp_path, config):
    (tmp_path / "keras.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "installed, expected",
    [
        (("jax", "torch", "tensorflow"), "jax"),
        (("torch", "tensorflow"), "torch"),
        (("tensorflow",), "tensorflow"),
    ],
)
def test_nothing_configured_picks_the_first_installed_and_saves_it(
    tmp_path, installed, expected
):
    choice, environ = configure(tmp_path, installed=installed)
    assert choice.backend == expected and environ["KERAS_BACKEND"] == expected
    assert "first installed of jax, torch, tensorflow" in choice.source
    assert str(tmp_path / "keras.json") in choice.source
    # Keras reads the saved file on its first import instead of writing
    # its TensorFlow default, so the next run finds the same backend.
    config = json.loads((tmp_path / "keras.json").read_text())
    assert config["backend"] == expected and config["floatx"] == "float32"
    choice, _ = configure(tmp_path, installed=installed)
    assert (
        choice.backend == expected
        and choice.source == f"from {tmp_path / 'keras.json'}"
    )


def test_keras_json_without_a_backend_is_left_alone(tmp_path):
    write_config(tmp_path, {"floatx": "float64"})
    choice, environ = configure(tmp_path, installed=("torch",))
    assert choice.backend == "torch" and environ["KERAS_BACKEND"] == "torch"
    assert "saved" not in choice.source
    assert json.loads((tmp_path / "keras.json").read_text()) == {
        "floatx": "float64"
    }


def test_keras_backend_variable_wins_over_keras_json(tmp_path):
    write_config(tmp_path, {"backend": "tensorflow"})
    choice, _ = configure(tmp_path, {"KERAS_BACKEND": "torch"})
    assert choice == ("torch", "from KERAS_BACKEND")
    assert str(choice) == "Keras backend torch (from KERAS_BACKEND)"


@pytest.mark.parametrize("where", ["KERAS_BACKEND", "keras.json"])
def test_a_configured_backend_that_is_not_installed_is_a_clear_error(
    tmp_path, where
):
    environ = {}
    if where == "KERAS_BACKEND":
        environ["KERAS_BACKEND"] = "tensorflow"
    else:
        write_config(tmp_path, {"backend": "tensorflow"})
    with pytest.raises(ImportError) as info:
        configure(tmp_path, environ, installed=("jax",))
    message = str(info.value)
    assert "'tensorflow'" in message and "is not installed" in message
    assert (
        where if where == "KERAS_BACKEND" else str(tmp_path / "keras.json")
    ) in message
    assert 'pip install "keras-memgeom[tensorflow]"' in message
    assert "KERAS_BACKEND=jax" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_no_backend_installed_is_a_clear_error(tmp_path):
    with pytest.raises(
        ImportError,
        match=r"No Keras backend is installed.*keras-memgeom\[jax\]",
    ):
        configure(tmp_path, installed=())
    assert not (tmp_path / "keras.json").exists()


def test_keras_imported_first_keeps_its_backend(tmp_path):
    import keras

    choice = configure_backend(
        {"KERAS_HOME": str(tmp_path)}, find_spec=finder()
    )
    assert choice == (keras.backend.backend(), "Keras was imported first")
    assert not (tmp_path / "keras.json").exists()


def test_config_path_follows_keras(tmp_path, monkeypatch):
    from keras.src.backend import config

    # The path Keras settled on when it was imported, from the same environment.
    assert keras_config_path() == os.path.join(
        config.keras_home(), "keras.json"
    )
    assert keras_config_path({"KERAS_HOME": str(tmp_path)}) == str(
        tmp_path / "keras.json"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    assert keras_config_path({}) == str(tmp_path / ".keras" / "keras.json")
    tmp_path.chmod(0o500)
    try:
        if not os.access(tmp_path, os.W_OK):  # root may write anyway
            assert keras_config_path({}) == "/tmp/.keras/keras.json"
    finally:
        tmp_path.chmod(0o700)


def run_python(code, home, **env):
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KERAS_BACKEND", "KERAS_HOME")
    }
    environ.update(HOME=str(home), **env)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=300,
    )


def test_a_fresh_home_runs_twice_on_the_same_backend(tmp_path):
    code = (
        "import keras_memgeom, keras\n"
        "from keras_memgeom.src.utils.keras_backend import backend_choice\n"
        "print(keras.backend.backend()); print(backend_choice())\n"
    )
    expected = next(
        b for b in keras_backend.PREFERENCE if importlib.util.find_spec(b)
    )
    first = run_python(code, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == expected
    assert "saved in" in first.stdout
    config = json.loads((tmp_path / ".keras" / "keras.json").read_text())
    assert config["backend"] == expected
    second = run_python(code, tmp_path)
    assert second.returncode == 0, second.stderr
    assert (
        second.stdout.splitlines()[0] == expected
        and "keras.json" in second.stdout
    )


def test_a_missing_configured_backend_fails_before_keras(tmp_path):
    result = run_python(
        "import sys; sys.modules['tensorflow'] = None\nimport keras_memgeom\n",
        tmp_path,
        KERAS_BACKEND="tensorflow",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ImportError: The Keras backend 'tensorflow' (from KERAS_BACKEND)"
    )
    assert (
        "ModuleNotFoundError" not in result.stderr
        and "/keras/src/" not in result.stderr
    )
    assert not (tmp_path / ".keras").exists()


def test_the_choice_is_remembered():
    assert keras_backend.backend_choice() is keras_backend.backend_choice()
