"""Small models of every supported kind, with random weights, and a
reference permutation written from the definition."""

import keras
import numpy as np

from keras_memgeom.layers import OrthoPolynomial
from keras_memgeom.layers import PolynomialDense
from keras_memgeom.layers import PrePrunedDense
from keras_memgeom.pruning import pre_prune

to_numpy = keras.ops.convert_to_numpy


def _mlp():
    return keras.Sequential(
        [
            keras.Input((7,)),
            keras.layers.Dense(9, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.LayerNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3),
        ]
    )


def _convnet():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(5, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(4, 1, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="relu")(x)
    outputs = keras.layers.Dense(2)(x)
    return keras.Model(inputs, outputs)


def _pruned_mlp():
    return pre_prune(_mlp(), zero_rate=0.5, seed=0)


def _polynomial():
    return keras.Sequential(
        [
            keras.Input((5,)),
            PrePrunedDense(6, zero_rate=0.4, seed=1),
            OrthoPolynomial(3, basis="legendre"),
            PolynomialDense(4, degree=2, basis="chebyshev"),
            keras.layers.Dense(2),
        ]
    )


BUILDERS = {
    "mlp": (_mlp, (7,)),
    "convnet": (_convnet, (6, 6, 3)),
    "pruned_mlp": (_pruned_mlp, (7,)),
    "polynomial": (_polynomial, (5,)),
}


def randomize(model, seed=0):
    """Random weights everywhere (masks kept), positive BN variances."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("mask"):
            continue
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(0.0, 0.5, size=shape)
        variable.assign(value.astype("float32"))
    return model


def permuted_copy(model, seed=0):
    """A copy with every hidden layer's units randomly permuted, in NumPy.

    Written from the definition, independently of the package: the units'
    kernel columns, bias and mask columns, the per-unit parameters of the
    normalization / polynomial layers after them and the next kernel's rows
    (repeated per position after a Flatten) all move together.
    """
    rng = np.random.default_rng(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    weight_layers = [layer for layer in copy.layers if hasattr(layer, "kernel")]
    permutation = None
    for layer in copy.layers:
        values = {v.path.split("/")[-1]: to_numpy(v) for v in layer.weights}
        if hasattr(layer, "kernel"):
            if permutation is not None:
                values = {
                    name: _permute_rows(value, permutation, name)
                    for name, value in values.items()
                }
            permutation = None
            if layer is not weight_layers[-1]:
                permutation = rng.permutation(values["kernel"].shape[-1])
                values = {
                    name: value[..., permutation]
                    for name, value in values.items()
                }
        elif permutation is not None and values:
            values = {
                name: value[permutation] for name, value in values.items()
            }
        for variable in layer.weights:
            variable.assign(values[variable.path.split("/")[-1]])
    return copy


def _permute_rows(value, permutation, name):
    if name == "bias":
        return value
    axis = value.ndim - 2  # kernel (..., inputs, units), mask (inputs, units)
    n = len(permutation)
    grouped = value.reshape(
        value.shape[:axis] + (-1, n) + value.shape[axis + 1 :]
    )
    return grouped[(slice(None),) * (axis + 1) + (permutation,)].reshape(
        value.shape
    )
