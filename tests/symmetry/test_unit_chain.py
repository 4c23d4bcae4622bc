import math

import keras
import numpy as np
import pytest

from keras_memgeom.symmetry import count_equivalent_optima
from keras_memgeom.symmetry import reorder
from tests.symmetry.symmetry_models import randomize


def test_unsupported_layer_is_named():
    model = keras.Sequential(
        [
            keras.Input((6, 2)),
            keras.layers.Conv1D(3, 2),
            keras.layers.Permute((2, 1), name="temporal"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="'temporal' \\(Permute\\)"):
        reorder(model)


def test_non_chain_is_named():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    merged = keras.layers.Add(name="skip")([inputs, hidden])
    model = keras.Model(inputs, keras.layers.Dense(1)(merged))
    with pytest.raises(ValueError, match="'skip'"):
        count_equivalent_optima(model)


def test_normalization_across_other_axes_is_named():
    model = keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(3, 3),
            keras.layers.LayerNormalization(
                axis=[1, 2, 3], name="spatial_norm"
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="'spatial_norm'.*last axis"):
        reorder(model)


def test_model_without_weight_layers():
    model = keras.Sequential([keras.Input((3,)), keras.layers.ReLU()])
    with pytest.raises(ValueError, match="no Dense"):
        count_equivalent_optima(model)


def _two_heads():
    """One hidden layer read by two output heads, through different paths."""
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="relu", name="shared")(inputs)
    left = keras.layers.Dense(3, name="left")(hidden)
    right = keras.layers.BatchNormalization()(hidden)
    right = keras.layers.Dense(2, name="right")(right)
    return keras.Model(inputs, [left, right])


def test_units_read_by_two_heads_move_with_both():
    model = randomize(_two_heads())
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    # Only the shared layer is hidden: 6! equivalent parameterizations.
    assert count_equivalent_optima(model) == pytest.approx(
        np.log10(math.factorial(6))
    )
    reordered = reorder(model)
    for before, after in zip(model(x), reordered(x)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(after),
            keras.ops.convert_to_numpy(before),
            rtol=1e-4,
            atol=1e-5,
        )
    shared = keras.ops.convert_to_numpy(model.get_layer("shared").kernel)
    moved = keras.ops.convert_to_numpy(reordered.get_layer("shared").kernel)
    assert sorted(map(tuple, shared.T)) == sorted(map(tuple, moved.T))
