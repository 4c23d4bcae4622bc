"""How many parameterizations of a model compute the same function."""

import math

import numpy as np

from keras_memgeom.src.symmetry.unit_chain import hidden_indices
from keras_memgeom.src.symmetry.unit_chain import unit_chain
from keras_memgeom.src.symmetry.unit_chain import unit_connectivity


def count_equivalent_optima(model):
    """The log10 of the number of permutation-equivalent parameterizations.

    A permutation of a hidden layer's units leaves the architecture (and so
    any optimum) unchanged only if it maps every unit onto one with the same
    connectivity: the same mask column in its own layer and the same mask
    row in the next one. Units group by that connectivity and each group of
    `g` interchangeable units contributes `g!`. A plain layer of `n` units is
    one group (`n!`, Glukhov 2024, eq. 31); a layer whose mask has distinct
    columns has only groups of one and contributes 1.

    Args:
        model: a model supported by `keras_memgeom.symmetry` (its hidden
            units found by `keras_memgeom.symmetry.hidden_units`).

    Returns:
        float, `sum_l sum_groups log10(g!)` (0.0 when no unit is
        interchangeable).

    Raises:
        ValueError: naming the layer, for an unsupported model.

    Example:

    ```python
    import keras

    import keras_memgeom

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu"),
            keras.layers.Dense(2, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    log10_count = keras_memgeom.symmetry.count_equivalent_optima(model)
    print(round(10**log10_count))  # 12 = 3! * 2!
    ```
    """
    chain = unit_chain(model)
    log_count = 0.0
    for index in hidden_indices(chain):
        connectivity = unit_connectivity(chain, index)
        _, group_sizes = np.unique(connectivity, axis=0, return_counts=True)
        log_count += sum(math.lgamma(g + 1) for g in group_sizes)
    return log_count / math.log(10)
