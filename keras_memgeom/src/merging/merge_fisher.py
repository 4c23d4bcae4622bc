"""Merge by the diagonal-Fisher-weighted average of the models' weights."""

import numpy as np
from keras import ops

from keras_memgeom.src.merging.merge_average import merge_average


def merge_fisher(models, fishers, weights, prior_precision):
    """The minimizer of the models' summed diagonal quadratic log-posteriors.

    `theta = (sum_k P_k)^-1 sum_k P_k theta_k` with
    `P_k = w_k (n_k F_k + alpha)` on the trainable variables; the other
    variables are averaged.

    Args:
        models: aligned Keras models of one architecture.
        fishers: per model, the diagonal precision `n_k F_k` of each
            trainable variable, in order.
        weights: one weight per model, non-negative, summing to 1.
        prior_precision: `alpha > 0`.

    Returns:
        A new Keras model (uncompiled).
    """
    merged = merge_average(models, weights)
    for index, variable in enumerate(merged.trainable_variables):
        precision, moment = 0.0, 0.0
        for w, model, fisher in zip(weights, models, fishers):
            p = w * (np.asarray(fisher[index], "float64") + prior_precision)
            precision = precision + p
            moment = moment + p * ops.convert_to_numpy(
                model.trainable_variables[index]
            )
        variable.assign((moment / precision).astype(variable.dtype))
    return merged
