"""`memgeom merge`: results kept as they go, --resume, atomic writes."""

import json
import os

import pytest

from keras_memgeom import continual
from keras_memgeom.src.cli import merge as merge_module
from keras_memgeom.src.cli import merge_experiment
from keras_memgeom.src.cli import plot_loss_path
from keras_memgeom.src.cli.merge import write_merge
from tests.cli.command_line import run_cli


def _merge_result():
    # The shape of a merge_experiment result; the numbers are arbitrary.
    line = {
        "t": [0.0, 0.5, 1.0],
        "loss": [0.2, 0.9, 0.3],
        "accuracy": [1.0] * 3,
    }
    return {
        "dataset": "digits",
        "width": 4,
        "endpoints": [0.9, 0.8],
        "ratio": {"raw average": 0.5, "average": 0.9},
        "barrier": {"raw": 0.65, "aligned": 0.1},
        "path": {"raw": line, "aligned": line},
    }


def test_merge_prints_every_method_and_writes_its_results(tmp_path, capsys):
    code, out, _ = run_cli(
        ["merge", "--width", "4", "--epochs", "1", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 0
    result = json.loads((tmp_path / "merge.json").read_text())
    for name in (
        "raw average",
        "average",
        "fisher+repair",
        "regmean",
        "regmean+repair",
    ):
        assert name in out and name in result["ratio"]
    assert (tmp_path / "loss_path.png").stat().st_size > 0
    assert len(result["path"]["aligned"]["loss"]) == 11


def test_merge_checks_its_folder_before_training(tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(
        merge_experiment,
        "merge_experiment",
        lambda *a, **k: pytest.fail("trained"),
    )
    a_file = tmp_path / "file"
    a_file.write_text("")
    done = tmp_path / "done"
    done.mkdir()
    (done / "merge.json").write_text("{}")
    cases = [
        (a_file, f"'{a_file}' is a file, not a folder"),
        (a_file / "run", f"its parent '{a_file}' is a file"),
        (done, f"'{done}' holds a finished merge"),
    ]
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: what the check asks says no
        access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode: (
                not str(path).startswith(str(read_only)) and access(path, mode)
            ),
        )
    cases += [
        (read_only, f"'{read_only}' is not writable"),
        (read_only / "run", f"'{read_only / 'run'}' is not writable"),
    ]
    try:
        for out, message in cases:
            code, _, err = run_cli(["merge", "--out", str(out)], capsys)
            assert code == 2 and message in err, err
            assert "Traceback" not in err
    finally:
        read_only.chmod(0o755)
    assert (done / "merge.json").read_text() == "{}"


def test_ctrl_c_in_merge_keeps_what_finished(tmp_path, capsys, monkeypatch):

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_experiment, "merge_experiment", interrupt)
    code, _, err = run_cli(["merge", "--out", str(tmp_path / "a")], capsys)
    assert code == 130 and "Traceback" not in err
    assert "nothing was written" in err
    assert not os.listdir(tmp_path / "a")

    # Interrupted while drawing: merge.json is whole, the numbers printed.
    monkeypatch.setattr(
        merge_experiment, "merge_experiment", lambda *a, **k: _merge_result()
    )
    monkeypatch.setattr(plot_loss_path, "plot_loss_path", interrupt)
    code, out, err = run_cli(["merge", "--out", str(tmp_path / "b")], capsys)
    assert code == 130 and "Traceback" not in err
    assert "kept in" in err and "merge.json" in err
    assert "raw average" in out
    assert json.loads((tmp_path / "b" / "merge.json").read_text())["ratio"] == {
        "raw average": 0.5,
        "average": 0.9,
    }
    assert sorted(os.listdir(tmp_path / "b")) == ["merge.json"]


@pytest.mark.parametrize("stop", [OSError("disk full"), KeyboardInterrupt()])
def test_a_save_stopped_midway_leaves_the_previous_file_intact(
    tmp_path, monkeypatch, stop
):
    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=1, max_train_examples=60
    )
    harness = continual.Harness(stream, width=4, epochs=1)
    runs = {"finetune": harness.run(continual.Finetune())}
    document = continual.make_document(harness.get_config(), 0, runs)
    continual.save_results(document, str(tmp_path / "results.json"))
    continual.plot_results(document, str(tmp_path))
    write_merge(_merge_result(), str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"results.json", "merge.json", "loss_path.png"} <= set(before)
    assert "average_accuracy.png" in before

    # New contents, stopped in the middle of every write (before the
    # rename that would publish it).
    changed = dict(document, seed=1)
    result = dict(_merge_result(), width=8)

    def fail(fd):
        raise stop

    monkeypatch.setattr(os, "fsync", fail)
    for save in (
        lambda: continual.save_results(changed, str(tmp_path / "results.json")),
        lambda: continual.plot_results(changed, str(tmp_path)),
        lambda: write_merge(result, str(tmp_path)),
    ):
        with pytest.raises(type(stop)):
            save()
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # byte for byte, and no temporary left behind


class _InterruptWrites:
    """Writes `merge.json` as usual; Ctrl-C after `calls` writes."""

    def __init__(self, calls):
        self.calls = calls
        self.write = merge_module._write_json

    def __call__(self, result, out):
        self.write(result, out)
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt


def test_interrupted_merge_keeps_its_merges_and_resumes(
    tmp_path, capsys, monkeypatch
):
    args = ["merge", "--width", "4", "--epochs", "1"]
    out = tmp_path / "run"
    # Writes: after the training, "raw average", "average": Ctrl-C there.
    monkeypatch.setattr(merge_module, "_write_json", _InterruptWrites(3))
    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    assert code == 130 and f"memgeom merge --resume {out}" in err, err
    partial = json.loads((out / "merge.json").read_text())
    assert partial["complete"] is False
    assert list(partial["ratio"]) == ["raw average", "average"]
    assert {"model_seed1.keras", "model_seed2.keras"} <= set(os.listdir(out))
    monkeypatch.undo()

    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    assert code == 2 and "holds an unfinished merge" in err, err
    code, _, err = run_cli(
        ["merge", "--width", "8", "--epochs", "1", "--resume", str(out)],
        capsys,
    )
    assert code == 2 and "other settings: --width 4 (now 8)" in err, err

    # The trained models and finished merges are read back, not made again.
    monkeypatch.setattr(
        merge_experiment, "train_mlp", lambda *a, **k: pytest.fail("trained")
    )
    code, out_text, err = run_cli([*args, "--resume", str(out)], capsys)
    assert code == 0, err
    result = json.loads((out / "merge.json").read_text())
    assert result["complete"] is True
    assert result["endpoints"] == partial["endpoints"]
    assert result["ratio"]["average"] == partial["ratio"]["average"]
    assert "regmean+repair" in result["ratio"] and "regmean+repair" in out_text
    assert (out / "loss_path.png").stat().st_size > 0
