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
        (x, y), information_epochs=1, period=2, consolidation="forget"
    )
    model.fit(x, y, epochs=4, batch_size=20, verbose=0, callbacks=[callback])
    assert [r["phase"] for r in callback.records].count("consolidated") == 2
    assert model.memories[0].num_examples == 80
    fisher = model.memories[0].fisher
    for path, mask in model.frontal_lobe.masks(model).items():
        assert np.all(fisher[path][mask == 1] == 0)
        assert np.any(fisher[path][mask == 0] > 0) or mask.all()
    assert callback.records[-1]["frontal_lobe_effective_dimension"] == 0


def test_the_old_merge_consolidation_is_a_deprecated_keep(rng):
    model, x, y = model_and_data(rng)
    with pytest.warns(DeprecationWarning, match="consolidation='keep'"):
        callback = Consolidate(
            (x, y), information_epochs=0, consolidation="merge"
        )
    assert callback.consolidation == "keep"
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    # "keep": the frontal lobe's Fisher is remembered with the rest.
    fisher = model.memories[0].fisher
    assert any(
        np.any(fisher[path][mask == 1] > 0)
        for path, mask in model.frontal_lobe.masks(model).items()
    )


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
        ({"consolidation": "prune"}, "Unknown consolidation 'prune'"),
        ({"distill_epochs": 0}, "`distill_epochs` must be at least 1"),
        ({"distill_learning_rate": 0.0}, "`distill_learning_rate`"),
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


class WeightsAtEpochEnd(keras.callbacks.Callback):
    """Keeps the weights at each epoch's end, before `Consolidate` runs."""

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()


def outputs_of(model, weights, x, silenced=False):
    copy = keras.models.clone_model(model)
    copy.set_weights(weights)
    if silenced:
        model.frontal_lobe.silence(copy)
    return keras.ops.convert_to_numpy(copy(x))


@pytest.mark.parametrize("consolidation", ["reset", "distill"])
def test_emptying_consolidations_keep_the_frontal_lobe_at_the_prior(
    rng, consolidation
):
    model, x, y = model_and_data(rng)
    weights = WeightsAtEpochEnd()
    callback = Consolidate(
        (x, y),
        information_epochs=1,
        consolidation=consolidation,
        distill_epochs=2,
    )
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=20,
        verbose=0,
        callbacks=[weights, callback],
    )
    after = keras.ops.convert_to_numpy(model(x))
    if consolidation == "reset":
        # Reset alone computes exactly what the network computed without
        # its frontal lobe.
        np.testing.assert_allclose(
            after,
            outputs_of(model, weights.weights, x, silenced=True),
            rtol=1e-5,
            atol=1e-5,
        )
    else:
        assert callback.records[-2]["distillation_loss"] > 0
    # The frontal lobe's Fisher in memory is 0: its precision is the prior.
    fisher = model.memories[0].fisher
    masks = model.frontal_lobe.masks(model)
    for path, mask in masks.items():
        assert np.all(fisher[path][mask == 1] == 0)
    assert callback.records[-1]["frontal_lobe_effective_dimension"] == 0
    assert callback.records[-1]["rest_effective_dimension"] > 0
    # Its outgoing weights are 0, so the next task starts from that function.
    kernel = keras.ops.convert_to_numpy(model.get_layer("logits").kernel.value)
    assert np.all(kernel[:4] == 0)


def test_distill_then_reset_keeps_the_task_and_saves(rng, tmp_path):
    """On a learned task the distilled network keeps >= 90% of the whole
    network's decisions with a mean KL below 0.1, and the model with its
    memory survives a save and load."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x[:500] / 16.0).astype("float32"), y[:500]
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden_0")(inputs)
    model = keras_memgeom.Model(
        inputs, keras.layers.Dense(10, name="logits")(hidden)
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        LOSS,
        frontal_lobe=keras_memgeom.FrontalLobe(["hidden_0"], fraction=0.25),
        strength=10.0,
    )
    weights = WeightsAtEpochEnd()
    callback = Consolidate(
        (x, y),
        information_epochs=0,
        consolidation="distill",
        distill_epochs=15,
        distill_learning_rate=3e-3,
    )
    model.fit(
        x, y, epochs=10, batch_size=32, verbose=0, callbacks=[weights, callback]
    )
    teacher = outputs_of(model, weights.weights, x)
    student = keras.ops.convert_to_numpy(model(x))
    agreement = np.mean(student.argmax(-1) == teacher.argmax(-1))
    log_p = teacher - np.log(np.exp(teacher).sum(-1, keepdims=True))
    log_q = student - np.log(np.exp(student).sum(-1, keepdims=True))
    kl = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))
    assert agreement >= 0.9 and kl < 0.1, (agreement, kl)

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), student, rtol=1e-5, atol=1e-5
    )
    assert loaded.frontal_lobe.get_config() == model.frontal_lobe.get_config()
    np.testing.assert_array_equal(
        loaded.memories[0].fisher["hidden_0/kernel"],
        model.memories[0].fisher["hidden_0/kernel"],
    )


def test_distill_every_k_epochs_inside_one_fit(rng):
    """Distillation is a `fit` of its own, also in the middle of one."""
    model, x, y = model_and_data(rng)
    callback = Consolidate(
        (x, y),
        information_epochs=0,
        period=2,
        consolidation="distill",
        distill_epochs=1,
    )
    history = model.fit(
        x, y, epochs=4, batch_size=20, verbose=0, callbacks=[callback]
    )
    assert len(history.history["loss"]) == 4
    assert len(history.history["distillation_loss"]) == 2
    assert model.memories[0].num_examples == 80
    assert callback.records[-1]["frontal_lobe_effective_dimension"] == 0
    kernel = keras.ops.convert_to_numpy(model.get_layer("logits").kernel.value)
    assert np.all(kernel[:4] == 0)
