import keras
import numpy as np
import pytest

from keras_memgeom.symmetry import distance
from keras_memgeom.symmetry import reorder
from tests.symmetry.symmetry_models import permuted_copy
from tests.symmetry.symmetry_models import to_numpy

pytestmark = pytest.mark.usefixtures("full_precision")

METHODS = ["lexicographic", "maximin"]


def test_function_unchanged(model_and_inputs):
    model, x = model_and_inputs
    expected = to_numpy(model(x, training=False))
    for method in METHODS:
        reordered = reorder(model, method)
        assert distance(reordered, model).overall > 0.01  # units did move
        np.testing.assert_allclose(
            to_numpy(reordered(x, training=False)),
            expected,
            atol=1e-5,
            rtol=1e-5,
        )


def test_permuted_copy_reorders_to_same_weights(model_and_inputs):
    model, x = model_and_inputs
    permuted = permuted_copy(model, seed=3)
    # The copy is a different parameterization of the same function.
    np.testing.assert_allclose(
        to_numpy(permuted(x, training=False)),
        to_numpy(model(x, training=False)),
        atol=1e-5,
        rtol=1e-5,
    )
    assert distance(permuted, model).overall > 0.1
    for method in METHODS:
        canonical = reorder(model, method)
        assert distance(reorder(permuted, method), canonical).overall < 1e-6


def test_lexicographic_sorts_incoming_weights():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6), keras.layers.Dense(2)]
    )
    kernel = to_numpy(reorder(model).layers[0].kernel)
    # Units ordered by their first incoming weight (distinct for random init).
    assert np.all(np.diff(kernel[0]) > 0)


def test_maximin_sorts_by_widest_input():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6), keras.layers.Dense(2)]
    )
    kernel = to_numpy(model.layers[0].kernel).copy()
    kernel[2] *= 10.0  # input 2 has the widest spread across units
    model.layers[0].kernel.assign(kernel)
    reordered = to_numpy(reorder(model, "maximin").layers[0].kernel)
    assert np.all(np.diff(reordered[2]) > 0)


def test_masks_sorted_and_still_distinct(model_and_inputs):
    model, _ = model_and_inputs
    for layer in reorder(model).layers:
        if getattr(layer, "mask", None) is not None:
            columns = [tuple(c) for c in to_numpy(layer.mask).T]
            assert columns == sorted(columns)
            assert len(set(columns)) == len(columns)


def test_unknown_method():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="sorted"):
        reorder(model, "sorted")
