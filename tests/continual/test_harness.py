import copy

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import continual


def test_every_method_runs_end_to_end(tiny_document):
    methods = tiny_document["methods"]
    assert list(methods) == ["finetune", "joint", "ewc", "online"]
    for run in methods.values():
        matrix = np.array(run["accuracy_matrix"])
        assert matrix.shape == (2, 2)
        assert np.all((0 <= matrix) & (matrix <= 1))
        assert run["average_accuracy"] == pytest.approx(matrix[-1].mean())
        assert len(run["wall_time_per_task"]) == 2 and run["wall_time"] > 0
    assert methods["finetune"]["effective_dimension"] == [None, None]
    for name in ("ewc", "online"):
        dimensions = methods[name]["effective_dimension"]
        assert all(d > 0 for d in dimensions)
    assert methods["ewc"]["strength"] == [None, 100.0]
    assert methods["ewc"]["config"]["estimator"] == "sampled"
    assert methods["online"]["config"]["decay"] == 0.5
    continual.validate_results(tiny_document)


def test_auto_strength_is_chosen_from_the_grid_and_recorded(tiny_document):
    run = tiny_document["methods"]["online"]
    assert run["config"]["strength"] == "auto"
    # No memory yet for the first task: nothing to choose.
    assert run["strength"][0] is None
    assert run["strength"][1] in (1.0, 1000.0)
    assert tiny_document["config"]["strength_grid"] == [1.0, 1000.0]


def test_same_seed_same_results(tiny_stream, tiny_document):
    harness = continual.Harness(tiny_stream, width=16, epochs=1)
    again = harness.run(continual.Finetune())["accuracy_matrix"]
    assert again == tiny_document["methods"]["finetune"]["accuracy_matrix"]


def test_results_recorded_with_fisher_examples_still_resume(
    tiny_stream, tiny_document
):
    # A results file from before the rename names `max_examples` the old
    # way; its complete runs are kept, not repeated.
    previous = copy.deepcopy(tiny_document)
    config = previous["methods"]["online"]["config"]
    config["fisher_examples"] = config.pop("max_examples")
    harness = continual.Harness(
        tiny_stream, width=16, epochs=1, strength_grid=(1, 1000)
    )
    again = harness.compare(
        [continual.Online(strength="auto", decay=0.5)], previous=previous
    )
    assert again["methods"]["online"] == previous["methods"]["online"]


def test_memory_protects_the_first_task():
    # Large enough that the first task is learned, small enough for CI.
    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=2, max_train_examples=600
    )
    harness = continual.Harness(stream, width=64, epochs=5, batch_size=64)
    finetune = harness.run(continual.Finetune())
    online = harness.run(continual.Online(strength=1000))
    joint = harness.run(continual.Joint())
    kept = lambda run: run["accuracy_matrix"][1][0]  # noqa: E731
    assert finetune["accuracy_matrix"][0][0] > 0.7
    assert kept(online) > kept(finetune) + 0.1
    assert joint["average_accuracy"] > finetune["average_accuracy"]


def test_memory_penalty_is_attached_for_the_second_task(tiny_stream):
    strategy = continual.Online(strength=7)
    model = strategy.build_model(tiny_stream, width=8)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    first, second = (continual.TaskContext(tiny_stream, i, 7.0) for i in (0, 1))
    strategy.before_task(model, first)
    assert strategy.memory is None
    assert not any(_penalized(model))
    strategy.after_task(model, first)
    assert strategy.memory.num_examples == len(tiny_stream.tasks[0].y_train)
    strategy.before_task(model, second)
    assert all(_penalized(model))
    # The penalty is zero at the anchor and grows away from it.
    assert _total(model.losses) == pytest.approx(0.0, abs=1e-6)
    model.trainable_variables[0].assign(model.trainable_variables[0] + 0.1)
    assert _total(model.losses) > 0


def _total(losses):
    return float(sum(keras.ops.convert_to_numpy(loss) for loss in losses))


def _penalized(model):
    return [
        isinstance(v.regularizer, keras_memgeom.FisherRegularizer)
        for v in model.trainable_variables
    ]


def test_harness_rejects_bad_settings(tiny_stream):
    with pytest.raises(ValueError, match="width"):
        continual.Harness(tiny_stream, width=0)
    with pytest.raises(ValueError, match="strength_grid"):
        continual.Harness(tiny_stream, strength_grid=(0, 1))
    with pytest.raises(ValueError, match="`strength_grid` must be finite"):
        continual.Harness(tiny_stream, strength_grid=(1, float("inf")))
    with pytest.raises(ValueError, match="`learning_rate` must be finite"):
        continual.Harness(tiny_stream, learning_rate=float("nan"))
    with pytest.raises(ValueError, match="`prior_precision` must be > 0"):
        continual.Harness(tiny_stream, prior_precision=0.0)
    no_validation = continual.TaskStream.make(
        "permuted",
        "digits",
        num_tasks=2,
        max_train_examples=100,
        validation_split=0,
    )
    with pytest.raises(ValueError, match="needs validation splits"):
        continual.Harness(no_validation).run(continual.Online(strength="auto"))
    harness = continual.Harness(tiny_stream)
    with pytest.raises(ValueError, match="once"):
        harness.compare([continual.Finetune(), continual.Finetune()])


def test_progress_names_task_method_and_epoch(tiny_document, tiny_progress):
    assert "finetune: task 1/2 epoch 1/1 loss" in tiny_progress[0]
    assert "online: task 2/2 (strength 1000) epoch 1/1 loss" in "\n".join(
        tiny_progress
    )
    assert any(
        "online: strength 1: validation accuracy" in line
        for line in tiny_progress
    )
    assert any("ewc: task 2/2 done" in line for line in tiny_progress)


@pytest.mark.parametrize(
    "scenario, split_scenario",
    [("split", "task"), ("split", "class"), ("rotated", "task")],
)
def test_other_scenarios_run_with_a_memory(scenario, split_scenario):
    stream = continual.TaskStream.make(
        scenario,
        "digits",
        num_tasks=2,
        split_scenario=split_scenario,
        max_train_examples=200,
    )
    run = continual.Harness(stream, width=8, epochs=1).run(continual.Online())
    assert np.shape(run["accuracy_matrix"]) == (2, 2)
    assert all(d > 0 for d in run["effective_dimension"])
