"""Fisher-weighted merging of trained models, after aligning their units."""

import keras
import numpy as np

from keras_memgeom.memory.fisher_memory import FisherMemory
from keras_memgeom.memory.likelihood import likelihood_from_loss
from keras_memgeom.memory.merge import merge
from keras_memgeom.symmetry.align import align as align_units


def merge_models(
    models,
    *,
    data=None,
    align=True,
    estimator="exact",
    prior_precision=1e-8,
):
    """Combines trained models of one architecture into one model.

    Each model is first permuted to match the first one (`align=True`, weight
    matching; models trained from different seeds hold their hidden units in
    different orders). Without `data` the weights are averaged. With `data`
    (one data set per model, e.g. the one it was trained on) each model's
    Fisher is estimated there and the weights are combined as memories are:
    `theta = (sum_k P_k)^-1 sum_k P_k theta_k` with `P_k = n_k F_k + alpha`,
    the closed-form minimizer of the sum of the models' quadratic
    log-posteriors; the prior precision `alpha` makes parameters no model
    has information about fall back to the plain average. Non-trainable
    weights (normalization statistics) are averaged.

    Args:
        models: a list of at least two built Keras models of one
            architecture; with `data`, compiled with a log-likelihood loss.
        data: `None`, or a list with one `(x, y)` data set (anything
            `FisherMemory.estimate` takes) per model.
        align: whether to align the hidden units first (chains of Dense /
            Conv2D layers, see `keras_memgeom.symmetry.align`).
        estimator: the Fisher estimator used with `data`.
        prior_precision: `alpha > 0`.

    Returns:
        A new Keras model (uncompiled) with the merged weights.

    Raises:
        ValueError: if fewer than two models are given, `data` does not have
            one entry per model, or the architectures differ (the layer is
            named).

    Example:
    >>> merged = merge_models([model_a, model_b], data=[(x_a, y_a), (x_b, y_b)])
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"`merge_models` needs at least two models; got {len(models)}.")
    if data is not None and len(data) != len(models):
        raise ValueError(f"`data` needs one data set per model: {len(models)} models, {len(data)} data sets.")
    if prior_precision <= 0:
        raise ValueError(f"`prior_precision` must be positive; got {prior_precision}.")
    reference = models[0]
    _check_same_shapes(models)
    # Aligned copies are uncompiled: the likelihood comes from the originals.
    likelihoods = [likelihood_from_loss(getattr(m, "loss", None)) for m in models] if data else None
    if align:
        models = [reference] + [align_units(m, reference) for m in models[1:]]
    merged = keras.models.clone_model(reference)
    weights = [np.mean([np.asarray(w) for w in ws], axis=0) for ws in zip(*(m.get_weights() for m in models))]
    merged.set_weights(weights)
    if data is not None:
        paths = [v.path for v in merged.trainable_variables]
        memories = []
        for m, d, likelihood in zip(models, data, likelihoods):
            memory = FisherMemory.estimate(m, d, estimator=estimator, likelihood=likelihood)
            fisher = memory.fisher
            # Relabel by order (auto-numbered paths differ between models).
            memories.append(
                FisherMemory(
                    dict(zip(paths, memory.anchor.values())),
                    {p: f + prior_precision / memory.num_examples for p, f in zip(paths, fisher.values())},
                    memory.num_examples,
                )
            )
        anchor = merge(memories).anchor
        for variable in merged.trainable_variables:
            variable.assign(anchor[variable.path])
    return merged


def _check_same_shapes(models):
    shapes = [tuple(v.shape) for v in models[0].weights]
    for model in models[1:]:
        other = [tuple(v.shape) for v in model.weights]
        if other != shapes:
            raise ValueError(
                f"Model {model.name!r} does not share the architecture of "
                f"{models[0].name!r}: weight shapes {other} vs {shapes}."
            )
