import keras
import pytest

from keras_memgeom.symmetry import count_equivalent_optima
from keras_memgeom.symmetry import reorder


def test_unsupported_layer_is_named():
    model = keras.Sequential(
        [
            keras.Input((6, 2)),
            keras.layers.Conv1D(3, 2, name="temporal"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="'temporal' \\(Conv1D\\)"):
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
