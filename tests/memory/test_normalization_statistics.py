"""Training with a memory keeps BatchNormalization's moving statistics."""

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.normalization_statistics import statistics_frozen

pytestmark = pytest.mark.usefixtures("full_precision")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model(cls=keras_memgeom.Model):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, name="hidden")(inputs)
    normalized = keras.layers.BatchNormalization(name="bn")(hidden)
    outputs = keras.layers.Dense(3)(keras.layers.ReLU()(normalized))
    return cls(inputs, outputs)


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable).copy()


def _trained(rng, make=_model):
    """A model trained a little, its memory, and a shifted task."""
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, 64)
    model = make()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model, FisherMemory.estimate(model, (x, y)), x + 2.0, y


def _remembering(rng, **compile_kwargs):
    """A model compiled with a memory of itself, and a shifted task."""
    model, memory, x, y = _trained(rng)
    model.compile(
        keras.optimizers.SGD(0.1),
        LOSS,
        memories=[memory],
        strength=1.0,
        **compile_kwargs,
    )
    return model, memory, x, y


def test_by_default_statistics_are_frozen_and_gamma_beta_train(rng):
    model, _, x, y = _remembering(rng)
    bn = model.get_layer("bn")
    assert model.normalization_statistics == "freeze"
    assert statistics_frozen(bn)
    moving = [_numpy(bn.moving_mean), _numpy(bn.moving_variance)]
    scale = [_numpy(bn.gamma), _numpy(bn.beta)]
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    traced = model.train_function
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert model.train_function is traced  # frozen once, not per step
    np.testing.assert_array_equal(_numpy(bn.moving_mean), moving[0])
    np.testing.assert_array_equal(_numpy(bn.moving_variance), moving[1])
    assert not np.allclose(_numpy(bn.gamma), scale[0])
    assert not np.allclose(_numpy(bn.beta), scale[1])
    # Training-mode normalization is the inference-mode formula.
    h = keras.ops.convert_to_numpy(model.get_layer("hidden")(x[:16]))
    expected = _numpy(bn.gamma) * (h - moving[0]) / np.sqrt(
        moving[1] + bn.epsilon
    ) + _numpy(bn.beta)
    got = keras.ops.convert_to_numpy(bn(h, training=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_update_follows_keras_moving_average(rng):
    model, _, x, y = _remembering(
        rng, normalization_statistics="update", num_train_examples=16
    )
    bn = model.get_layer("bn")
    assert not statistics_frozen(bn)
    mean, variance = _numpy(bn.moving_mean), _numpy(bn.moving_variance)
    h = keras.ops.convert_to_numpy(model.get_layer("hidden")(x[:16]))
    model.train_on_batch(x[:16], y[:16])
    m = bn.momentum
    np.testing.assert_allclose(
        _numpy(bn.moving_mean), m * mean + (1 - m) * h.mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        _numpy(bn.moving_variance),
        m * variance + (1 - m) * h.var(0),
        rtol=1e-4,
    )


def test_attach_on_a_plain_model_freezes_until_detached(rng):
    model, memory, x, y = _trained(rng, make=lambda: _model(keras.Model))
    bn = model.get_layer("bn")
    keras_memgeom.attach(model, memory, num_train_examples=len(x))
    assert statistics_frozen(bn)
    moving = _numpy(bn.moving_mean)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_array_equal(_numpy(bn.moving_mean), moving)
    keras_memgeom.detach(model)
    assert not statistics_frozen(bn)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.allclose(_numpy(bn.moving_mean), moving)
    keras_memgeom.attach(
        model,
        memory,
        num_train_examples=len(x),
        normalization_statistics="update",
    )
    assert not statistics_frozen(bn)


def test_without_memories_the_layers_are_left_alone(rng):
    model, _, _, _ = _remembering(rng)
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    assert not statistics_frozen(model.get_layer("bn"))


@pytest.mark.parametrize("value", ["frozen", None, True])
def test_a_bad_policy_is_refused(rng, value):
    model, memory, x, _ = _remembering(rng)
    with pytest.raises(ValueError, match="normalization_statistics"):
        model.compile("adam", LOSS, normalization_statistics=value)
    with pytest.raises(ValueError, match="normalization_statistics"):
        keras_memgeom.attach(
            _model(keras.Model),
            memory,
            num_train_examples=len(x),
            normalization_statistics=value,
        )


@pytest.mark.parametrize("policy", ["freeze", "update"])
def test_the_policy_survives_save_and_load(tmp_path, rng, policy):
    model, _, x, y = _remembering(rng, normalization_statistics=policy)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert model.get_compile_config()["normalization_statistics"] == policy
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    bn = loaded.get_layer("bn")
    assert loaded.normalization_statistics == policy
    assert statistics_frozen(bn) == (policy == "freeze")
    moving = _numpy(bn.moving_mean)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    kept = np.array_equal(_numpy(bn.moving_mean), moving)
    assert kept == (policy == "freeze")


def test_task_a_is_kept_on_a_batchnorm_model(rng):
    # Task B's inputs are shifted and scaled: updated statistics would
    # normalize task A's inputs with B's mean and variance.
    w_a, w_b = rng.normal(size=(2, 5, 3))
    x_a = rng.normal(size=(256, 5)).astype("float32")
    x_b = (6.0 + 4.0 * rng.normal(size=(256, 5))).astype("float32")
    y_a, y_b = np.argmax(x_a @ w_a, 1), np.argmax((x_b - 6.0) @ w_b, 1)

    def accuracy(model, x, y):
        logits = model.predict(x, batch_size=256, verbose=0)
        return float(np.mean(np.argmax(logits, 1) == y))

    model = _model()
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    model.fit(x_a, y_a, epochs=10, batch_size=32, verbose=0)
    after_a = accuracy(model, x_a, y_a)
    memory = FisherMemory.estimate(model, (x_a, y_a))
    weights = model.get_weights()
    kept = {}
    for policy in ("freeze", "update"):
        model.set_weights(weights)
        model.compile(
            keras.optimizers.Adam(1e-2),
            LOSS,
            memories=[memory],
            strength=1e4,
            normalization_statistics=policy,
        )
        model.fit(x_b, y_b, epochs=5, batch_size=32, verbose=0)
        kept[policy] = accuracy(model, x_a, y_a)
    assert after_a > 0.8
    assert kept["freeze"] >= after_a - 0.02
    assert kept["update"] < after_a - 0.1  # what the freeze prevents
