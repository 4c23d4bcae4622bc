"""Trained models combined in closed form, after aligning their units."""

import keras
import numpy as np
from keras import ops
from scipy.optimize import linear_sum_assignment

from keras_memgeom.memory.fisher_memory import FisherMemory
from keras_memgeom.memory.likelihood import likelihood_from_loss
from keras_memgeom.merging.layer_inputs import layer_inputs
from keras_memgeom.merging.regmean import regmean
from keras_memgeom.merging.repair import repair as repair_units
from keras_memgeom.symmetry.align import align as align_units
from keras_memgeom.symmetry.unit_chain import copy_model, incoming_weights, permute_units, unit_chain, write_chain
from keras_memgeom.utils.checks import check_number

METHODS = ("average", "fisher", "regmean")
# Named here so that asking for them says they are coming, not unknown.
PLANNED_METHODS = ("kfac",)


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

    `repair=True` then restores each hidden unit's pre-activation mean and
    standard deviation to the endpoints' interpolated ones on `data`
    (Jordan et al. 2023, "REPAIR"; see `keras_memgeom.merging.repair`),
    folded into the merged Dense and Conv2D weights.

    Args:
        models: a list of at least two built Keras models of one
            architecture; for `"fisher"` with `data`, compiled with a
            log-likelihood loss.
        method: `"average"`, `"fisher"` or `"regmean"`; `None` means
            `"fisher"` when `data` or `memories` is given, else
            `"average"` (as before `method` existed). `"kfac"`
            (Kronecker-factored memories) is not available yet.
        data: `None`, or a list with one `(x, y)` data set (anything
            `FisherMemory.estimate` takes) per model, e.g. the one it was
            trained on. Needed by `"regmean"` and `repair`, and by
            `"fisher"` without `memories`.
        memories: `None`, or a list with one `FisherMemory` of each model,
            for `"fisher"`.
        align: whether to align the hidden units to the first model's
            (chains of Dense / Conv2D layers, see `keras_memgeom.symmetry`).
        repair: whether to correct the hidden units' statistics (REPAIR).
        weights: `None` (equal), or a non-negative finite weight per model
            with a positive sum.
        estimator: the Fisher estimator used with `data`.
        prior_precision: `alpha > 0` for `"fisher"`.
        regmean_alpha: in `[0, 1]`, the scale of the off-diagonal Gram
            entries for `"regmean"`.

    Returns:
        A new Keras model (uncompiled) with the merged weights.

    Raises:
        ValueError: for fewer than two models, an unknown method, lists
            without one entry per model, bad weights, `"fisher"` with
            neither `data` nor `memories`, `"regmean"` or `repair` without
            `data`, or, naming the layer, different architectures or a
            layer the method cannot merge.
        NotImplementedError: for `method="kfac"`.

    Example:
    >>> merged = merge_models([model_a, model_b], method="regmean", data=[(x_a, y_a), (x_b, y_b)], repair=True)
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"`merge_models` needs at least two models; got {len(models)}.")
    if method is None:
        method = "fisher" if data is not None or memories is not None else "average"
    if method in PLANNED_METHODS:
        raise NotImplementedError(
            f"method={method!r} (Kronecker-factored curvature) is not available yet; "
            f"use one of {METHODS}."
        )
    if method not in METHODS:
        raise ValueError(f"Unknown merge method {method!r}; expected one of {METHODS}.")
    if isinstance(data, tuple) and any(hasattr(d, "shape") for d in data):
        raise ValueError(
            "`data` must be a list with one data set per model; got one `(x, y)` "
            "tuple. For models trained on the same data, pass `[(x, y)] * len(models)`."
        )
    for name, values in (("data", data), ("memories", memories)):
        if values is not None and len(values) != len(models):
            raise ValueError(
                f"`{name}` needs one entry per model: {len(models)} models, {len(values)} entries."
            )
    if method == "fisher" and data is None and memories is None:
        raise ValueError("method='fisher' needs `memories` (one FisherMemory per model) or `data` to estimate them on.")
    for needs, flag in ((method == "regmean", "method='regmean'"), (repair, "repair=True")):
        if needs and data is None:
            raise ValueError(f"{flag} needs `data`: one data set per model.")
    weights = _normalized_weights(weights, len(models))
    prior_precision = check_number("prior_precision", prior_precision, minimum=0.0, inclusive_minimum=False)
    regmean_alpha = check_number("regmean_alpha", regmean_alpha, minimum=0.0, maximum=1.0)
    _check_same_layers(models)
    if method == "regmean":
        _check_regmean_layers(models[0])
    # Aligned copies are uncompiled: the likelihood comes from the originals.
    likelihoods = None
    if method == "fisher" and memories is None:
        likelihoods = [likelihood_from_loss(getattr(m, "loss", None)) for m in models]
    fishers = None
    if method == "fisher" and memories is not None:
        fishers = [_memory_fisher(m, memory) for m, memory in zip(models, memories)]
    if align:
        reference = models[0]
        aligned = [reference] + [align_units(m, reference) for m in models[1:]]
        if fishers is not None:
            fishers = [fishers[0]] + [
                _permuted_like(model, a, fisher) for model, a, fisher in zip(models[1:], aligned[1:], fishers[1:])
            ]
        models = aligned
    if method == "fisher" and fishers is None:
        fishers = []
        for m, d, likelihood in zip(models, data, likelihoods):
            memory = FisherMemory.estimate(m, d, estimator=estimator, likelihood=likelihood)
            fishers.append(_memory_fisher(m, memory))
    merged = keras.models.clone_model(models[0])
    _set_average(merged, models, weights)
    if method == "fisher":
        _set_fisher_weighted(merged, models, fishers, weights, prior_precision)
    elif method == "regmean":
        _set_regmean(merged, models, data, weights, regmean_alpha)
    if repair:
        merged = repair_units(merged, models, data, weights=weights)
    return merged


def _check_same_layers(models):
    """Raises a ValueError naming the first layer whose weights differ in shape."""

    def signature(model):
        return [
            (layer, type(layer).__name__, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers
            if layer.weights
        ]

    reference = signature(models[0])
    for model in models[1:]:
        other = signature(model)
        for (layer_a, type_a, shapes_a), (layer_b, type_b, shapes_b) in zip(reference, other):
            if (type_a, shapes_a) != (type_b, shapes_b):
                raise ValueError(
                    f"Model {model.name!r} does not share the architecture of {models[0].name!r}: "
                    f"layer {layer_b.name!r} ({type_b}, weights {shapes_b}) vs layer "
                    f"{layer_a.name!r} ({type_a}, weights {shapes_a})."
                )
        if len(other) != len(reference):
            extra = (other if len(other) > len(reference) else reference)[min(len(other), len(reference))][0]
            raise ValueError(
                f"Model {model.name!r} does not share the architecture of {models[0].name!r}: "
                f"they have {len(other)} and {len(reference)} layers with weights; layer "
                f"{extra.name!r} has no counterpart."
            )


def _normalized_weights(weights, count):
    if weights is None:
        return np.full(count, 1.0 / count)
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(f"`weights` needs one weight per model: {count} models, {len(weights)} weights.")
    weights = np.array([check_number(f"weights[{k}]", w, minimum=0.0) for k, w in enumerate(weights)])
    if weights.sum() <= 0:
        raise ValueError(f"`weights` must have a positive sum; got {weights.tolist()}.")
    return weights / weights.sum()


def _check_regmean_layers(model):
    """Refuses, by name, a weight layer RegMean cannot merge in closed form."""
    for unit_layer in unit_chain(model):
        layer = unit_layer.layer
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) or unit_layer.mask is not None:
            raise ValueError(
                f"method='regmean' merges unmasked Dense and Conv2D layers in closed form; layer {layer.name!r} "
                f"({type(layer).__name__}) cannot be merged this way. Use 'average' or 'fisher'."
            )


def _memory_fisher(model, memory):
    """The precision `n F` of each trainable variable of `model`, in order."""
    if not isinstance(memory, FisherMemory):
        raise ValueError(f"`memories` takes FisherMemory objects; got {type(memory).__name__}.")
    by_variable = {id(v): memory.num_examples * memory.fisher[path] for path, v in memory.match(model)}
    return [
        by_variable.get(id(v), np.zeros(tuple(v.shape), "float32")) for v in model.trainable_variables
    ]


def _permuted_like(model, aligned, values):
    """Permutes per-variable arrays of `model` as `align` permuted its units.

    `align` returns the permuted model only; each hidden layer's
    permutation is recovered by matching the units' incoming weights and
    bias, which `aligned` holds as exact copies, layer by layer.
    """
    chain, target = unit_chain(copy_model(model)), unit_chain(aligned)
    carrier = copy_model(model)
    for variable, value in zip(carrier.trainable_variables, values):
        variable.assign(value)
    carried = unit_chain(carrier)
    for index in range(len(chain) - 1):
        source, wanted = _unit_rows(chain[index]), _unit_rows(target[index])
        cost = (wanted**2).sum(1)[:, None] + (source**2).sum(1)[None] - 2.0 * wanted @ source.T
        _, permutation = linear_sum_assignment(cost)
        permute_units(chain, index, permutation)
        permute_units(carried, index, permutation)
    write_chain(carried)
    return [ops.convert_to_numpy(v) for v in carrier.trainable_variables]


def _unit_rows(unit_layer):
    rows = incoming_weights(unit_layer).astype("float64")
    if unit_layer.bias is None:
        return rows
    return np.concatenate([rows, unit_layer.bias[:, None]], axis=1)


def _set_average(merged, models, weights):
    merged.set_weights(
        [
            sum(w * np.asarray(v, "float64") for w, v in zip(weights, values)).astype(values[0].dtype)
            for values in zip(*(m.get_weights() for m in models))
        ]
    )


def _set_fisher_weighted(merged, models, fishers, weights, prior_precision):
    for index, variable in enumerate(merged.trainable_variables):
        precision, moment = 0.0, 0.0
        for w, model, fisher in zip(weights, models, fishers):
            p = w * (np.asarray(fisher[index], "float64") + prior_precision)
            precision = precision + p
            moment = moment + p * ops.convert_to_numpy(model.trainable_variables[index])
        variable.assign((moment / precision).astype(variable.dtype))


def _set_regmean(merged, models, data, weights, alpha):
    grams = [_input_grams(m, d) for m, d in zip(models, data)]
    chains = [unit_chain(m) for m in models]
    for index, unit_layer in enumerate(unit_chain(merged)):
        kernels = [_with_bias(chain[index]) for chain in chains]
        kernel = regmean(kernels, [g[index] for g in grams], weights=weights, alpha=alpha)
        layer, shape = unit_layer.layer, unit_layer.kernel.shape
        dtype = unit_layer.kernel.dtype
        if unit_layer.bias is not None:
            layer.bias.assign(kernel[-1].astype(dtype))
            kernel = kernel[:-1]
        layer.kernel.assign(kernel.reshape(shape).astype(dtype))


def _with_bias(unit_layer):
    """The kernel as a `(rows, units)` matrix, with the bias as a last row."""
    kernel = unit_layer.kernel.reshape(-1, unit_layer.units)
    if unit_layer.bias is None:
        return kernel
    return np.concatenate([kernel, unit_layer.bias[None]], axis=0)


def _input_grams(model, data):
    """Per weight layer, the Gram matrix of its input rows (with a 1 for the bias)."""
    chain = unit_chain(model)
    grams = [0.0] * len(chain)
    for rows in layer_inputs(model, data):
        for i, (x, unit_layer) in enumerate(zip(rows, chain)):
            if unit_layer.bias is not None:
                x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
            grams[i] = grams[i] + x.T @ x
    return grams
