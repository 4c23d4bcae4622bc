"""Permute a model's hidden units to match a reference (weight matching)."""

import numpy as np
from scipy.optimize import linear_sum_assignment

from keras_memgeom.src.symmetry.unit_chain import check_same_architecture
from keras_memgeom.src.symmetry.unit_chain import copy_model
from keras_memgeom.src.symmetry.unit_chain import hidden_indices
from keras_memgeom.src.symmetry.unit_chain import permute_units
from keras_memgeom.src.symmetry.unit_chain import unit_chain
from keras_memgeom.src.symmetry.unit_chain import unit_features
from keras_memgeom.src.symmetry.unit_chain import write_chain

METHODS = ("weight_matching",)


def align(model, reference, method="weight_matching", max_sweeps=100):
    """Returns a copy of `model`, hidden units permuted to match `reference`.

    Weight matching (as in Git Re-Basin): for one hidden layer at a time,
    with the permutations of its neighbours fixed, the permutation that
    maximizes the inner product between the two models' unit parameters
    (incoming and outgoing weights, bias, normalization and polynomial
    parameters) is a linear assignment problem, solved exactly by
    `scipy.optimize.linear_sum_assignment`. Sweeps over the layers repeat
    until no permutation changes. The function is unchanged.

    Args:
        model: a model supported by `keras_memgeom.symmetry`.
        reference: a model of the same architecture.
        method: `"weight_matching"`.
        max_sweeps: int, the most sweeps over the layers.

    Returns:
        A new `keras.Model` (uncompiled), permuted.

    Raises:
        ValueError: for an unknown method, or naming the layer, for
            unsupported or mismatched models.

    Example:

    ```python
    import keras

    import keras_memgeom

    def mlp(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(2),
            ]
        )

    model_a, model_b = mlp(1), mlp(2)

    aligned = keras_memgeom.symmetry.align(model_b, model_a)
    before = keras_memgeom.symmetry.distance(model_b, model_a).overall
    after = keras_memgeom.symmetry.distance(aligned, model_a).overall
    print(after <= before)  # True
    ```
    """
    return permuted_copy(
        model,
        unit_permutations(
            model, reference, method=method, max_sweeps=max_sweeps
        ),
    )


def permuted_copy(model, permutations):
    """A copy of `model`, hidden units permuted, computing the same function.

    Args:
        model: a model supported by `keras_memgeom.symmetry`.
        permutations: a dict from hidden layer indices in
            `unit_chain(model)` to permutations, as `unit_permutations`
            returns.

    Returns:
        A new `keras.Model` (uncompiled).
    """
    result = copy_model(model)
    chain = unit_chain(result)
    for index, permutation in permutations.items():
        permute_units(chain, index, permutation)
    write_chain(chain)
    return result


def unit_permutations(
    model, reference, method="weight_matching", max_sweeps=100
):
    """The permutation `align` applies to each hidden layer of `model`.

    Args:
        model, reference, method, max_sweeps: as for `align`.

    Returns:
        A dict from each hidden layer's index in `unit_chain(model)` to an
        integer array: unit `j` of the aligned layer is unit
        `permutation[j]` of `model`'s.

    Raises:
        ValueError: as `align`.
    """
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {method!r}; expected one of {METHODS}."
        )
    chain, reference_chain = unit_chain(model), unit_chain(reference)
    check_same_architecture(chain, reference_chain)
    hidden = hidden_indices(chain)
    total = {index: np.arange(chain[index].units) for index in hidden}
    for _ in range(max_sweeps):
        changed = False
        for index in hidden:
            similarity = (
                unit_features(reference_chain, index).astype("float64")
                @ unit_features(chain, index).astype("float64").T
            )
            _, permutation = linear_sum_assignment(similarity, maximize=True)
            if np.any(permutation != np.arange(len(permutation))):
                permute_units(chain, index, permutation)
                total[index] = total[index][permutation]
                changed = True
        if not changed:
            break
    return total
