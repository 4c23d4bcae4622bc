import keras
import numpy as np
import pytest
from keras import ops
from sklearn.datasets import load_digits

import keras_memgeom
from keras_memgeom import FrontalLobe
from keras_memgeom.src.frontal_lobe.frontal_lobe import INFORMATION_ESTIMATORS
from keras_memgeom.src.memory.fisher import ESTIMATORS
from keras_memgeom.src.memory.fisher import estimate_fisher

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
    # Every unit, with its outgoing weights: all of the logits' kernel.
    assert sorted(whole) == [
        "hidden_1/bias",
        "hidden_1/kernel",
        "logits/kernel",
    ]
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


def test_information_estimators_are_memory_estimators():
    # One set of estimator names: the frontal lobe takes some of them.
    assert set(INFORMATION_ESTIMATORS) < set(ESTIMATORS)
    for estimator in INFORMATION_ESTIMATORS:
        assert FrontalLobe(["hidden_0"], estimator=estimator)


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
    """Digits, 64-32-32-10: phase 2 moves information out of the lobe."""
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


def convnet(pre_pruned=False):
    conv = keras_memgeom.layers.PrePrunedConv2D if pre_pruned else None
    dense = keras_memgeom.layers.PrePrunedDense if pre_pruned else None
    kwargs = {"zero_rate": 0.5, "seed": 0} if pre_pruned else {}
    conv = conv or keras.layers.Conv2D
    dense = dense or keras.layers.Dense
    inputs = keras.Input((6, 6, 3))
    h = conv(4, 3, activation="tanh", name="conv_0", **kwargs)(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = conv(4, 2, padding="same", activation="tanh", name="conv_1", **kwargs)(
        h
    )
    h = keras.layers.Flatten(name="flatten")(h)
    h = dense(6, activation="tanh", name="hidden", **kwargs)(h)
    return keras_memgeom.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def test_conv2d_units_are_filters_and_their_readers_rows(rng):
    model = convnet()
    masks = FrontalLobe(["conv_0", "conv_1"], fraction=0.5).masks(model)
    units = np.array([1, 1, 0, 0], "float32")
    np.testing.assert_array_equal(masks["conv_0/kernel"][1, 2, 0], units)
    np.testing.assert_array_equal(masks["conv_0/bias"], units)
    # conv_1 reads conv_0's filters through the pooling: its input channels.
    np.testing.assert_array_equal(masks["conv_1/kernel"][0, 1, :, 3], units)
    np.testing.assert_array_equal(masks["conv_1/kernel"][0, 1, 0], [1, 1, 1, 1])
    # The Dense layer reads conv_1 through Flatten: channels last, 2x2 places.
    np.testing.assert_array_equal(
        masks["hidden/kernel"][:, 5], np.tile(units, 4)
    )
    assert masks["hidden/kernel"].shape == (16, 6)


def test_unsupported_readers_are_named():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, name="hidden_0")(inputs)
    hidden = keras.layers.LayerNormalization(name="norm")(hidden)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(3)(hidden))
    with pytest.raises(ValueError, match="'norm' \\(LayerNormalization\\)"):
        FrontalLobe(["hidden_0"], fraction=0.5).masks(model)
    model = mlp()
    with pytest.raises(ValueError, match="No Dense or Conv2D layer reads"):
        FrontalLobe(["logits"]).reset(model)


@pytest.mark.parametrize("kind", ["dense", "conv2d", "pre-pruned"])
def test_reset_keeps_the_silenced_function(rng, kind):
    if kind == "dense":
        model, names = mlp(), ["hidden_0", "hidden_1"]
        x = rng.normal(size=(16, 6)).astype("float32")
    else:
        model = convnet(pre_pruned=kind == "pre-pruned")
        names = ["conv_0", "conv_1", "hidden"]
        x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
    lobe = FrontalLobe(names, fraction=0.5)
    masks = lobe.masks(model)
    before = {v.path: ops.convert_to_numpy(v.value) for v in model.weights}
    lobe.silence(model)
    silenced = ops.convert_to_numpy(model(x))
    lobe.reset(model)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x)), silenced, rtol=1e-6, atol=1e-6
    )
    for layer_name in names:
        layer = model.get_layer(layer_name)
        kernel = ops.convert_to_numpy(layer.kernel.value)
        old = before[layer.kernel.path]
        own = np.broadcast_to(masks[layer.bias.path], kernel.shape) == 1
        # Fresh incoming weights on the frontal lobe, the rest untouched
        # (the first layer reads no other frontal-lobe unit).
        assert not np.allclose(kernel[own], old[own])
        if layer_name == names[0]:
            np.testing.assert_array_equal(kernel[~own], old[~own])
        if kind == "pre-pruned":
            connectivity = ops.convert_to_numpy(layer.mask)
            assert np.all(kernel[..., connectivity == 0] == 0)

    # Zero outgoing weights: the rows of the readers' kernels (but for the
    # fresh incoming weights of a reader's own frontal-lobe units).
    def kernel(name):
        return ops.convert_to_numpy(model.get_layer(name).kernel.value)

    if kind == "dense":
        assert np.all(kernel("hidden_1")[:2, 2:] == 0)
        assert np.all(kernel("logits")[:2] == 0)
    else:
        assert np.all(kernel("conv_1")[:, :, :2, 2:] == 0)
        rows = np.tile([1, 1, 0, 0], 4) == 1
        assert np.all(kernel("hidden")[rows, 3:] == 0)
        assert np.all(kernel("logits")[:3] == 0)


@pytest.mark.parametrize("kind", ["conv2d", "pre-pruned"])
def test_conv2d_fisher_trace_is_the_estimated_fisher_of_the_lobe(rng, kind):
    model = convnet(pre_pruned=kind == "pre-pruned")
    model.compile("sgd", LOSS)
    x = rng.normal(size=(10, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 3, 10)
    lobe = FrontalLobe(["conv_0", "conv_1"], fraction=0.5, estimator="exact")
    fisher, _ = estimate_fisher(model, (x, y), estimator="exact")
    expected, _ = lobe.split(model, fisher)
    value = float(ops.convert_to_numpy(lobe.fisher_trace(model, x, y)))
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_fisher_trace_uses_the_loss_scale(rng):
    """With Keras's mean squared error the trace is that of the loss's
    curvature, `c = 2 / d` times the Gaussian Fisher, as for memories."""
    model = mlp()
    model.compile("sgd", "mean_squared_error")
    x = rng.normal(size=(12, 6)).astype("float32")
    y = rng.normal(size=(12, 3)).astype("float32")
    lobe = FrontalLobe(["hidden_0"], fraction=0.5, estimator="exact")
    fisher, _ = estimate_fisher(model, (x, y), estimator="exact")
    expected, _ = lobe.split(model, fisher)
    value = float(ops.convert_to_numpy(lobe.fisher_trace(model, x, y)))
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    plain = FrontalLobe(["hidden_0"], fraction=0.5, estimator="exact")
    model.compile("sgd", keras.losses.MeanSquaredError())
    assert plain.split(model, fisher)[0] == pytest.approx(expected)


def test_distill_copies_the_function_without_the_frontal_lobe(rng):
    """A trained network, distilled with half of its units silenced: the
    rest reproduces its decisions (>= 95% agreement, mean KL < 0.05)."""
    x, y = load_digits(return_X_y=True)
    x, y = (x[:600] / 16.0).astype("float32"), y[:600]
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    model = keras_memgeom.Model(
        inputs, keras.layers.Dense(10, name="logits")(hidden)
    )
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    teacher = ops.convert_to_numpy(model(x))
    lobe = FrontalLobe(["hidden"], fraction=0.5)
    lobe.distill(model, x, epochs=20, batch_size=32, learning_rate=3e-3)
    kernel = ops.convert_to_numpy(model.get_layer("logits").kernel.value)
    assert np.all(kernel[:16] == 0)  # still silenced after training
    student = ops.convert_to_numpy(model(x))
    agreement = np.mean(student.argmax(-1) == teacher.argmax(-1))
    log_p = teacher - np.log(np.exp(teacher).sum(-1, keepdims=True))
    log_q = student - np.log(np.exp(student).sum(-1, keepdims=True))
    kl = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))
    assert agreement >= 0.95 and kl < 0.05, (agreement, kl)
    lobe.reset(model)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x)), student, rtol=1e-5, atol=1e-5
    )
