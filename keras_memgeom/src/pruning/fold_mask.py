"""Fold the masks of pre-pruned layers into plain layers for inference."""

import keras

from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense
from keras_memgeom.src.utils.clone_model import clone_model


def fold_mask(model):
    """Returns a copy of `model` with every mask folded into its kernel.

    `PrePrunedDense` becomes `keras.layers.Dense` and `PrePrunedConv2D`
    becomes `keras.layers.Conv2D` with kernel `W * B`, so inference costs
    exactly what the plain layer costs and the model loads without
    keras_memgeom. Outputs are unchanged. Masked `PolynomialDense` layers
    keep their mask (there is no plain Keras counterpart).

    Args:
        model: a Sequential or functional `keras.Model`.

    Returns:
        A new `keras.Model` with the same weights, masks folded.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    dense = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(2)]
    )
    pruned = keras_memgeom.pre_prune(dense, zero_rate=0.5, seed=0)
    plain = keras_memgeom.pruning.fold_mask(pruned)
    x = np.random.default_rng(0).normal(size=(4, 16))
    print(np.allclose(plain(x), pruned(x), atol=1e-6))  # True
    ```
    """
    plain_classes = {
        PrePrunedDense: keras.layers.Dense,
        PrePrunedConv2D: keras.layers.Conv2D,
    }

    def clone(layer):
        plain_class = plain_classes.get(type(layer))
        if plain_class is None:
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        for name in ("zero_rate", "widen", "seed"):
            config.pop(name)
        # The built width, not the requested one before widening.
        if plain_class is keras.layers.Dense:
            config["units"] = layer.units
        else:
            config["filters"] = layer.filters
        return plain_class.from_config(config)

    folded = clone_model(model, clone_function=clone)
    for source, target in zip(model.layers, folded.layers):
        if type(source) in plain_classes:
            # The mask is the only non-trainable weight, hence the last.
            kernel, *bias, mask = source.get_weights()
            target.set_weights([kernel * mask, *bias])
        else:
            target.set_weights(source.get_weights())
    return folded
