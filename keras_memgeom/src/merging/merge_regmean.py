"""Merge by RegMean: each layer fit to every model's outputs on its inputs."""

import keras
import numpy as np

from keras_memgeom.src.merging.layer_inputs import layer_inputs
from keras_memgeom.src.merging.merge_average import merge_average
from keras_memgeom.src.merging.regmean import regmean
from keras_memgeom.src.symmetry.unit_chain import unit_chain


def merge_regmean(models, data, weights, alpha):
    """Each weight layer the least-squares fit to every model's outputs.

    `W = (sum_k w_k G_k)^-1 sum_k w_k G_k W_k` per Dense and Conv2D layer
    (kernel and bias), `G_k` the Gram matrix of the layer's inputs in model
    `k` on its data, off-diagonal entries scaled by `alpha` (see
    `keras_memgeom.merging.regmean`); other variables are averaged.

    Args:
        models: aligned Keras models of one architecture.
        data: one data set per model.
        weights: one weight per model, non-negative, summing to 1.
        alpha: in `[0, 1]`.

    Returns:
        A new Keras model (uncompiled).

    Raises:
        ValueError: naming the layer, for a weight layer that is not an
            unmasked Dense or Conv2D layer; naming the data set, for bad
            data (see `layer_inputs`).
    """
    _check_regmean_layers(models[0])
    merged = merge_average(models, weights)
    grams = [
        _input_grams(m, d, f"data[{k}]")
        for k, (m, d) in enumerate(zip(models, data))
    ]
    chains = [unit_chain(m) for m in models]
    for index, unit_layer in enumerate(unit_chain(merged)):
        kernels = [_with_bias(chain[index]) for chain in chains]
        kernel = regmean(
            kernels, [g[index] for g in grams], weights=weights, alpha=alpha
        )
        layer, shape = unit_layer.layer, unit_layer.kernel.shape
        dtype = unit_layer.kernel.dtype
        if unit_layer.bias is not None:
            layer.bias.assign(kernel[-1].astype(dtype))
            kernel = kernel[:-1]
        layer.kernel.assign(kernel.reshape(shape).astype(dtype))
    return merged


def _with_bias(unit_layer):
    """The kernel as a `(rows, units)` matrix, with the bias as a last row."""
    kernel = unit_layer.kernel.reshape(-1, unit_layer.units)
    if unit_layer.bias is None:
        return kernel
    return np.concatenate([kernel, unit_layer.bias[None]], axis=0)


def _input_grams(model, data, name):
    """Per weight layer, the Gram matrix of its inputs (a 1 for the bias)."""
    chain = unit_chain(model)
    grams = [0.0] * len(chain)
    for rows in layer_inputs(model, data, name=name):
        for i, (x, unit_layer) in enumerate(zip(rows, chain)):
            if unit_layer.bias is not None:
                x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
            grams[i] = grams[i] + x.T @ x
    return grams


def _check_regmean_layers(model):
    """Refuses, by name, a weight layer RegMean cannot merge in closed form."""
    for unit_layer in unit_chain(model):
        layer = unit_layer.layer
        if (
            not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
            or unit_layer.mask is not None
        ):
            raise ValueError(
                "method='regmean' merges unmasked Dense and Conv2D layers in "
                f"closed form; layer {layer.name!r} ({type(layer).__name__}) "
                "cannot be merged this way. Use 'average' or 'fisher'."
            )
