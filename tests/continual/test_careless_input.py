import os

import keras
import numpy as np
import pytest

from keras_memgeom import continual


@pytest.fixture(scope="module")
def small_stream():
    """Two tasks of 40 digits each, built from arrays."""
    data = continual.ImageDataset.load("digits", seed=0)
    x, y = data.x_train[:80], data.y_train[:80]
    return continual.TaskStream.from_arrays(
        [(x[:40], y[:40]), (x[40:], y[40:])], seed=0
    )


def _mlp(stream, activation=None):
    return keras.Sequential(
        [
            keras.Input(stream.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(stream.num_outputs, activation=activation),
        ]
    )


def _label_regression(y_true, y_pred):
    label = keras.ops.expand_dims(keras.ops.cast(y_true, y_pred.dtype), -1)
    return keras.ops.mean(keras.ops.square(label - y_pred), axis=-1)


def test_masked_logits_survive_save_and_load(tmp_path):
    inputs = keras.Input((3,))
    outputs = continual.MaskedLogits((0, 2), num_outputs=4)(
        keras.layers.Dense(4)(inputs)
    )
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "masked.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), expected, rtol=1e-6
    )
    # Classes 1 and 3 are masked: their logits sit 1e9 below.
    assert np.all(expected[:, [1, 3]] < -1e8)
    assert loaded.layers[-1].get_config()["classes"] == [0, 2]


def test_a_model_compiled_with_a_masked_loss_saves_and_loads(tmp_path):
    from keras_memgeom.src.continual.masked_logits import MaskedLoss

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    loss = MaskedLoss(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        classes=(0, 2),
        num_outputs=4,
    )
    model.compile("sgd", loss)
    path = str(tmp_path / "masked_loss.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    y = np.array([0, 2, 2, 0, 2])
    logits = keras.ops.convert_to_numpy(model(x))
    # Cross-entropy over classes 0 and 2 only, by hand.
    kept = logits[:, [0, 2]]
    log_softmax = kept - np.log(np.exp(kept).sum(axis=1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(5), y // 2])
    value = loaded.loss(y, loaded(x))
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(value)), expected, rtol=1e-5
    )


@pytest.mark.parametrize(
    "compile, match",
    [
        ({"loss": "mse"}, "score integer class labels"),
        (
            {"loss": keras.losses.MeanAbsoluteError()},
            "score integer class labels",
        ),
        (
            # The squared error of every output against the label: the
            # shapes fit, yet no output is favoured.
            {"loss": _label_regression},
            "does not score integer class labels",
        ),
        (
            {"loss": "categorical_crossentropy"},
            "cannot score integer class labels",
        ),
        ({"loss": "no_such_loss"}, r"compile\['loss'\]: unknown loss"),
        (
            {"optimizer": "no_such_optimizer"},
            r"compile\['optimizer'\]: unusable optimizer",
        ),
        ({"metrics": ["accuracy"]}, "compile takes optimizer and loss"),
    ],
)
def test_unusable_compile_settings_are_refused_at_once(
    small_stream, compile, match
):
    with pytest.raises(ValueError, match=match):
        continual.Harness(small_stream, compile=compile)


def test_a_compile_function_is_checked_before_training(small_stream):
    harness = continual.Harness(small_stream, compile=lambda: {"loss": "mse"})
    with pytest.raises(ValueError, match="score integer class labels"):
        harness.check([continual.Finetune()])
    harness = continual.Harness(small_stream, compile=lambda: ["adam"])
    with pytest.raises(ValueError, match="returned .*, not a dict"):
        harness.check([continual.Finetune()])


def test_a_model_function_must_build_a_new_model(small_stream):
    shared = _mlp(small_stream)
    harness = continual.Harness(small_stream, model=lambda: shared, epochs=1)
    harness.run(continual.Finetune())
    with pytest.raises(ValueError, match="must build a new model on each call"):
        harness.run(continual.Finetune())
    # A new model around the same layers shares their variables.
    layers = _mlp(small_stream).layers
    harness = continual.Harness(
        small_stream, model=lambda: keras.Sequential(layers)
    )
    keras.utils.set_random_seed(0)
    harness.build_model(continual.Finetune())
    with pytest.raises(ValueError, match="shares variables"):
        harness.build_model(continual.Finetune())
    # A proper function passes every call.
    harness = continual.Harness(small_stream, model=lambda: _mlp(small_stream))
    for _ in range(3):
        harness.build_model(continual.Finetune())


def test_probabilities_under_a_loss_on_logits_are_refused(small_stream):
    softmax = lambda: _mlp(small_stream, "softmax")  # noqa: E731
    with pytest.raises(ValueError, match="outputs probabilities .* logits"):
        continual.Harness(small_stream, model=softmax).build_model(
            continual.Finetune()
        )
    # A loss on probabilities is the legitimate pairing.
    harness = continual.Harness(
        small_stream,
        model=softmax,
        compile={"loss": "sparse_categorical_crossentropy"},
    )
    harness.build_model(continual.Finetune())
    # Logits pass with the default loss.
    continual.Harness(
        small_stream, model=lambda: _mlp(small_stream)
    ).build_model(continual.Finetune())


def test_frontal_lobe_information_phase_must_fit_a_task(small_stream):
    harness = continual.Harness(small_stream, epochs=1)
    with pytest.raises(
        ValueError, match="information_epochs=3 is more than the 1 epochs"
    ):
        harness.check([continual.FrontalLobeStrategy()])
    harness.check([continual.FrontalLobeStrategy(information_epochs=1)])
    with pytest.raises(ValueError, match="information_epochs"):
        continual.FrontalLobeStrategy(information_epochs=1.5)


def test_npz_with_bad_pixels_or_labels_is_refused_at_load(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 4, 4)).astype("float32")
    y = np.arange(20) % 2
    for name, arrays, match in [
        ("nan.npz", {"x": np.where(x > 0.99, np.nan, x), "y": y}, "NaN"),
        (
            "negative.npz",
            {"x": x, "y": np.where(np.arange(20) == 7, -1, y)},
            "hold -1 at index 7",
        ),
        (
            "stray.npz",
            {"x": x, "y": np.where(np.arange(20) == 3, 10**6, y)},
            "hold 1000000 at index 3",
        ),
    ]:
        path = os.path.join(tmp_path, name)
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=match):
            continual.ImageDataset.load(path)
