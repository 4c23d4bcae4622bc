"""Trained models combined in closed form, after aligning their units."""

import os
import warnings

import keras
import numpy as np
from keras import ops
from scipy.optimize import linear_sum_assignment

from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker import dense_factor
from keras_memgeom.src.memory.kronecker import factor_size
from keras_memgeom.src.memory.kronecker import kernel_matrix_shape
from keras_memgeom.src.memory.kronecker import kronecker_sum_minimizer
from keras_memgeom.src.memory.kronecker import merge_anchor
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from keras_memgeom.src.merging.layer_inputs import layer_inputs
from keras_memgeom.src.merging.regmean import regmean
from keras_memgeom.src.merging.repair import repair as repair_units
from keras_memgeom.src.symmetry.align import align as align_units
from keras_memgeom.src.symmetry.unit_chain import copy_model
from keras_memgeom.src.symmetry.unit_chain import incoming_weights
from keras_memgeom.src.symmetry.unit_chain import permute_units
from keras_memgeom.src.symmetry.unit_chain import unit_chain
from keras_memgeom.src.symmetry.unit_chain import write_chain
from keras_memgeom.src.utils.checks import check_finite_data
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.clone_model import clone_model

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
            (chains of Dense / Conv2D layers, see `keras_memgeom.symmetry`).
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
    import keras
    import numpy as np

    import keras_memgeom

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def trained(seed):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(2),
            ]
        )
        model.compile(
            "adam",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=5, verbose=0)
        return model

    model_a, model_b = trained(1), trained(2)

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
    prior_precision = check_number(
        "prior_precision", prior_precision, minimum=0.0, inclusive_minimum=False
    )
    regmean_alpha = check_number(
        "regmean_alpha", regmean_alpha, minimum=0.0, maximum=1.0
    )
    _check_same_layers(models)
    if method == "regmean":
        _check_regmean_layers(models[0])
    # Aligned copies are uncompiled: the likelihood comes from the originals.
    structure = "kfac" if method == "kfac" else "diagonal"
    likelihoods = None
    if method in MEMORY_METHODS and memories is None:
        likelihoods = [
            likelihood_from_loss(getattr(m, "loss", None)) for m in models
        ]
    curvatures = None
    if method in MEMORY_METHODS and memories is not None:
        _check_memory_order(models, memories)
        curvatures = [
            _memory_curvature(m, memory, structure)
            for m, memory in zip(models, memories)
        ]
    if align:
        reference = models[0]
        aligned = [reference] + [align_units(m, reference) for m in models[1:]]
        if curvatures is not None:
            curvatures = [curvatures[0]] + [
                _permuted_like(model, a, *c)
                for model, a, c in zip(models[1:], aligned[1:], curvatures[1:])
            ]
        models = aligned
    if method in MEMORY_METHODS and curvatures is None:
        curvatures = []
        for m, d, likelihood in zip(models, data, likelihoods):
            memory = FisherMemory.estimate(
                m,
                d,
                estimator=estimator,
                likelihood=likelihood,
                structure=structure,
            )
            curvatures.append(_memory_curvature(m, memory, structure))
    merged = clone_model(models[0])
    _set_average(merged, models, weights)
    if method in MEMORY_METHODS:
        fishers = [diagonal for diagonal, _ in curvatures]
        _set_fisher_weighted(merged, models, fishers, weights, prior_precision)
    if method == "kfac":
        _set_kronecker_weighted(
            merged, models, [blocks for _, blocks in curvatures], weights
        )
    elif method == "regmean":
        _set_regmean(merged, models, data, weights, regmean_alpha)
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


def _check_memory_order(models, memories):
    """Refuses a memory whose anchor is not its model's weights.

    The merge weighs each model's weights by its memory's curvature, so a
    memory of another model (lists in different orders) would silently
    weigh the wrong weights.
    """
    for k, memory in enumerate(memories):
        if not isinstance(memory, FisherMemory):
            raise ValueError(
                "`memories` takes FisherMemory objects; got "
                f"{type(memory).__name__} as memories[{k}]."
            )
    for k, (model, memory) in enumerate(zip(models, memories)):
        path = _anchor_mismatch(model, memory)
        if path is None:
            continue
        owner = next(
            (
                j
                for j, other in enumerate(models)
                if j != k and _anchor_mismatch(other, memory, own=False) is None
            ),
            None,
        )
        hint = (
            f" It is the memory of models[{owner}]: give `memories` in the "
            "order of `models`."
            if owner is not None
            else " Estimate each memory on its model's current weights."
        )
        raise ValueError(
            f"memories[{k}] is not a memory of models[{k}] ({model.name!r}): "
            f"its anchor of {path!r} differs from the model's weights.{hint}"
        )


def _anchor_mismatch(model, memory, own=True):
    """The first path whose anchor is not `model`'s weight, or `None`.

    A memory that does not fit its `own` model raises `match`'s error;
    tried on another model, it just does not match.
    """
    if own:
        pairs = memory.match(model)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pairs = memory.match(model)
        except ValueError:
            return memory.paths[0]
    anchor = memory.anchor
    for path, variable in pairs:
        if not np.allclose(
            anchor[path], ops.convert_to_numpy(variable), rtol=1e-5, atol=1e-7
        ):
            return path
    return None


def _memory_curvature(model, memory, structure):
    """`(diagonal, blocks)`: a memory's precision on the trainable variables.

    `diagonal` is the diagonal of the precision `n F` of each variable, in
    order. For `structure="kfac"`, `blocks` maps a kernel's index among the
    variables to a `KroneckerBlock` with the bias's index and the factors
    of the precision, `n A (x) G`; for `"diagonal"` it is empty.
    """
    if not isinstance(memory, FisherMemory):
        raise ValueError(
            "`memories` takes FisherMemory objects; got "
            f"{type(memory).__name__}."
        )
    if structure == "kfac" and memory.structure != "kfac":
        raise ValueError(
            "method='kfac' needs Kronecker-factored memories, "
            "`FisherMemory.estimate(model, data, structure='kfac')`; got a "
            "diagonal one."
        )
    pairs = memory.match(model)
    by_variable = {
        id(v): memory.num_examples * memory.fisher[path] for path, v in pairs
    }
    variables = model.trainable_variables
    diagonal = [
        by_variable.get(id(v), np.zeros(tuple(v.shape), "float32"))
        for v in variables
    ]
    if structure != "kfac":
        return diagonal, {}
    index = {id(v): i for i, v in enumerate(variables)}
    by_path = {path: index[id(v)] for path, v in pairs}
    blocks = {
        by_path[kernel]: KroneckerBlock(
            None if block.bias is None else by_path[block.bias],
            memory.num_examples * dense_factor(block.a),
            dense_factor(block.g),
            block.mask,
        )
        for kernel, block in memory.kronecker.items()
    }
    return diagonal, blocks


def _permuted_like(model, aligned, values, blocks=None):
    """Permutes a memory's curvature on `model` as `align` permuted its units.

    `align` returns the permuted model only; each hidden layer's
    permutation is recovered by matching the units' incoming weights and
    bias, which `aligned` holds as exact copies, layer by layer. Per-variable
    `values` are carried through the same permutations; so are the indices
    of each blocked kernel's entries, which say how the rows of its `A`
    (the bias coordinate stays last) and of its `G` move.

    Returns:
        `(values, blocks)`, permuted.
    """
    chain, target = unit_chain(copy_model(model)), unit_chain(aligned)
    permutations = []
    for index in range(len(chain) - 1):
        source, wanted = _unit_rows(chain[index]), _unit_rows(target[index])
        cost = (
            (wanted**2).sum(1)[:, None]
            + (source**2).sum(1)[None]
            - 2.0 * wanted @ source.T
        )
        permutation = linear_sum_assignment(cost)[1]
        permute_units(chain, index, permutation)
        permutations.append(permutation)
    values = _carried(model, permutations, values)
    if not blocks:
        return values, blocks
    # Entry indices are exact in float32 below 2**24 entries per kernel.
    variables = model.trainable_variables
    indices = _carried(
        model,
        permutations,
        [
            np.arange(np.prod(v.shape)).reshape(v.shape)
            if i in blocks
            else np.zeros(v.shape)
            for i, v in enumerate(variables)
        ],
    )
    permuted = {}
    for i, block in blocks.items():
        units = variables[i].shape[-1]
        moved = np.rint(indices[i]).astype("int64").reshape(-1, units)
        rows, columns = moved[:, 0] // units, moved[0] % units
        a_rows = np.append(rows, len(rows)) if block.bias is not None else rows
        mask = (
            None
            if block.mask is None
            else np.asarray(block.mask)[rows][:, columns]
        )
        permuted[i] = KroneckerBlock(
            block.bias,
            block.a[a_rows][:, a_rows],
            block.g[columns][:, columns],
            mask,
        )
    return values, permuted


def _carried(model, permutations, values):
    """Per-variable arrays of `model` permuted with its hidden units."""
    carrier = copy_model(model)
    for variable, value in zip(carrier.trainable_variables, values):
        variable.assign(value)
    carried = unit_chain(carrier)
    for index, permutation in enumerate(permutations):
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
            sum(
                w * np.asarray(v, "float64") for w, v in zip(weights, values)
            ).astype(values[0].dtype)
            for values in zip(*(m.get_weights() for m in models))
        ]
    )


def _set_fisher_weighted(merged, models, fishers, weights, prior_precision):
    for index, variable in enumerate(merged.trainable_variables):
        precision, moment = 0.0, 0.0
        for w, model, fisher in zip(weights, models, fishers):
            p = w * (np.asarray(fisher[index], "float64") + prior_precision)
            precision = precision + p
            moment = moment + p * ops.convert_to_numpy(
                model.trainable_variables[index]
            )
        variable.assign((moment / precision).astype(variable.dtype))


def _set_kronecker_weighted(merged, models, blocks, weights):
    """Sets each Kronecker-covered layer to the summed quadratics' minimizer."""
    layouts = [
        {
            i: (
                b.bias,
                None if b.mask is None else np.asarray(b.mask).tobytes(),
            )
            for i, b in k.items()
        }
        for k in blocks
    ]
    if any(layout != layouts[0] for layout in layouts[1:]):
        raise ValueError(
            "method='kfac' needs the memories' Kronecker blocks (with their "
            "biases and masks) on the same layers of every model."
        )
    variables = merged.trainable_variables
    for i, block in blocks[0].items():
        bias = block.bias
        shape = kernel_matrix_shape(
            tuple(variables[i].shape), factor_size(block.g)
        )

        def stacked(model):
            kernel = (
                ops.convert_to_numpy(model.trainable_variables[i])
                .reshape(shape)
                .astype("float64")
            )
            if bias is None:
                return kernel
            return np.concatenate(
                [
                    kernel,
                    ops.convert_to_numpy(
                        model.trainable_variables[bias]
                    ).reshape(1, -1),
                ],
                axis=0,
            )

        terms = [
            (stacked(m), w, b[i].a, b[i].g)
            for m, w, b in zip(models, weights, blocks)
        ]
        if len(terms) == 2 and block.mask is None:
            # `merge_anchor` keeps the newer anchor where neither quadratic
            # constrains the weights; weighing both orders keeps the average.
            first, second = terms
            solution = weights[1] * merge_anchor(first, second) + weights[
                0
            ] * merge_anchor(second, first)
        else:
            start = sum(w * anchor for anchor, w, _, _ in terms)
            solution = kronecker_sum_minimizer(terms, start, block.mask)
        if bias is not None:
            variables[bias].assign(
                solution[-1]
                .reshape(variables[bias].shape)
                .astype(variables[bias].dtype)
            )
            solution = solution[:-1]
        variables[i].assign(
            solution.reshape(variables[i].shape).astype(variables[i].dtype)
        )


def _set_regmean(merged, models, data, weights, alpha):
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
