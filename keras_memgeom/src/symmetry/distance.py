"""Normalized Frobenius distance between two parameterizations."""

from typing import NamedTuple

import numpy as np

from keras_memgeom.src.symmetry.unit_chain import check_same_architecture
from keras_memgeom.src.symmetry.unit_chain import unit_chain


class Distance(NamedTuple):
    """Phi per weight layer (keyed by `model_a`'s layer names) and overall.

    Args:
        per_layer: dict from `model_a`'s weight-layer names to their Phi.
        overall: float, the Phi of all kernels pooled.

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

    result = keras_memgeom.symmetry.distance(model_a, model_b)
    print(sorted(result.per_layer), result.overall)
    ```
    """

    per_layer: dict
    overall: float


def distance(model_a, model_b):
    """The distance `Phi(W, W') = sum (W - W')^2 / sum (W + W')^2` per layer.

    Phi is 0 for identical kernels, about 1 for unrelated ones (and for a
    randomly permuted copy), below 1 when they are positively correlated.
    It is computed on the kernels as the layers use them (`kernel * mask`
    for pre-pruned layers). The overall figure pools all kernels: the Phi of
    the concatenated kernel vectors. Permutations are not undone: compare
    `reorder`ed or `align`ed models for that.

    Args:
        model_a: a model supported by `keras_memgeom.symmetry`.
        model_b: a model of the same architecture.

    Returns:
        `Distance(per_layer={layer_name: phi}, overall=phi)`. A ratio 0 / 0
        (both kernels zero) counts as 0.

    Raises:
        ValueError: naming the layer, for unsupported or mismatched models.

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

    print(keras_memgeom.symmetry.distance(model_a, model_a).overall)  # 0.0
    print(keras_memgeom.symmetry.distance(model_a, model_b).per_layer)
    ```
    """
    chain_a, chain_b = unit_chain(model_a), unit_chain(model_b)
    check_same_architecture(chain_a, chain_b)
    per_layer = {}
    total_difference = total_sum = 0.0
    for a, b in zip(chain_a, chain_b):
        kernel_a = a.effective_kernel().astype("float64")
        kernel_b = b.effective_kernel().astype("float64")
        difference = float(np.sum((kernel_a - kernel_b) ** 2))
        total = float(np.sum((kernel_a + kernel_b) ** 2))
        per_layer[a.layer.name] = _ratio(difference, total)
        total_difference += difference
        total_sum += total
    return Distance(per_layer, _ratio(total_difference, total_sum))


def _ratio(difference, total):
    return difference / total if total > 0 else 0.0
