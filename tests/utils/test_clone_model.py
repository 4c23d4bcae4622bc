import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom.src.utils.clone_model import clone_model


def _sequential():
    return keras_memgeom.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(3)]
    )


def _functional():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(5)(inputs))
    return keras_memgeom.Model(inputs, outputs)


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_a_compiled_package_model_clones_with_its_class_and_settings(build):
    model = build()
    model.compile("sgd", "mse", strength=10.0, num_train_examples=32)
    clone = clone_model(model)
    assert type(clone) is type(model)
    assert clone.compiled and model.compiled
    assert clone.memory_strength == 10.0
    assert clone.num_train_examples == 32
    # New weights of the same shapes, as keras.models.clone_model gives.
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    assert clone.weights[0] is not model.weights[0]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(
        clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    clone.fit(x, x[:, :3], epochs=1, verbose=0)


def test_an_uncompiled_model_and_a_clone_function_are_honoured():
    model = _sequential()
    names = []

    def clone(layer):
        names.append(layer.name)
        return layer.__class__.from_config(layer.get_config())

    cloned = clone_model(model, clone_function=clone)
    assert type(cloned) is type(model) and not cloned.compiled
    assert names == [layer.name for layer in model.layers]


def test_plain_keras_models_clone_as_keras_does():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("sgd", "mse")
    clone = clone_model(model)
    assert type(clone) is keras.Sequential and clone.compiled


def test_package_entry_points_take_compiled_package_sequentials():
    models = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = keras_memgeom.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(6, activation="relu"),
                keras.layers.Dense(3),
            ]
        )
        model.compile("sgd", "mse", strength=5.0)
        models.append(model)
    merged = keras_memgeom.merge_models(models, method="average", align=False)
    assert type(merged) is keras_memgeom.Sequential
    aligned = keras_memgeom.symmetry.align(models[0], models[1])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    np.testing.assert_allclose(
        aligned.predict(x, verbose=0),
        models[0].predict(x, verbose=0),
        atol=1e-5,
    )
    pruned = keras_memgeom.pre_prune(models[0], zero_rate=0.5)
    assert pruned.compiled and pruned.memory_strength == 5.0
