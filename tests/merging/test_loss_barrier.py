import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_memgeom.merging import interpolate
from keras_memgeom.merging import loss_barrier
from keras_memgeom.symmetry import align
from tests.memory.helpers import classification_data
from tests.memory.helpers import softmax_regression

pytestmark = pytest.mark.usefixtures("full_precision")


def test_interpolation_is_linear_in_the_weights(rng):
    a, b = softmax_regression(), softmax_regression()
    middle = interpolate(a, b, 0.25)
    for got, wa, wb in zip(
        middle.get_weights(), a.get_weights(), b.get_weights()
    ):
        np.testing.assert_allclose(got, 0.75 * wa + 0.25 * wb, rtol=1e-6)


def test_no_barrier_between_a_model_and_itself_or_on_a_convex_loss(rng):
    data = classification_data(rng, num_examples=60)
    a, b = softmax_regression(), softmax_regression()
    same = loss_barrier(a, a, data, num_points=3)
    np.testing.assert_allclose(same.loss, same.loss[0], rtol=1e-6)
    assert abs(same.barrier) < 1e-6
    # Softmax regression's loss is convex in its weights: never above the line.
    assert loss_barrier(a, b, data, num_points=5).barrier <= 1e-6


def test_loss_barrier_refuses_bad_arguments(rng):
    data = classification_data(rng, num_examples=10)
    uncompiled = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="needs a loss"):
        loss_barrier(uncompiled, uncompiled, data)
    with pytest.raises(ValueError, match="num_points"):
        loss_barrier(
            softmax_regression(), softmax_regression(), data, num_points=1
        )


def test_alignment_lowers_the_barrier_between_independent_trainings():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    models = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(x, y, epochs=8, batch_size=64, verbose=0)
        models.append(model)
    raw = loss_barrier(models[0], models[1], (x, y), num_points=5)
    aligned = loss_barrier(
        models[0], align(models[1], models[0]), (x, y), num_points=5
    )
    assert aligned.barrier < 0.5 * raw.barrier, (raw.barrier, aligned.barrier)
    assert aligned.accuracy[2] > raw.accuracy[2]
