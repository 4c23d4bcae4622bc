"""REPAIR: restore the merged model's hidden-unit statistics."""

import keras
import numpy as np

from keras_memgeom.src.merging.layer_inputs import layer_inputs
from keras_memgeom.src.symmetry.unit_chain import copy_model
from keras_memgeom.src.symmetry.unit_chain import hidden_indices
from keras_memgeom.src.symmetry.unit_chain import unit_chain

# A unit whose pre-activation barely varies in the merged model is only
# shifted: scaling it up would blow up its weights off the data.
_MIN_STD = 1e-6


def repair(merged, models, data, *, weights=None, batch_size=256):
    """Folds an affine correction of every hidden unit into the merged weights.

    REPAIR (Jordan et al. 2023, "REPAIR: REnormalizing Permuted Activations
    for Interpolation Repair"): averaging two networks shrinks the variance
    of their hidden units (averaged units are less than perfectly
    correlated), which is much of why the merged model is worse. Each
    hidden unit's pre-activation `z` (a Conv2D channel's, over all
    positions) gets the mean and standard deviation
    that interpolate the endpoints',

        mu* = sum_k w_k mu_k,   sigma* = sum_k w_k sigma_k,

    with `mu_k, sigma_k` measured in model `k` on its data set and `mu,
    sigma` in the merged model on all the data sets together:
    `z <- (z - mu) sigma* / sigma + mu*`, folded into the layer's kernel
    columns and bias. Layers are corrected input to output, each measured
    after the ones before it were corrected, so the result is a plain model
    whose every hidden unit has the target statistics on the data.

    Args:
        merged: the merged model, whose hidden units match the models'
            (align the models first).
        models: the endpoints, of the same architecture.
        data: a list with one data set per model (`(x, y)` arrays or
            anything `layer_inputs` takes).
        weights: a weight per model, non-negative, summing to 1 (`None`:
            equal).
        batch_size: batch size for arrays.

    Returns:
        A new Keras model (uncompiled).

    Raises:
        ValueError: naming the layer, for a hidden layer that is not a
            Dense or Conv2D layer with a bias, or for models
            `keras_memgeom.symmetry` does not support; naming the data set,
            for one that is empty or whose inputs hold NaN or infinite
            values.

    Example:

    ```python
    import keras_memgeom

    # model_a, model_b: two trained models of one architecture and (x, y)
    # their data, as built in the how-to guide "Merging two models".
    aligned_b = keras_memgeom.symmetry.align(model_b, model_a)
    merged = keras_memgeom.merge_models([model_a, aligned_b], align=False)
    repaired = keras_memgeom.merging.repair(
        merged, [model_a, aligned_b], [(x, y), (x, y)]
    )
    ```
    """
    weights = (
        np.full(len(models), 1.0 / len(models))
        if weights is None
        else np.asarray(weights, "float64")
    )
    chain = unit_chain(merged)
    hidden = hidden_indices(chain)
    for index in hidden:
        unit_layer = chain[index]
        layer = unit_layer.layer
        if (
            not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
            or unit_layer.bias is None
        ):
            raise ValueError(
                "REPAIR corrects Dense and Conv2D layers with a bias; layer "
                f"{layer.name!r} ({type(layer).__name__}) is not one."
            )
    target_mean, target_std = 0.0, 0.0
    for k, (w, model, d) in enumerate(zip(weights, models, data)):
        mean, std = _unit_statistics(model, [d], batch_size, hidden, first=k)
        target_mean = target_mean + w * mean
        target_std = target_std + w * std
    result = copy_model(merged)
    for position, index in enumerate(hidden):
        # Measured after the layers before it were corrected.
        mean, std = _unit_statistics(
            result, data, batch_size, hidden[: position + 1]
        )
        unit_layer = unit_chain(result)[index]
        scale = np.where(
            std[position] > _MIN_STD,
            target_std[position] / np.maximum(std[position], _MIN_STD),
            1.0,
        )
        layer = unit_layer.layer
        layer.kernel.assign(
            (unit_layer.kernel * scale).astype(unit_layer.kernel.dtype)
        )
        bias = (unit_layer.bias - mean[position]) * scale + target_mean[
            position
        ]
        layer.bias.assign(bias.astype(unit_layer.bias.dtype))
    return result


def _unit_statistics(model, data, batch_size, indices, first=0):
    """Per `unit_chain` layer of `indices`, each unit's pre-activation stats.

    `data` is a list of data sets, `data[first + k]` in errors.

    Returns:
        `(means, stds)`: object arrays with one `(units,)` array per index.
    """
    chain = unit_chain(model)
    count, total, square = ([0.0] * len(indices) for _ in range(3))
    for k, d in enumerate(data, start=first):
        for rows in layer_inputs(
            model, d, batch_size=batch_size, name=f"data[{k}]"
        ):
            for i, index in enumerate(indices):
                unit_layer = chain[index]
                z = (
                    rows[index]
                    @ unit_layer.effective_kernel().reshape(
                        -1, unit_layer.units
                    )
                    + unit_layer.bias
                )
                count[i] += len(z)
                total[i] = total[i] + z.sum(axis=0)
                square[i] = square[i] + (z * z).sum(axis=0)
    means = [t / n for t, n in zip(total, count)]
    stds = [
        np.sqrt(np.maximum(s / n - m * m, 0.0))
        for s, n, m in zip(square, count, means)
    ]
    return _ragged(means), _ragged(stds)


def _ragged(arrays):
    result = np.empty(len(arrays), dtype=object)
    result[:] = arrays
    return result
