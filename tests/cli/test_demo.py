"""`memgeom demo`: the bench settings of the main job."""

import json

import pytest

from keras_memgeom import continual
from tests.cli.command_line import run_cli


def test_demo_settings(monkeypatch, tmp_path, capsys):
    # The real demo takes a minute; check it asks the harness for the right run.
    seen = {}

    def compare(harness, strategies, **kwargs):
        seen["stream"] = harness.stream
        seen["harness"] = harness
        seen["strategies"] = strategies
        raise KeyboardInterrupt

    monkeypatch.setattr(continual.Harness, "compare", compare)
    code, _, err = run_cli(["demo", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 130 and f"--resume {tmp_path}" in err
    assert (
        seen["stream"].scenario == "permuted"
        and seen["stream"].dataset == "digits"
    )
    assert len(seen["stream"].tasks) == 5
    assert [s.name for s in seen["strategies"]] == [
        "finetune",
        "online",
        "joint",
    ]
    assert seen["strategies"][1].strength == 1000.0
    assert (seen["harness"].width, seen["harness"].epochs) == (400, 10)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    code, out, _ = run_cli(["demo", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0
    methods = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert (
        methods["online"]["average_accuracy"]
        > methods["finetune"]["average_accuracy"] + 0.1
    )
    assert (
        methods["joint"]["average_accuracy"]
        > methods["online"]["average_accuracy"]
    )
