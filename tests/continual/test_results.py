import copy
import json
import os

import keras
import pytest

from keras_memgeom import continual
from keras_memgeom.src.utils.json_schema import schema_errors


def test_document_follows_the_schema(tiny_document):
    assert schema_errors(tiny_document, continual.RESULTS_SCHEMA) == []
    assert tiny_document["backend"] == keras.backend.backend()
    assert tiny_document["versions"]["keras"] == keras.__version__
    assert tiny_document["config"]["scenario"] == "permuted"
    for run in tiny_document["methods"].values():
        assert isinstance(run["average_accuracy"], float)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("seed"), "$: missing 'seed'"),
        (
            lambda d: d["methods"]["ewc"].update(average_accuracy=1.5),
            "above the maximum",
        ),
        (
            lambda d: d["methods"]["ewc"].update(strength="x"),
            "$.methods.ewc.strength: expected array",
        ),
        (lambda d: d.update(seed=True), "$.seed: expected integer"),
        (
            lambda d: d["methods"]["ewc"]["accuracy_matrix"].pop(),
            "shape (1, 2)",
        ),
        (lambda d: d.update(methods={}), "at least 1"),
    ],
)
def test_invalid_documents_are_rejected(tiny_document, change, message):
    document = copy.deepcopy(tiny_document)
    change(document)
    with pytest.raises(ValueError, match="Invalid results document") as info:
        continual.validate_results(document)
    assert message in str(info.value)


def test_save_and_load(tiny_document, tmp_path):
    path = tmp_path / "results.json"
    continual.save_results(tiny_document, str(path))
    assert continual.load_results(str(path)) == json.loads(
        json.dumps(tiny_document)
    )
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left


def test_invalid_document_is_not_written(tiny_document, tmp_path):
    document = copy.deepcopy(tiny_document)
    del document["methods"]["ewc"]["forgetting"]
    with pytest.raises(ValueError):
        continual.save_results(document, str(tmp_path / "results.json"))
    assert os.listdir(tmp_path) == []


def test_table(tiny_document):
    table = continual.format_table(tiny_document).splitlines()
    assert table[0].split()[:3] == ["method", "avg", "acc"]
    assert [line.split()[0] for line in table[2:]] == [
        "finetune",
        "joint",
        "ewc",
        "online",
    ]
    ewc = tiny_document["methods"]["ewc"]
    assert f"{ewc['average_accuracy']:.3f}" in table[4]
    assert "auto" in table[5]


def test_unfinished_runs_are_valid_and_marked(tiny_document):
    document = copy.deepcopy(tiny_document)
    assert document["complete"] is True and document["schema_version"] == 2
    ewc = document["methods"]["ewc"]
    for key in (
        "average_accuracy",
        "average_accuracy_curve",
        "backward_transfer",
    ):
        del ewc[key]
    for key in (
        "accuracy_matrix",
        "strength",
        "effective_dimension",
        "wall_time_per_task",
    ):
        ewc[key].pop()
    ewc["tasks_done"] = 1
    with pytest.raises(
        ValueError, match="1 of 2 tasks done in a complete document"
    ):
        continual.validate_results(document)
    document["complete"] = False
    continual.validate_results(document)
    ewc["strength"].append(None)
    with pytest.raises(
        ValueError, match=r"\$.methods.ewc.strength: 2 entries, expected 1"
    ):
        continual.validate_results(document)


def test_complete_documents_need_every_method_and_metric(tiny_document):
    document = copy.deepcopy(tiny_document)
    document["config"]["methods"] = ["finetune", "si"]
    with pytest.raises(ValueError, match="missing 'si' of config.methods"):
        continual.validate_results(document)
    document = copy.deepcopy(tiny_document)
    del document["methods"]["joint"]["forgetting"]
    with pytest.raises(
        ValueError, match=r"\$.methods.joint: missing 'forgetting'"
    ):
        continual.validate_results(document)


def test_version_1_documents_are_still_read(tiny_document):
    document = copy.deepcopy(tiny_document)
    document["schema_version"] = 1
    del document["complete"]
    for run in document["methods"].values():
        del run["tasks_done"]
    continual.validate_results(document)
    document["schema_version"] = 2
    with pytest.raises(ValueError, match="missing 'complete'"):
        continual.validate_results(document)
