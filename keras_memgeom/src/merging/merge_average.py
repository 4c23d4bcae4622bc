"""Merge by the weighted average of the models' weights."""

import numpy as np

from keras_memgeom.src.utils.clone_model import clone_model


def merge_average(models, weights):
    """A new model whose weights are the weighted average of `models`'.

    Args:
        models: aligned Keras models of one architecture.
        weights: one weight per model, non-negative, summing to 1.

    Returns:
        A new Keras model (uncompiled), `theta = sum_k w_k theta_k`.
    """
    merged = clone_model(models[0])
    merged.set_weights(
        [
            sum(
                w * np.asarray(v, "float64") for w, v in zip(weights, values)
            ).astype(values[0].dtype)
            for values in zip(*(m.get_weights() for m in models))
        ]
    )
    return merged
