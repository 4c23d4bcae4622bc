import keras
import numpy as np
import pytest

from keras_memgeom import continual
from keras_memgeom.src.memory.normalization_statistics import statistics_frozen


def test_registry_lists_the_methods():
    assert {"finetune", "joint", "ewc", "online"} <= set(
        continual.available_strategies()
    )
    assert isinstance(continual.get_strategy("ewc", strength=5), continual.EWC)
    assert continual.get_strategy_class("online") is continual.Online


def test_unknown_method():
    with pytest.raises(ValueError, match="Unknown method 'si'.*ewc, finetune"):
        continual.get_strategy("si")


def test_a_new_method_is_one_small_class(tiny_stream):
    @continual.register_strategy
    class FirstTaskReplay(continual.Strategy):
        name = "test-first-task-replay"
        epochs_seen = 0

        def training_data(self, context):
            first, task = context.stream.tasks[0], context.task
            if context.index == 0:
                return task.x_train, task.y_train
            return (
                np.concatenate([first.x_train[:50], task.x_train]),
                np.concatenate([first.y_train[:50], task.y_train]),
            )

        def callbacks(self, context):
            strategy = self

            class CountEpochs(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    strategy.epochs_seen += 1

            return [CountEpochs()]

    strategy = continual.get_strategy("test-first-task-replay")
    run = continual.Harness(tiny_stream, width=8, epochs=1).run(strategy)
    assert run["method"] == "test-first-task-replay"
    assert len(run["accuracy_matrix"]) == 2
    assert strategy.epochs_seen == 2


def test_names_are_unique():
    with pytest.raises(ValueError, match="already taken"):
        continual.register_strategy(
            type("Again", (continual.Strategy,), {"name": "ewc"})
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": 0}, "strength"),
        ({"strength": "high"}, "strength"),
        ({"estimator": "kfac"}, "Unknown Fisher estimator 'kfac'"),
        ({"max_examples": 0}, "max_examples"),
        ({"decay": 1.5}, "decay"),
        ({"strength": float("inf")}, "`strength` must be finite"),
        ({"strength": float("nan")}, "`strength` must be finite"),
        ({"decay": float("nan")}, "`decay` must be finite"),
        ({"decay": "0.5"}, "`decay` must be a number"),
        ({"normalization_statistics": "frozen"}, "normalization_statistics"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        continual.Online(**kwargs)


@pytest.mark.parametrize(
    "cls", [continual.EWC, continual.Online, continual.OnlineEWC]
)
def test_fisher_examples_is_a_deprecated_alias_of_max_examples(cls):
    with pytest.warns(DeprecationWarning, match="`max_examples`"):
        strategy = cls(fisher_examples=7)
    assert strategy.max_examples == 7
    assert strategy.get_config()["max_examples"] == 7
    assert "fisher_examples" not in strategy.get_config()
    with pytest.raises(ValueError, match="`fisher_examples`.*alias"):
        cls(max_examples=5, fisher_examples=7)


def test_config_and_repr():
    online = continual.Online(strength=30, estimator="empirical", decay=0.9)
    assert online.get_config() == {
        "name": "online",
        "strength": 30.0,
        "estimator": "empirical",
        "max_examples": None,
        "structure": "diagonal",
        "decay": 0.9,
    }
    assert repr(online).startswith("Online(strength=30.0")
    assert continual.Finetune().get_config() == {"name": "finetune"}


@pytest.mark.parametrize(
    "policy, frozen", [("freeze", True), ("update", False)]
)
def test_a_memory_strategy_trains_under_its_statistics_policy(
    tiny_stream, policy, frozen
):
    seen = []

    class Watched(continual.Online):
        name = "test-watched-online"

        def after_task(self, model, context):
            seen.append(statistics_frozen(model.get_layer("bn")))
            super().after_task(model, context)

    def model():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(8),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.ReLU(),
                keras.layers.Dense(10),
            ]
        )

    strategy = Watched(normalization_statistics=policy)
    continual.Harness(tiny_stream, model=model, epochs=1).run(strategy)
    # No memory while the first task trains; the second trains under one.
    assert seen == [False, frozen]
    config = strategy.get_config()
    assert config.get("normalization_statistics", "freeze") == policy
    del config["name"]
    assert continual.Online(**config).get_config() == strategy.get_config() | {
        "name": "online"
    }
