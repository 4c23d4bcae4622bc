"""`memgeom bench`: results, plots, errors, interruption and --resume."""

import os
from unittest import mock

import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import continual
from keras_memgeom.src.memory.kronecker import factor_rank
from tests.cli.command_line import TINY
from tests.cli.command_line import run_cli


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


@pytest.mark.parametrize("rank", ["2", "full"])
def test_bench_kfac_keeps_factors_of_the_rank_asked(rank, tmp_path, capsys):
    kept = []
    estimate = keras_memgeom.FisherMemory.estimate.__func__

    def recording(cls, *args, **kwargs):
        memory = estimate(cls, *args, **kwargs)
        kept.append(memory)
        return memory

    out_dir = tmp_path / "run"
    with mock.patch.object(
        keras_memgeom.FisherMemory, "estimate", classmethod(recording)
    ):
        code, _, err = run_cli(
            [
                "bench",
                *TINY,
                "--methods",
                "online",
                "--structure",
                "kfac",
                "--rank",
                rank,
                "--out",
                str(out_dir),
            ],
            capsys,
        )
    assert code == 0, err
    document = continual.load_results(str(out_dir / "results.json"))
    wanted = None if rank == "full" else 2
    assert document["methods"]["online"]["config"]["rank"] == wanted
    assert kept and all(m.structure == "kfac" for m in kept)
    for memory in kept:
        for block in memory.kronecker.values():
            for factor in (block.a, block.g):
                assert factor_rank(factor) == wanted


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--dataset", "cifar"], "unknown data set 'cifar'"),
        (["bench", "--methods", "finetune,si"], "unknown method 'si'"),
        (["bench", "--methods", "ewc,ewc"], "names a method twice"),
        (["bench", "--scenario", "shuffled"], "invalid choice: 'shuffled'"),
        (
            ["bench", "--tasks", "0"],
            "argument --tasks: expected a positive integer, got '0'",
        ),
        (
            ["bench", "--strength", "strong"],
            "argument --strength: expected a finite positive",
        ),
        (
            ["bench", "--strength", "inf"],
            "argument --strength: expected a finite positive number",
        ),
        (
            ["bench", "--strength", "nan"],
            "argument --strength: expected a finite positive number",
        ),
        (
            ["bench", "--strength", "ewc=inf"],
            "argument --strength: expected a finite positive",
        ),
        (
            ["bench", "--strength-grid", "1,inf"],
            "argument --strength-grid: expected a finite",
        ),
        (
            ["bench", "--learning-rate", "inf"],
            "argument --learning-rate: expected a finite",
        ),
        (
            ["bench", "--learning-rate", "0"],
            "argument --learning-rate: expected a finite",
        ),
        (
            ["bench", "--decay", "nan"],
            "argument --decay: expected a finite number in (0, 1]",
        ),
        (
            ["bench", "--prior-precision=-inf"],
            "argument --prior-precision: expected a",
        ),
        (
            ["bench", "--validation-split", "nan"],
            "argument --validation-split: expected a",
        ),
        (
            ["bench", "--validation-split", "0.999"],
            "validation_split=0.999 leaves task 'permuted-0' 1 training "
            "examples",
        ),
        (
            [
                "bench",
                "--validation-split",
                "0.0001",
                "--train-examples",
                "100",
            ],
            "holds out no validation example of task 'permuted-0'",
        ),
        (
            ["bench", "--tasks", "100000000"],
            "--tasks 100000000: the task stream needs about",
        ),
        (["bench", "--estimator", "kfac"], "unknown fisher estimator 'kfac'"),
        (
            ["bench", "--rank", "0"],
            "argument --rank: expected a positive integer",
        ),
        (
            ["bench", "--strength", "joint=10", "--methods", "joint"],
            "method 'joint' takes no strength",
        ),
        (
            ["bench", "--strength", "ewc=10"],
            "--strength sets 'ewc', which is not in --methods",
        ),
        (
            ["bench", "--decay", "2"],
            "argument --decay: expected a finite number in (0, 1]",
        ),
        (
            ["bench", "--scenario", "split", "--tasks", "3"],
            "divides its 10 classes",
        ),
        (
            ["bench", "--strength", "auto", "--validation-split", "0"],
            "needs validation splits",
        ),
        (["bench", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        # A flag no method of the run uses would be ignored silently.
        (
            ["bench", "--methods", "finetune,joint", "--strength", "10"],
            "--strength applies to ewc, frontal-lobe, online, online-ewc; "
            "none of --methods finetune,joint uses it",
        ),
        (
            ["bench", "--methods", "online-ewc", "--decay", "0.5"],
            "--decay applies to frontal-lobe, online; none of --methods "
            "online-ewc",
        ),
        (
            ["bench", "--methods", "online", "--gamma", "0.5"],
            "--gamma applies to online-ewc;",
        ),
        (
            ["bench", "--methods", "online", "--information-epochs", "1"],
            "--information-epochs applies to frontal-lobe;",
        ),
        (
            ["bench", "--methods", "finetune", "--max-examples", "10"],
            "--max-examples applies to",
        ),
        (
            ["bench", "--methods", "joint", "--prior-precision", "2"],
            "--prior-precision applies to",
        ),
        (
            ["bench", "--strength-grid", "1,10"],
            "--strength-grid applies to --strength auto or sweep",
        ),
        (
            ["bench", "--split-scenario", "class"],
            "--split-scenario applies to --scenario split only",
        ),
        (
            ["bench", "--methods", "frontal-lobe", "--epochs", "1"],
            "information_epochs=3 is more than the 1 epochs per task",
        ),
        (
            ["bench", "--information-epochs", "-1"],
            "argument --information-epochs: expected a whole number >= 0",
        ),
        (["train"], "invalid choice: 'train'"),
    ],
)
def test_bad_input_gives_a_clear_error(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert "memgeom" in err and message in err.lower()
    assert "Traceback" not in err


def test_bad_output_folders_are_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        continual.Harness, "compare", lambda *a, **k: pytest.fail("trained")
    )
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, message in [
        (a_file, f"argument --out: '{a_file}' is a file, not a folder"),
        (
            a_file / "run",
            f"cannot create '{a_file / 'run'}': its parent '{a_file}' is a "
            "file",
        ),
        (
            tmp_path / "no" / "run",
            f"its parent '{tmp_path / 'no'}' does not exist",
        ),
    ]:
        code, _, err = run_cli(["bench", *TINY, "--out", str(out)], capsys)
        assert code == 2 and message in err, err
        assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root may write into a read-only folder"
)
def test_read_only_output_folder_is_refused(tmp_path, capsys):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        for out in (read_only, read_only / "run"):
            code, _, err = run_cli(["bench", *TINY, "--out", str(out)], capsys)
            assert code == 2 and f"'{out}' is not writable" in err, err
    finally:
        read_only.chmod(0o755)


class _Interrupt:
    """Saves results as usual; raises KeyboardInterrupt after `calls` saves."""

    def __init__(self, calls):
        self.calls = calls
        self.save = continual.save_results

    def __call__(self, document, path):
        self.save(document, path)
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt


def test_interrupted_run_keeps_its_results_and_resumes(
    tmp_path, capsys, monkeypatch
):
    args = ["bench", *TINY, "--methods", "finetune,online"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli([*args, "--out", str(full)], capsys)[0] == 0
    expected = continual.load_results(str(full / "results.json"))
    assert expected["complete"] is True

    # Saves: the settings, finetune task 1 and 2, online task 1: Ctrl-C there.
    monkeypatch.setattr(continual, "save_results", _Interrupt(4))
    code, _, err = run_cli([*args, "--out", str(cut)], capsys)
    assert code == 130 and f"--resume {cut}" in err
    partial = continual.load_results(str(cut / "results.json"))
    assert partial["complete"] is False
    assert partial["config"]["methods"] == ["finetune", "online"]
    assert [run["tasks_done"] for run in partial["methods"].values()] == [2, 1]
    assert "average_accuracy" not in partial["methods"]["online"]
    assert "online (1/2 tasks)" in continual.format_table(partial)

    # Re-running into the unfinished folder would lose it; resuming keeps it.
    monkeypatch.undo()
    code, _, err = run_cli([*args, "--out", str(cut)], capsys)
    assert (
        code == 2
        and "holds an unfinished run; continue it with --resume" in err
    )
    code, _, err = run_cli(
        [*args, "--epochs", "2", "--resume", str(cut)], capsys
    )
    assert code == 2 and "other settings: --epochs 1 (now 2)" in err
    assert run_cli([*args, "--resume", str(cut)], capsys)[0] == 0
    resumed = continual.load_results(str(cut / "results.json"))
    assert resumed["complete"] is True
    assert list(resumed["methods"]) == list(expected["methods"])
    # The finished method is read back, not trained again.
    assert resumed["methods"]["finetune"] == partial["methods"]["finetune"]
    # The unfinished one is trained again from its start: the same numbers,
    # up to training nondeterminism.
    for name, run in expected["methods"].items():
        again = resumed["methods"][name]
        assert set(again) == set(run)
        assert np.allclose(
            again["accuracy_matrix"], run["accuracy_matrix"], atol=0.05
        )


@pytest.mark.slow
def test_acceptance_permuted_mnist5k(tmp_path, capsys):
    # About 3 minutes on 2 CPU cores with JAX;
    # benchmarks/continual_acceptance.py.
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
    # finetune: 0.677 on JAX, 0.630 on TensorFlow, 0.702 on torch
    # (docs/harness.md).
    assert accuracy["finetune"] < accuracy["online"] - 0.15
    assert accuracy["joint"] == max(accuracy.values())


def test_bench_strength_sweep_reports_every_grid_point(tmp_path, capsys):
    code, out, _ = run_cli(
        [
            "bench",
            *TINY,
            "--methods",
            "finetune,online-ewc",
            "--strength",
            "sweep",
            "--strength-grid",
            "1,100",
            "--gamma",
            "0.5",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0
    document = continual.load_results(str(tmp_path / "results.json"))
    assert list(document["methods"]) == [
        "finetune",
        "online-ewc@1",
        "online-ewc@100",
    ]
    assert document["methods"]["online-ewc@1"]["config"]["gamma"] == 0.5
    grid = document["sweep"]["online-ewc"]["grid"]
    assert [point["strength"] for point in grid] == [1.0, 100.0]
    assert "sweep online-ewc: 1: " in out and "best strength" in out


def test_bench_npz_data_with_separate_seeds_and_repeats(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
        y=np.arange(60) % 3,
    )
    code, out, _ = run_cli(
        [
            "bench",
            *TINY,
            "--dataset",
            str(path),
            "--scenario",
            "rotated",
            "--methods",
            "finetune",
            "--data-seed",
            "4",
            "--init-seed",
            "7",
            "--repeats",
            "2",
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 0
    document = continual.load_results(str(tmp_path / "run" / "results.json"))
    assert document["config"]["data_seed"] == 4 and document["seed"] == 7
    assert document["summary"]["finetune"]["init_seeds"] == [7, 8]
    assert "±" in out
    assert (tmp_path / "run" / "accuracy_matrix_finetune_seed8.png").exists()


def test_flags_that_apply_pass(monkeypatch, tmp_path, capsys):
    seen = {}

    def compare(harness, strategies, **kwargs):
        seen["strategies"] = strategies
        raise KeyboardInterrupt

    monkeypatch.setattr(continual.Harness, "compare", compare)
    code, _, err = run_cli(
        [
            "bench",
            *TINY,
            "--methods",
            "frontal-lobe,online,finetune",
            "--decay",
            "0.5",
            "--information-epochs",
            "1",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 130, err
    lobe, online, _ = seen["strategies"]
    assert (lobe.information_epochs, lobe.decay, online.decay) == (1, 0.5, 0.5)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_npz_data_ends_with_exit_2_before_training(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        continual.Harness, "compare", lambda *a, **k: pytest.fail("trained")
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 4, 4)).astype("float32")
    y = np.arange(30) % 3
    x_nan = x.copy()
    x_nan[4, 1, 2] = np.nan
    for arrays, message in [
        ({"x": x_nan, "y": y}, "holds 1 nan or infinite value(s), the first "),
        (
            {"x": x, "y": np.where(np.arange(30) == 5, -1, y)},
            "hold -1 at index 5",
        ),
        (
            {"x": x, "y": np.where(np.arange(30) == 9, 1_000_000, y)},
            "hold 1000000 at index 9",
        ),
    ]:
        path = _npz(tmp_path / "data.npz", **arrays)
        code, _, err = run_cli(
            ["bench", *TINY, "--dataset", path, "--out", str(tmp_path / "r")],
            capsys,
        )
        assert code == 2 and message in err.lower(), err
        assert "Traceback" not in err


def test_a_finished_or_unreadable_run_is_never_overwritten(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        continual.Harness, "compare", lambda *a, **k: pytest.fail("trained")
    )
    finished = tmp_path / "finished"
    finished.mkdir()
    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=1, max_train_examples=60
    )
    harness = continual.Harness(stream, width=4, epochs=1)
    runs = {"finetune": harness.run(continual.Finetune())}
    document = continual.make_document(harness.get_config(), 0, runs)
    continual.save_results(document, str(finished / "results.json"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    for folder, message in [
        (finished, f"'{finished}' holds a finished run"),
        (broken, f"'{broken}' holds a results.json that cannot be read"),
    ]:
        before = (folder / "results.json").read_bytes()
        code, _, err = run_cli(["bench", *TINY, "--out", str(folder)], capsys)
        assert code == 2 and message in err, err
        assert "choose another --out" in err
        assert (folder / "results.json").read_bytes() == before


def test_ctrl_c_while_plotting_keeps_the_results_and_resumes(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    draw = continual.plot_results

    def interrupted(document, directory):
        raise KeyboardInterrupt

    monkeypatch.setattr(continual, "plot_results", interrupted)
    args = ["bench", *TINY, "--methods", "finetune,online"]
    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    assert code == 130 and "Traceback" not in err
    assert f"memgeom bench --resume {out}" in err
    document = continual.load_results(str(out / "results.json"))
    assert document["complete"] is True
    assert not list(out.glob("*.png"))

    # Resuming, with the methods in another order and a default said out
    # loud, trains nothing and draws the plots.
    monkeypatch.setattr(continual, "plot_results", draw)
    monkeypatch.setattr(
        continual.Harness, "run", lambda *a, **k: pytest.fail("trained")
    )
    code, _, err = run_cli(
        [
            "bench",
            *TINY,
            "--methods",
            "online,finetune",
            "--decay",
            "1",
            "--resume",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert (out / "average_accuracy.png").exists()
    resumed = continual.load_results(str(out / "results.json"))
    for name, run in document["methods"].items():
        assert resumed["methods"][name] == run
