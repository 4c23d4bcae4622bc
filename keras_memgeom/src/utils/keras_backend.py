"""Which Keras backend to run on, settled before Keras is imported.

Keras picks its backend once, on import: `KERAS_BACKEND`, else the
`backend` of `keras.json`, else TensorFlow; and on its first import it
writes that TensorFlow default into a new `keras.json`. On a machine with
only JAX (or only torch) installed that strands the user inside Keras with
`No module named 'tensorflow'`, now and on every later run. So the package
settles the backend first: a configured backend must be installed (else one
clear error), and with nothing configured the first installed of jax, torch
and tensorflow is used and saved for the next run.

This module must not import Keras.
"""

import collections
import importlib.util
import json
import os
import sys

# The order in which an unconfigured machine's backends are tried.
PREFERENCE = ("jax", "torch", "tensorflow")

# The module each Keras backend imports; unknown names are left to Keras.
_MODULES = {
    "jax": "jax",
    "tensorflow": "tensorflow",
    "torch": "torch",
    "numpy": "numpy",
    "openvino": "openvino",
}

_INSTALL = {
    "jax": 'pip install "keras-memgeom[jax]"',
    "tensorflow": 'pip install "keras-memgeom[tensorflow]" '
    "(or [tensorflow-cpu] on a CPU-only machine)",
    "torch": 'pip install "keras-memgeom[torch]" (or "torch==2.13.0" from '
    "https://download.pytorch.org/whl/cpu on a CPU-only machine)",
    "openvino": "pip install openvino",
}

_chosen = None


class BackendChoice(
    collections.namedtuple("BackendChoice", ["backend", "source"])
):
    """The Keras backend in use and how it was chosen.

    Attributes:
        backend: the backend's name, e.g. `"jax"`.
        source: how it was chosen, e.g. `"from KERAS_BACKEND"`.
    """

    def __str__(self):
        return f"Keras backend {self.backend} ({self.source})"


def keras_config_path(environ=None):
    """The `keras.json` that Keras reads, by Keras' own rules.

    `$KERAS_HOME/keras.json`, else `~/.keras/keras.json`, else (when the
    home folder is not writable) `/tmp/.keras/keras.json`.

    Args:
        environ: the environment to read (default `os.environ`).

    Returns:
        The path, whether or not the file exists.
    """
    environ = os.environ if environ is None else environ
    if "KERAS_HOME" in environ:
        keras_dir = environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        if not os.access(base, os.W_OK):
            base = "/tmp"
        keras_dir = os.path.join(base, ".keras")
    return os.path.expanduser(os.path.join(keras_dir, "keras.json"))


def configure_backend(
    environ=None, find_spec=importlib.util.find_spec, modules=None
):
    """Makes sure Keras will import a backend that is installed.

    - Keras already imported: its backend is kept.
    - `KERAS_BACKEND`, or else `keras.json`, names a backend: it is used if
      its package is installed.
    - Nothing names one: the first installed of `PREFERENCE` is set in
      `KERAS_BACKEND` and, when there is no `keras.json` yet, saved there
      (Keras would otherwise save its TensorFlow default on import).

    Args:
        environ: the environment to read and set (default `os.environ`).
        find_spec: how to look a module up (default
            `importlib.util.find_spec`).
        modules: the imported modules (default `sys.modules`).

    Returns:
        A `BackendChoice`, also kept for `backend_choice()`.

    Raises:
        ImportError: if the configured backend, or every backend, is not
            installed; the message says how to install one or choose another.

    Example:
    >>> from keras_memgeom.src.utils.keras_backend import configure_backend
    >>> str(configure_backend())  # before `import keras`
    'Keras backend jax (from KERAS_BACKEND)'
    """
    global _chosen
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "keras" in modules:
        backend = _imported_backend(modules)
        imported = (
            "from KERAS_BACKEND"
            if environ.get("KERAS_BACKEND") == backend
            else None
        )
        _chosen = BackendChoice(backend, imported or "Keras was imported first")
        return _chosen
    path = keras_config_path(environ)
    configured = _configured_backend(path)
    if environ.get("KERAS_BACKEND"):
        backend, source = environ["KERAS_BACKEND"], "from KERAS_BACKEND"
    elif configured:
        backend, source = configured, f"from {path}"
    else:
        installed = [
            b for b in PREFERENCE if find_spec(_MODULES[b]) is not None
        ]
        if not installed:
            raise ImportError(
                "No Keras backend is installed: keras_memgeom needs one of "
                "jax, torch or tensorflow. Install one, e.g. "
                f"{_INSTALL['jax']}."
            )
        backend = environ["KERAS_BACKEND"] = installed[0]
        source = f"chosen: first installed of {', '.join(PREFERENCE)}"
        if not os.path.exists(path) and _save(path, backend):
            source += f"; saved in {path}"
        _chosen = BackendChoice(backend, source)
        return _chosen
    module = _MODULES.get(backend)
    if module is not None and find_spec(module) is None:
        others = [
            b
            for b in PREFERENCE
            if b != backend and find_spec(_MODULES[b]) is not None
        ]
        choose = (
            f"choose an installed one with KERAS_BACKEND={others[0]} "
            f"(installed: {', '.join(others)})"
            if others
            else f"choose another of {', '.join(PREFERENCE)} with "
            "KERAS_BACKEND once installed"
        )
        raise ImportError(
            f"The Keras backend {backend!r} ({source}) is not installed: no "
            f"module named {module!r}. Install it with "
            f"{_INSTALL.get(backend, f'pip install {module}')}, or {choose}."
        ) from None
    _chosen = BackendChoice(backend, source)
    return _chosen


def backend_choice():
    """The `BackendChoice` of this process (see `configure_backend`)."""
    return _chosen if _chosen is not None else configure_backend()


def _imported_backend(modules):
    config = modules.get("keras.src.backend.config")
    return config.backend() if config is not None else "unknown"


def _configured_backend(path):
    # As Keras: an unreadable or malformed file names nothing.
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config.get("backend") if isinstance(config, dict) else None


def _save(path, backend):
    """Writes a new `keras.json` as Keras would, naming `backend`."""
    config = {
        "floatx": "float32",
        "epsilon": 1e-07,
        "backend": backend,
        "image_data_format": "channels_last",
    }
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # "x": never overwrite a file another process wrote meanwhile.
        with open(path, "x") as f:
            f.write(json.dumps(config, indent=4))
    except OSError:
        return False
    return True
