import keras
import numpy as np
import pytest

from keras_memgeom import continual


def _cnn(num_outputs=10):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_outputs),
        ],
        name="tiny_cnn",
    )


@pytest.fixture(scope="module")
def image_stream():
    """Two tasks of 60 digits each, as images, built from arrays."""
    data = continual.ImageDataset.load("digits", seed=0)
    x, y = data.x_train[:120], data.y_train[:120]
    return continual.TaskStream.from_arrays(
        [(x[:60], y[:60]), (x[60:], y[60:])], seed=0
    )


def test_a_custom_cnn_trains_through_the_harness(image_stream):
    model = _cnn()
    harness = continual.Harness(
        image_stream, model=model, epochs=1, batch_size=16
    )
    document = harness.compare(
        [continual.Finetune(), continual.OnlineEWC(), continual.EWC()]
    )
    assert document["config"]["model"] == "tiny_cnn"
    for run in document["methods"].values():
        assert np.shape(run["accuracy_matrix"]) == (2, 2)
        assert (
            len(run["train_time_per_task"])
            == len(run["memory_time_per_task"])
            == 2
        )
    # Every run starts from the same weights, drawn from the init seed.
    initial = {
        tuple(r["initial_accuracy"]) for r in document["methods"].values()
    }
    assert len(initial) == 1
    assert document["methods"]["online-ewc"]["effective_dimension"][-1] > 0


def test_a_model_function_and_a_compile_hook(image_stream):
    seen = []

    def compile_hook():
        seen.append(1)
        return {
            "optimizer": keras.optimizers.SGD(0.01),
            "loss": "sparse_categorical_crossentropy",
        }

    softmax = lambda: keras.Sequential([_cnn(), keras.layers.Softmax()])  # noqa: E731
    run = continual.Harness(
        image_stream, model=softmax, compile=compile_hook, epochs=1
    ).run(continual.Online())
    assert len(seen) >= 2 and np.shape(run["accuracy_matrix"]) == (2, 2)


def test_task_incremental_masks_other_tasks_logits():
    stream = continual.TaskStream.make(
        "split",
        "digits",
        num_tasks=5,
        split_scenario="task",
        max_train_examples=150,
    )
    run = continual.Harness(stream, model=_cnn(), epochs=1).run(continual.EWC())
    # Chance is 1/2 among a task's two classes, not 1/10.
    assert min(run["initial_accuracy"]) > 0.2
    assert np.shape(run["accuracy_matrix"]) == (5, 5)


def test_a_model_with_the_wrong_outputs_is_refused(image_stream):
    harness = continual.Harness(image_stream, model=_cnn(num_outputs=3))
    with pytest.raises(
        ValueError, match="Model 'tiny_cnn' maps inputs .* needs 10 logits"
    ):
        harness.run(continual.Finetune())
    with pytest.raises(ValueError, match="frontal-lobe builds its own model"):
        continual.Harness(image_stream, model=_cnn()).check(
            [continual.FrontalLobeStrategy()]
        )


def test_a_sweep_reports_every_grid_point(image_stream):
    harness = continual.Harness(
        image_stream, width=8, epochs=1, strength_grid=(1, 100)
    )
    document = harness.compare(
        [continual.Finetune(), continual.Online(strength="sweep")]
    )
    assert list(document["methods"]) == ["finetune", "online@1", "online@100"]
    assert document["methods"]["online@100"]["config"]["strength"] == 100.0
    sweep = document["sweep"]["online"]
    assert [p["strength"] for p in sweep["grid"]] == [1.0, 100.0]
    best = max(sweep["grid"], key=lambda p: p["average_accuracy"])
    assert sweep["best"] == {
        "strength": best["strength"],
        "average_accuracy": best["average_accuracy"],
    }
    table = continual.format_table(document)
    assert "sweep online: 1: " in table and "best strength" in table


def test_repeats_give_mean_and_spread(image_stream):
    harness = continual.Harness(
        image_stream, width=8, epochs=1, seed=5, repeats=2
    )
    document = harness.compare([continual.Finetune()])
    assert list(document["methods"]) == ["finetune#seed5", "finetune#seed6"]
    entry = document["summary"]["finetune"]
    values = [r["average_accuracy"] for r in document["methods"].values()]
    assert entry["init_seeds"] == [5, 6]
    assert entry["average_accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert entry["average_accuracy"]["std"] == pytest.approx(
        np.std(values, ddof=1)
    )
    assert "±" in continual.format_table(document)


def test_data_and_init_seeds_are_independent():
    make = lambda seed: continual.TaskStream.make(  # noqa: E731
        "permuted", "digits", num_tasks=2, max_train_examples=100, seed=seed
    )
    same_data, other_data = make(0), make(1)

    def initial_weights(stream, seed):
        harness = continual.Harness(stream, width=4, seed=seed)
        keras.utils.set_random_seed(seed)
        return harness.build_model(continual.Finetune()).get_weights()[0]

    # Same data seed, other init seed: same tasks, other weights.
    np.testing.assert_array_equal(
        same_data.tasks[1].x_train, make(0).tasks[1].x_train
    )
    assert not np.array_equal(
        initial_weights(same_data, 0), initial_weights(same_data, 1)
    )
    # Other data seed, same init seed: other tasks, same weights.
    assert not np.array_equal(
        same_data.tasks[1].x_train, other_data.tasks[1].x_train
    )
    np.testing.assert_array_equal(
        initial_weights(same_data, 0), initial_weights(other_data, 0)
    )
