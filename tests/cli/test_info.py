"""`memgeom info`: the backend, how it was chosen, versions, devices."""

import importlib.util
import os
import subprocess
import sys

import keras

from keras_memgeom.src.utils.keras_backend import PREFERENCE
from tests.cli.command_line import run_cli

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def test_info_says_backend_versions_and_devices(capsys):
    code, out, err = run_cli(["info"], capsys)
    assert code == 0 and not err
    backend, version, devices = out.splitlines()
    assert backend.startswith(
        f"memgeom: Keras backend {keras.backend.backend()} ("
    )
    assert version.endswith(f"keras {keras.__version__}")
    assert (
        devices.startswith(f"{keras.backend.backend()} ") and " on " in devices
    )


def test_a_fresh_machine_says_which_backend_it_chose(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KERAS_BACKEND", "KERAS_HOME")
    }
    result = subprocess.run(
        [sys.executable, "-m", "keras_memgeom", "info"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first = next(b for b in PREFERENCE if importlib.util.find_spec(b))
    assert result.stdout.splitlines()[0] == (
        f"memgeom: Keras backend {first} (chosen: first installed of jax, "
        f"torch, tensorflow; saved in {tmp_path / '.keras' / 'keras.json'})"
    )
