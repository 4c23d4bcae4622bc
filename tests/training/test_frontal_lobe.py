import keras
import numpy as np
import pytest
from keras import ops
from sklearn.datasets import load_digits

import keras_memgeom
from keras_memgeom import FrontalLobe
from keras_memgeom.memory.fisher import estimate_fisher

pytestmark = pytest.mark.usefixtures("full_precision")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp(num_features=6, width=5, num_classes=3, activation="tanh"):
    inputs = keras.Input((num_features,))
    hidden = keras.layers.Dense(width, activation=activation, name="hidden_0")(
        inputs
    )
    hidden = keras.layers.Dense(width, activation=activation, name="hidden_1")(
        hidden
    )
    outputs = keras.layers.Dense(num_classes, name="logits")(hidden)
    return keras_memgeom.Model(inputs, outputs)


def tiny_data(rng, num_examples=12, num_features=6, num_classes=3):
    x = rng.normal(size=(num_examples, num_features)).astype("float32")
    return x, rng.integers(0, num_classes, num_examples)


def flat(model):
    return np.concatenate(
        [
            np.ravel(ops.convert_to_numpy(v.value))
            for v in model.trainable_variables
        ]
    )


def set_flat(model, vector):
    offset = 0
    for variable in model.trainable_variables:
        size = int(np.prod(variable.shape))
        variable.assign(vector[offset : offset + size].reshape(variable.shape))
        offset += size


def test_masks_whole_layers_and_unit_fractions():
    model = mlp(width=4)
    whole = FrontalLobe(["hidden_1"]).masks(model)
    assert sorted(whole) == ["hidden_1/bias", "hidden_1/kernel"]
    assert all(np.all(m == 1) for m in whole.values())

    half = FrontalLobe(["hidden_0"], fraction=0.5).masks(model)
    assert sorted(half) == [
        "hidden_0/bias",
        "hidden_0/kernel",
        "hidden_1/kernel",
    ]
    np.testing.assert_array_equal(half["hidden_0/bias"], [1, 1, 0, 0])
    np.testing.assert_array_equal(half["hidden_0/kernel"][0], [1, 1, 0, 0])
    # Outgoing weights: the rows of the next layer's kernel.
    np.testing.assert_array_equal(half["hidden_1/kernel"][:, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(half["hidden_1/kernel"][0], [1, 1, 1, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": []}, "non-empty list"),
        ({"layers": ["hidden_0"], "fraction": 0.0}, "fraction"),
        ({"layers": ["hidden_0"], "fraction": 1.5}, "fraction"),
        (
            {"layers": ["hidden_0"], "information_strength": -1.0},
            "information_strength",
        ),
        ({"layers": ["hidden_0"], "estimator": "batched"}, "estimator"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrontalLobe(**kwargs)


def test_unknown_or_non_dense_layer_is_named():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, name="hidden_0")(inputs)
    hidden = keras.layers.LayerNormalization(name="norm")(hidden)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(3)(hidden))
    with pytest.raises(ValueError, match="Unknown layer 'hiden_0'"):
        FrontalLobe(["hiden_0"]).masks(model)
    with pytest.raises(ValueError, match="'norm' is a LayerNormalization"):
        FrontalLobe(["norm"]).masks(model)


def test_compile_checks_frontal_lobe_and_penalty_switch():
    model = mlp()
    with pytest.raises(ValueError, match="FrontalLobe"):
        model.compile("sgd", LOSS, frontal_lobe="hidden_0")
    model.compile("sgd", LOSS)
    with pytest.raises(ValueError, match="no frontal lobe"):
        model.set_information_penalty(True)


@pytest.mark.parametrize("estimator", ["empirical", "exact"])
def test_fisher_trace_is_the_estimated_fisher_summed_over_the_frontal_lobe(
    rng, estimator
):
    model = mlp()
    model.compile("sgd", LOSS)
    x, y = tiny_data(rng)
    frontal_lobe = FrontalLobe(
        ["hidden_0", "hidden_1"], fraction=0.4, estimator=estimator
    )
    fisher, _ = estimate_fisher(model, (x, y), estimator=estimator)
    expected, rest = frontal_lobe.split(model, fisher)
    value = float(ops.convert_to_numpy(frontal_lobe.fisher_trace(model, x, y)))
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    assert rest > 0


@pytest.mark.parametrize("estimator", ["empirical", "exact"])
def test_penalty_gradient_matches_finite_differences(rng, estimator):
    """The gradient the training step applies, against central differences."""
    model = mlp()
    x, y = tiny_data(rng)
    strength = 2.0
    frontal_lobe = FrontalLobe(
        ["hidden_0", "hidden_1"],
        fraction=0.6,
        information_strength=strength,
        estimator=estimator,
    )
    # SGD with rate 1: each step moves the weights by minus the gradient.
    model.compile(keras.optimizers.SGD(1.0), LOSS, frontal_lobe=frontal_lobe)
    start = flat(model)
    model.train_on_batch(x, y)
    with_penalty = flat(model)
    set_flat(model, start)
    model.set_information_penalty(False)
    model.train_on_batch(x, y)
    without = flat(model)
    gradient = (without - with_penalty) / strength

    def trace(vector):
        set_flat(model, vector)
        return float(
            ops.convert_to_numpy(frontal_lobe.fisher_trace(model, x, y))
        )

    assert np.linalg.norm(gradient) > 1e-3
    for direction in (
        gradient / np.linalg.norm(gradient),
        rng.normal(size=start.shape),
    ):
        direction = (direction / np.linalg.norm(direction)).astype("float32")
        eps = 1e-2
        numeric = (
            trace(start + eps * direction) - trace(start - eps * direction)
        ) / (2 * eps)
        analytic = float(gradient @ direction)
        np.testing.assert_allclose(
            analytic, numeric, rtol=2e-2, atol=2e-3 * np.linalg.norm(gradient)
        )


def test_save_and_load_keep_the_frontal_lobe(tmp_path, rng):
    model = mlp()
    frontal_lobe = FrontalLobe(
        ["hidden_0"], fraction=0.5, information_strength=3.0, estimator="exact"
    )
    model.compile("adam", LOSS, frontal_lobe=frontal_lobe)
    x, y = tiny_data(rng)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.frontal_lobe.get_config() == frontal_lobe.get_config()
    assert loaded.information_penalty_active
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(frontal_lobe)
    )
    assert restored.get_config() == frontal_lobe.get_config()


@pytest.mark.parametrize(
    "estimator, learning_rate, task_epochs, information_epochs",
    # The empirical trace is the cheap proxy: it is measured by its effect on
    # the exact trace, which must fall all the same.
    [("exact", 1e-3, 20, 3), ("empirical", 3e-3, 15, 10)],
)
def test_phase_two_halves_the_frontal_lobe_fisher_and_keeps_accuracy(
    estimator, learning_rate, task_epochs, information_epochs
):
    """Digits, 64-32-32-10: phase 2 moves information out of the frontal lobe."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden_0")(inputs)
    hidden = keras.layers.Dense(32, activation="relu", name="hidden_1")(hidden)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(10)(hidden))
    frontal_lobe = FrontalLobe(
        ["hidden_0", "hidden_1"],
        fraction=0.5,
        information_strength=1.0,
        estimator=estimator,
    )
    model.compile(
        keras.optimizers.Adam(learning_rate),
        LOSS,
        frontal_lobe=frontal_lobe,
        metrics=["accuracy"],
    )

    def measure():
        fisher, _ = estimate_fisher(
            model, (x_train, y_train), estimator="exact"
        )
        return frontal_lobe.split(model, fisher)[0], model.evaluate(
            x_test, y_test, verbose=0
        )[1]

    model.set_information_penalty(False)
    model.fit(x_train, y_train, batch_size=64, epochs=task_epochs, verbose=0)
    trace_before, accuracy_before = measure()
    model.set_information_penalty(True)
    history = model.fit(
        x_train, y_train, batch_size=64, epochs=information_epochs, verbose=0
    )
    trace_after, accuracy_after = measure()
    penalty = history.history["information_penalty"]
    assert penalty[-1] < penalty[0]
    assert trace_after <= 0.5 * trace_before, (trace_before, trace_after)
    assert accuracy_after >= accuracy_before - 0.02, (
        accuracy_before,
        accuracy_after,
    )
