"""Trained models combined in closed form, after aligning their units."""

import os

import keras
import numpy as np

from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from keras_memgeom.src.merging.memory_curvature import check_memory_order
from keras_memgeom.src.merging.memory_curvature import memory_curvature
from keras_memgeom.src.merging.memory_curvature import permuted_curvature
from keras_memgeom.src.merging.merge_average import merge_average
from keras_memgeom.src.merging.merge_fisher import merge_fisher
from keras_memgeom.src.merging.merge_kfac import merge_kfac
from keras_memgeom.src.merging.merge_regmean import merge_regmean
from keras_memgeom.src.merging.repair import repair as repair_units
from keras_memgeom.src.symmetry.align import permuted_copy
from keras_memgeom.src.symmetry.align import unit_permutations
from keras_memgeom.src.utils.checks import check_finite_data
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.checks import check_positive

METHODS = ("average", "fisher", "regmean", "kfac")
MEMORY_METHODS = ("fisher", "kfac")


def merge_models(
    models,
    *,
    method=None,
    data=None,
    memories=None,
    align=True,
    repair=False,
    weights=None,
    estimator="exact",
    prior_precision=1e-8,
    regmean_alpha=0.9,
):
    """Combines trained models of one architecture into one model.

    Each model is first permuted to match the first one (`align=True`,
    weight matching, `keras_memgeom.symmetry.align`; models trained from
    different seeds hold their hidden units in different orders). Models
    fine-tuned from one parent share their units already: merge them with
    `align=False`, and the result does not depend on their order. Then,
    with weights `w_k` (normalized to sum to 1):

    - `"average"`: `theta = sum_k w_k theta_k`.
    - `"fisher"`: each model's diagonal Fisher memory weighs its
      parameters, `theta = (sum_k P_k)^-1 sum_k P_k theta_k` with
      `P_k = w_k (n_k F_k + alpha)`: the minimizer of the sum of the
      models' quadratic log-posteriors (the prior precision `alpha` makes
      parameters no model knows about fall back to the average). The
      memories are given (`memories=`, one `FisherMemory` of each model)
      or estimated on `data`.
    - `"regmean"` (Jin et al. 2023, "Dataless Knowledge Fusion by Merging
      Weights of Language Models"): each Dense and Conv2D layer's kernel
      and bias are the least-squares fit to every model's outputs on its
      own inputs, `W = (sum_k w_k G_k)^-1 sum_k w_k G_k W_k` with `G_k`
      the Gram matrix of the layer's input rows (a Conv2D layer's input
      patches; a 1 for the bias) in model `k` on its data, off-diagonal
      entries scaled by `regmean_alpha` (see `keras_memgeom.merging.regmean`).
      Other variables are averaged.
    - `"kfac"`: as `"fisher"`, with Kronecker-factored memories
      (`FisherMemory.estimate(..., structure="kfac")`): each Dense and
      Conv2D layer's kernel and bias `W` (a `(fan_in + 1, units)` matrix)
      minimize `sum_k w_k n_k vec(W - W_k)^T (A_k (x) G_k) vec(W - W_k)`,
      the K-FAC analogue of RegMean with `G_k != I`. For two models this is
      `keras_memgeom.memory.kronecker.merge_anchor`, solved exactly in the
      basis that diagonalizes both pairs of factors; for more models, and
      for pre-pruned (masked) layers, conjugate gradients on the Kronecker
      sum solve it to a relative residual of `1e-10`. Either way the result
      does not depend on the models' order, and directions no model
      constrains (a softmax's `G` is singular) keep the weighted average.
      Other variables are merged as by `"fisher"`.

    `repair=True` then restores each hidden unit's pre-activation mean and
    standard deviation to the endpoints' interpolated ones on `data`
    (Jordan et al. 2023, "REPAIR"; see `keras_memgeom.merging.repair`),
    folded into the merged Dense and Conv2D weights.

    Args:
        models: a list of at least two built Keras models of one
            architecture (the same layer classes, weight shapes and
            settings such as the activation, in order); for `"fisher"`
            with `data`, compiled with a log-likelihood loss.
        method: `"average"`, `"fisher"`, `"regmean"` or `"kfac"`; `None`
            means `"fisher"` when `data` or `memories` is given, else
            `"average"` (as before `method` existed).
        data: `None`, or a list with one `(x, y)` data set (anything
            `FisherMemory.estimate` takes) per model, e.g. the one it was
            trained on. Needed by `"regmean"` and `repair`, and by
            `"fisher"` and `"kfac"` without `memories`.
        memories: `None`, or a list with one `FisherMemory` of each model,
            in the order of `models` (each anchored at its model's
            weights), for `"fisher"`, or with Kronecker blocks on the same
            layers (`structure="kfac"`) for `"kfac"`.
        align: whether to align the hidden units to the first model's
            (the hidden units `keras_memgeom.symmetry.hidden_units` finds).
        repair: whether to correct the hidden units' statistics (REPAIR).
        weights: `None` (equal), or a non-negative finite weight per model,
            not all zero (scaled by the largest before normalizing, so huge
            weights do not overflow).
        estimator: the Fisher estimator used with `data`.
        prior_precision: `alpha > 0` for `"fisher"`, and for the variables
            no Kronecker block covers in `"kfac"`.
        regmean_alpha: in `[0, 1]`, the scale of the off-diagonal Gram
            entries for `"regmean"`.

    Returns:
        A new Keras model (uncompiled) with the merged weights.

    Raises:
        ValueError: for a single model or fewer than two, an entry that is
            not a Keras model (a path: the index and type are named), an
            unknown method, lists without one entry per model, bad
            weights, `"fisher"` or `"kfac"` with neither `data` nor
            `memories`, `"kfac"` memories without Kronecker blocks or with
            them on different layers, a memory not anchored at its model's
            weights (memories in another order: the index is named),
            `"regmean"` or `repair` without `data`, data that is empty or
            holds NaN or infinite values (`data[k]` is named), or, naming
            the layer, different architectures (the differing setting,
            such as both activations) or a layer the method cannot merge.

    Example:

    ```python
    import keras_memgeom

    # model_a, model_b: two trained models of one architecture and (x, y)
    # their data, as built in the how-to guide "Merging two models".
    merged = keras_memgeom.merge_models(
        [model_a, model_b], method="regmean", data=[(x, y), (x, y)], repair=True
    )
    print(merged.count_params() == model_a.count_params())  # True
    ```
    """
    models = _model_list(models)
    if method is None:
        method = (
            "fisher" if data is not None or memories is not None else "average"
        )
    if method not in METHODS:
        raise ValueError(
            f"Unknown merge method {method!r}; expected one of {METHODS}."
        )
    if isinstance(data, tuple) and any(hasattr(d, "shape") for d in data):
        raise ValueError(
            "`data` must be a list with one data set per model; got one `(x, "
            "y)` tuple. For models trained on the same data, pass `[(x, y)] * "
            "len(models)`."
        )
    for name, values in (("data", data), ("memories", memories)):
        if values is not None and len(values) != len(models):
            raise ValueError(
                f"`{name}` needs one entry per model: {len(models)} models, "
                f"{len(values)} entries."
            )
    if method in MEMORY_METHODS and data is None and memories is None:
        raise ValueError(
            f"method={method!r} needs `memories` (one FisherMemory per model) "
            "or `data` to estimate them on."
        )
    for needs, flag in (
        (method == "regmean", "method='regmean'"),
        (repair, "repair=True"),
    ):
        if needs and data is None:
            raise ValueError(f"{flag} needs `data`: one data set per model.")
    if data is not None:
        for k, d in enumerate(data):
            check_finite_data(f"data[{k}]", d)
    weights = _normalized_weights(weights, len(models))
    prior_precision = check_positive("prior_precision", prior_precision)
    regmean_alpha = check_number(
        "regmean_alpha", regmean_alpha, minimum=0.0, maximum=1.0
    )
    _check_same_layers(models)
    # Aligned copies are uncompiled: the likelihood comes from the originals.
    structure = "kfac" if method == "kfac" else "diagonal"
    likelihoods = None
    if method in MEMORY_METHODS and memories is None:
        likelihoods = [
            likelihood_from_loss(getattr(m, "loss", None)) for m in models
        ]
    curvatures = None
    if method in MEMORY_METHODS and memories is not None:
        check_memory_order(models, memories)
        curvatures = [
            memory_curvature(m, memory, structure)
            for m, memory in zip(models, memories)
        ]
    if align:
        reference = models[0]
        permutations = [unit_permutations(m, reference) for m in models[1:]]
        if curvatures is not None:
            curvatures = [curvatures[0]] + [
                permuted_curvature(model, p, *c)
                for model, p, c in zip(models[1:], permutations, curvatures[1:])
            ]
        models = [reference] + [
            permuted_copy(m, p) for m, p in zip(models[1:], permutations)
        ]
    if method in MEMORY_METHODS and curvatures is None:
        curvatures = [
            memory_curvature(
                m,
                FisherMemory.estimate(
                    m,
                    d,
                    estimator=estimator,
                    likelihood=likelihood,
                    structure=structure,
                ),
                structure,
            )
            for m, d, likelihood in zip(models, data, likelihoods)
        ]
    if method == "average":
        merged = merge_average(models, weights)
    elif method == "fisher":
        fishers = [diagonal for diagonal, _ in curvatures]
        merged = merge_fisher(models, fishers, weights, prior_precision)
    elif method == "kfac":
        merged = merge_kfac(models, curvatures, weights, prior_precision)
    else:
        merged = merge_regmean(models, data, weights, regmean_alpha)
    if repair:
        merged = repair_units(merged, models, data, weights=weights)
    return merged


def _check_same_layers(models):
    """Raises a ValueError naming the first layer that differs between models.

    Layers are compared in order by class, by the weight shapes and by every
    setting of their configs (activation, use_bias, strides, ...) except
    names, dtypes and how weights were initialized, regularized or
    constrained, which do not change the function the weights compute.
    """
    reference = _layer_signatures(models[0])
    for k, model in enumerate(models[1:], start=1):
        other = _layer_signatures(model)
        for (layer_a, sig_a), (layer_b, sig_b) in zip(reference, other):
            if sig_a == sig_b:
                continue
            difference = next(
                (key, sig_a.get(key), sig_b.get(key))
                for key in sorted(set(sig_a) | set(sig_b), key=str)
                if sig_a.get(key) != sig_b.get(key)
            )
            raise ValueError(
                f"models[{k}] ({model.name!r}) does not share the architecture "
                f"of models[0] ({models[0].name!r}): layer {layer_b.name!r} "
                f"has {difference[0]} {difference[2]} where layer "
                f"{layer_a.name!r} has {difference[1]}."
            )
        if len(other) != len(reference):
            extra = (other if len(other) > len(reference) else reference)[
                min(len(other), len(reference))
            ][0]
            raise ValueError(
                f"models[{k}] ({model.name!r}) does not share the architecture "
                f"of models[0] ({models[0].name!r}): they have {len(other)} "
                f"and {len(reference)} layers; layer {extra.name!r} has no "
                "counterpart."
            )


# Config entries that do not change what a layer computes from its weights.
_IRRELEVANT = ("name", "trainable", "dtype", "seed")
_IRRELEVANT_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def _layer_signatures(model):
    """`(layer, signature)` for each computing layer of `model`, in order."""
    signatures = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            signatures += _layer_signatures(layer)
            continue
        try:
            config = layer.get_config()
        except NotImplementedError:
            config = {}
        # Compared as reprs: configs may hold arrays.
        signature = {
            key: repr(value)
            for key, value in config.items()
            if key not in _IRRELEVANT and not key.endswith(_IRRELEVANT_SUFFIXES)
        }
        signature["class"] = type(layer).__name__
        signature["weight shapes"] = repr(
            [tuple(w.shape) for w in layer.weights]
        )
        signatures.append((layer, signature))
    return signatures


def _normalized_weights(weights, count):
    if weights is None:
        return np.full(count, 1.0 / count)
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(
            f"`weights` needs one weight per model: {count} models, "
            f"{len(weights)} weights."
        )
    weights = np.array(
        [
            check_number(f"weights[{k}]", w, minimum=0.0)
            for k, w in enumerate(weights)
        ]
    )
    if weights.max() <= 0:
        raise ValueError(
            f"`weights` must have a positive sum; got {weights.tolist()}."
        )
    # Scaled by the largest first: a sum of huge weights would overflow.
    weights = weights / weights.max()
    return weights / weights.sum()


def _model_list(models):
    """`models` as a list of at least two Keras models, or a clear error."""
    if isinstance(models, (keras.Model, str, os.PathLike)) or not isinstance(
        models, (list, tuple)
    ):
        raise ValueError(
            "`merge_models` takes a list of at least two Keras models; got "
            f"one {type(models).__name__}."
        )
    for k, model in enumerate(models):
        if not isinstance(model, keras.Model):
            hint = (
                " Load it first with `keras.saving.load_model`."
                if isinstance(model, (str, os.PathLike))
                else ""
            )
            raise ValueError(
                f"`models[{k}]` is a {type(model).__name__} ({model!r:.60}), "
                f"not a Keras model.{hint}"
            )
    if len(models) < 2:
        raise ValueError(
            f"`merge_models` needs at least two models; got {len(models)}."
        )
    return list(models)
