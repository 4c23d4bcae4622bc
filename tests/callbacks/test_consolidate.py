import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom.callbacks import Consolidate

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def model_and_data(rng, frontal_lobe=True, strength=10.0):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden_0")(inputs)
    model = keras_memgeom.Model(
        inputs, keras.layers.Dense(3, name="logits")(hidden)
    )
    lobe = (
        keras_memgeom.FrontalLobe(["hidden_0"], fraction=0.5)
        if frontal_lobe
        else None
    )
    model.compile("adam", LOSS, frontal_lobe=lobe, strength=strength)
    x = rng.normal(size=(40, 6)).astype("float32")
    return model, x, rng.integers(0, 3, 40)


def test_phases_and_consolidation_at_the_task_boundary(rng):
    model, x, y = model_and_data(rng)
    callback = Consolidate((x, y), information_epochs=2)
    history = model.fit(
        x, y, epochs=4, batch_size=20, verbose=0, callbacks=[callback]
    )

    penalty = history.history["information_penalty"]
    assert penalty[:2] == [0.0, 0.0] and min(penalty[2:]) > 0
    assert [r["phase"] for r in callback.records] == [
        "task",
        "information",
        "consolidated",
    ]
    assert len(model.memories) == 1 and model.memories[0].num_examples == 40
    for key in ("frontal_lobe_fisher_trace", "rest_fisher_trace"):
        assert len(history.history[key]) == 2
    record = callback.records[-1]
    masks = model.frontal_lobe.masks(model)
    size = sum(int(m.sum()) for m in masks.values())
    assert 0 < record["frontal_lobe_effective_dimension"] <= size

    # The next task: phase 1 again, with the memory attached and merged into.
    callback = Consolidate((x, y), information_epochs=1)
    history = model.fit(
        x, y, epochs=2, batch_size=20, verbose=0, callbacks=[callback]
    )
    assert history.history["information_penalty"][0] == 0.0
    assert history.history["memory_penalty"][0] > 0
    assert len(model.memories) == 1 and model.memories[0].num_examples == 80


def test_every_k_epochs_and_forgetting_the_frontal_lobe(rng):
    model, x, y = model_and_data(rng)
    callback = Consolidate(
        (x, y), information_epochs=1, period=2, forget_frontal_lobe=True
    )
    model.fit(x, y, epochs=4, batch_size=20, verbose=0, callbacks=[callback])
    assert [r["phase"] for r in callback.records].count("consolidated") == 2
    assert model.memories[0].num_examples == 80
    fisher = model.memories[0].fisher
    for path, mask in model.frontal_lobe.masks(model).items():
        assert np.all(fisher[path][mask == 1] == 0)
        assert np.any(fisher[path][mask == 0] > 0) or mask.all()
    assert callback.records[-1]["frontal_lobe_effective_dimension"] == 0


def test_bad_arguments_and_models_are_named(rng):
    model, x, y = model_and_data(rng, frontal_lobe=False)
    with pytest.raises(ValueError, match="compiled with `frontal_lobe"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Consolidate((x, y))])
    model, x, y = model_and_data(rng)
    with pytest.raises(ValueError, match="longer than a cycle"):
        model.fit(
            x,
            y,
            epochs=2,
            verbose=0,
            callbacks=[Consolidate((x, y), information_epochs=3)],
        )
    for kwargs, message in [
        ({"information_epochs": -1}, "information_epochs"),
        ({"period": 0}, "period"),
        ({"estimator": "magic"}, "estimator"),
        ({"decay": 0.0}, "decay"),
        ({"prior_precision": 0.0}, "prior_precision"),
        ({"prior_precision": float("inf")}, "`prior_precision` must be finite"),
        ({"decay": float("nan")}, "`decay` must be finite"),
        ({"max_examples": 0}, "`max_examples` must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            Consolidate((x, y), **kwargs)
    with pytest.raises(ValueError, match="tuple"):
        Consolidate(x)


def test_early_stopping_inside_the_cycle_still_consolidates(rng):
    model, x, y = model_and_data(rng)
    callback = Consolidate((x, y), information_epochs=2)
    # The information penalty is 0 in phase 1, so this stops after 2 of 6
    # epochs.
    stop = keras.callbacks.EarlyStopping(
        monitor="information_penalty", mode="min", patience=0
    )
    history = model.fit(
        x, y, epochs=6, batch_size=20, verbose=0, callbacks=[callback, stop]
    )
    assert len(history.history["loss"]) == 2
    assert [r["phase"] for r in callback.records] == [
        "information",
        "consolidated",
    ]
    assert callback.records[-1]["epoch"] == 1
    assert len(model.memories) == 1 and model.memories[0].num_examples == 40

    # The next task trains against the memory the stopped one left.
    history = model.fit(x, y, epochs=1, batch_size=20, verbose=0)
    assert history.history["memory_penalty"][0] > 0


def test_epochs_left_over_after_the_last_period_are_consolidated(rng):
    model, x, y = model_and_data(rng)
    callback = Consolidate((x, y), information_epochs=1, period=2)
    model.fit(x, y, epochs=3, batch_size=20, verbose=0, callbacks=[callback])
    consolidated = [
        r["epoch"] for r in callback.records if r["phase"] == "consolidated"
    ]
    assert consolidated == [1, 2]
    assert model.memories[0].num_examples == 80
