"""`memgeom` as a whole: the backend line first, `python -m`."""

import os
import subprocess
import sys

import keras

from tests.cli.command_line import run_cli

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def test_every_command_prints_the_backend_first(capsys):
    code, _, err = run_cli(
        ["bench", "--methods", "finetune,si", "--quiet"], capsys
    )
    assert code == 2
    assert err.splitlines()[0].startswith(
        f"memgeom: Keras backend {keras.backend.backend()} ("
    )


def test_python_dash_m_runs_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "keras_memgeom", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "memgeom demo" in result.stdout


def test_python_dash_m_explains_the_demo():
    result = subprocess.run(
        [sys.executable, "-m", "keras_memgeom", "demo", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "usage: memgeom demo" in result.stdout and "--resume" in result.stdout
    )
