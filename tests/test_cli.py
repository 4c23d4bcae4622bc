import importlib.util
import json
import os
import subprocess
import sys

import keras
import pytest

from keras_memgeom import cli, continual
from keras_memgeom.utils.keras_backend import PREFERENCE

TINY = ["--tasks", "2", "--width", "8", "--epochs", "1", "--train-examples", "150", "--quiet"]


def run_cli(args, capsys):
    try:
        code = cli.main(args)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_writes_results_and_plots(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "bench",
            *TINY[:-1],
            "--methods",
            "ewc,online",
            "--strength",
            "10,ewc=auto",
            "--strength-grid",
            "1,100",
            "--estimator",
            "exact,online=empirical",
            "--seed",
            "3",
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0
    document = continual.load_results(str(out_dir / "results.json"))
    assert list(document["methods"]) == ["ewc", "online"]
    assert document["seed"] == 3 and document["config"]["command"] == "bench"
    assert document["methods"]["online"]["config"]["estimator"] == "empirical"
    assert document["methods"]["online"]["config"]["strength"] == 10.0
    assert document["methods"]["ewc"]["config"]["strength"] == "auto"
    assert document["methods"]["ewc"]["strength"][1] in (1.0, 100.0)
    assert (out_dir / "average_accuracy.png").exists()
    assert (out_dir / "effective_dimension.png").exists()
    assert "online" in out and "avg acc" in out and str(out_dir) in out
    # Progress goes to stderr: task, method and epoch.
    assert "online: task 2/2 epoch 1/1" in err


def test_bench_on_tfds_under_mock_data(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        code, out, _ = run_cli(
            [
                "bench",
                *TINY,
                "--dataset",
                "tfds:mnist",
                "--methods",
                "finetune",
                "--out",
                str(tmp_path),
            ],
            capsys,
        )
    assert code == 0
    document = continual.load_results(str(tmp_path / "results.json"))
    assert document["config"]["dataset"] == "tfds:mnist"


def test_demo_settings(monkeypatch, tmp_path, capsys):
    # The real demo takes a minute; check it asks the harness for the right run.
    seen = {}

    def compare(harness, strategies):
        seen["stream"] = harness.stream
        seen["harness"] = harness
        seen["strategies"] = strategies
        raise KeyboardInterrupt

    monkeypatch.setattr(continual.Harness, "compare", compare)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["demo", "--out", str(tmp_path), "--quiet"])
    assert seen["stream"].scenario == "permuted" and seen["stream"].dataset == "digits"
    assert len(seen["stream"].tasks) == 5
    assert [s.name for s in seen["strategies"]] == ["finetune", "online", "joint"]
    assert seen["strategies"][1].strength == 1000.0
    assert (seen["harness"].width, seen["harness"].epochs) == (400, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--dataset", "cifar"], "unknown data set 'cifar'"),
        (["bench", "--methods", "finetune,si"], "unknown method 'si'"),
        (["bench", "--methods", "ewc,ewc"], "names a method twice"),
        (["bench", "--scenario", "shuffled"], "invalid choice: 'shuffled'"),
        (["bench", "--tasks", "0"], "argument --tasks: expected a positive integer, got '0'"),
        (["bench", "--strength", "strong"], "argument --strength: expected a positive number"),
        (["bench", "--estimator", "kfac"], "unknown fisher estimator 'kfac'"),
        (
            ["bench", "--strength", "joint=10", "--methods", "joint"],
            "method 'joint' takes no strength",
        ),
        (["bench", "--strength", "ewc=10"], "--strength sets 'ewc', which is not in --methods"),
        (["bench", "--decay", "2"], "decay must be in (0, 1]"),
        (["bench", "--scenario", "split", "--tasks", "3"], "divides its 10 classes"),
        (["bench", "--strength", "auto", "--validation-split", "0"], "needs validation splits"),
        (["bench", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["train"], "invalid choice: 'train'"),
    ],
)
def test_bad_input_gives_a_clear_error(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert "memgeom" in err and message in err.lower()
    assert "Traceback" not in err


def test_help_explains_every_flag(capsys):
    code, out, _ = run_cli(["bench", "--help"], capsys)
    assert code == 0
    parser = cli.build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    for action in bench._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in out
    code, out, _ = run_cli([], capsys)
    assert code == 2 and "memgeom demo" in out


def test_info_says_backend_versions_and_devices(capsys):
    code, out, err = run_cli(["info"], capsys)
    assert code == 0 and not err
    backend, version, devices = out.splitlines()
    assert backend.startswith(f"memgeom: Keras backend {keras.backend.backend()} (")
    assert version.endswith(f"keras {keras.__version__}")
    assert devices.startswith(f"{keras.backend.backend()} ") and " on " in devices


def test_every_command_prints_the_backend_first(capsys):
    code, _, err = run_cli(["bench", "--methods", "finetune,si", "--quiet"], capsys)
    assert code == 2
    assert err.splitlines()[0].startswith(f"memgeom: Keras backend {keras.backend.backend()} (")


def test_a_fresh_machine_says_which_backend_it_chose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    result = subprocess.run(
        [sys.executable, "-m", "keras_memgeom", "info"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**env, "HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first = next(b for b in PREFERENCE if importlib.util.find_spec(b))
    assert result.stdout.splitlines()[0] == (
        f"memgeom: Keras backend {first} (chosen: first installed of jax, torch, tensorflow; "
        f"saved in {tmp_path / '.keras' / 'keras.json'})"
    )


def test_python_dash_m_runs_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "keras_memgeom", "--help"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "memgeom demo" in result.stdout


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    code, out, _ = run_cli(["demo", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0
    methods = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert methods["online"]["average_accuracy"] > methods["finetune"]["average_accuracy"] + 0.1
    assert methods["joint"]["average_accuracy"] > methods["online"]["average_accuracy"]


@pytest.mark.slow
def test_acceptance_permuted_mnist5k(tmp_path, capsys):
    # About 3 minutes on 2 CPU cores with JAX; benchmarks/continual_acceptance.py.
    code, _, _ = run_cli(
        [
            "bench",
            "--scenario",
            "permuted",
            "--tasks",
            "10",
            "--dataset",
            "mnist5k",
            "--methods",
            "finetune,online,joint",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    methods = continual.load_results(str(tmp_path / "results.json"))["methods"]
    accuracy = {name: run["average_accuracy"] for name, run in methods.items()}
    assert accuracy["online"] >= 0.85
    # finetune: 0.677 on JAX, 0.630 on TensorFlow, 0.702 on torch (docs/harness.md).
    assert accuracy["finetune"] < accuracy["online"] - 0.15
    assert accuracy["joint"] == max(accuracy.values())
