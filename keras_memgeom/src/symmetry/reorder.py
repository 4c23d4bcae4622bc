"""Canonical ordering of hidden units (Sorensen reordering)."""

import numpy as np

from keras_memgeom.src.symmetry.unit_chain import copy_model
from keras_memgeom.src.symmetry.unit_chain import hidden_indices
from keras_memgeom.src.symmetry.unit_chain import incoming_weights
from keras_memgeom.src.symmetry.unit_chain import permute_units
from keras_memgeom.src.symmetry.unit_chain import unit_chain
from keras_memgeom.src.symmetry.unit_chain import write_chain

METHODS = ("lexicographic", "maximin")


def reorder(model, method="lexicographic"):
    """Returns a copy of `model` with its hidden units in canonical order.

    Layers are processed input to output, so each layer's incoming weights
    are already in canonical row order when it is sorted (Glukhov 2024, 6.1):

    - `"lexicographic"`: sort units by their incoming weight vectors,
      compared element by element (input 0 first), bias last.
    - `"maximin"`: take the input whose weights spread most across the
      units (`max - min`, Glukhov 2024 eq. 36) and sort units by it.

    A pre-pruned layer is sorted by its mask columns instead (either
    method): they are distinct, so they order the units uniquely and
    identically for every model that shares the mask. Every permutation is
    carried to the next layer, so the copy computes the same function.

    Args:
        model: a model supported by `keras_memgeom.symmetry`.
        method: `"lexicographic"` or `"maximin"`.

    Returns:
        A new `keras.Model` (uncompiled) with reordered weights.

    Raises:
        ValueError: for an unknown method, or naming the layer, for an
            unsupported model.

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

    canonical_a = keras_memgeom.symmetry.reorder(model_a)
    canonical_b = keras_memgeom.symmetry.reorder(model_b)
    print(keras_memgeom.symmetry.distance(canonical_a, canonical_b).overall)
    ```
    """
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {method!r}; expected one of {METHODS}."
        )
    result = copy_model(model)
    chain = unit_chain(result)
    for index in hidden_indices(chain):
        permute_units(chain, index, _canonical_order(chain[index], method))
    write_chain(chain)
    return result


def _canonical_order(unit_layer, method):
    features = incoming_weights(unit_layer)
    if unit_layer.bias is not None:
        features = np.concatenate([features, unit_layer.bias[:, None]], axis=1)
    if unit_layer.mask is not None:
        # Mask bits first; the weights only break ties of a non-distinct mask.
        keys = np.concatenate([unit_layer.mask.T, features], axis=1)
    elif method == "lexicographic":
        keys = features
    else:
        spread = features.max(axis=0) - features.min(axis=0)
        return np.argsort(features[:, np.argmax(spread)], kind="stable")
    # np.lexsort sorts by its last key first.
    return np.lexsort(keys.T[::-1])
