"""Replace the hidden Dense / Conv2D layers of a model by pre-pruned ones."""

import keras

from keras_memgeom.src.layers.distinct_column_mask import validate_zero_rate

# Module import (not names): keras_memgeom.layers imports this package's
# mask function, so the names are looked up at call time.
from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense
from keras_memgeom.src.utils.clone_model import clone_model


def pre_prune(model, *, zero_rate, widen=True, seed=None, prune_output=False):
    """Returns a new model whose hidden Dense / Conv2D layers are pre-pruned.

    Every plain `keras.layers.Dense` becomes a `PrePrunedDense` and every
    plain `keras.layers.Conv2D` a `PrePrunedConv2D` with the same
    configuration, a fixed distinct-column mask and, with `widen`, the width
    scaled by `1 / (1 - zero_rate)` (the next layer's input grows with it).
    The layers producing the model's outputs stay as they are unless
    `prune_output`, since their units are tied to the targets and carry no
    permutation symmetry. Other layers are cloned unchanged.

    The new model is freshly initialized (widened kernels have no trained
    counterpart): pre-pruning is an architecture decision taken before
    training.

    Args:
        model: a built Sequential or functional `keras.Model`.
        zero_rate: float in (0, 1), the fraction of masked connections.
        widen: bool, widen the pruned layers to keep their capacity.
        seed: int or `None`. Layer `k` (in model order) gets mask seed
            `seed + k`, so every layer has its own mask.
        prune_output: bool, also pre-prune the output layers (never
            widened, since their width is the number of targets).

    Returns:
        A new, uncompiled `keras.Model`.

    Raises:
        ValueError: if `zero_rate` is not a number in (0, 1); Keras raises one
            too for a subclassed model, which cannot be cloned layer by layer.

    Example:

    ```python
    import keras

    import keras_memgeom

    dense = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    pruned = keras_memgeom.pre_prune(dense, zero_rate=0.5, seed=0)
    print(pruned.layers[0].units)  # 128
    ```
    """
    validate_zero_rate(zero_rate)
    output_names = {
        layer.name
        for layer in model.layers
        if any(layer.output is tensor for tensor in model.outputs)
    }
    replacements = {
        keras.layers.Dense: PrePrunedDense,
        keras.layers.Conv2D: PrePrunedConv2D,
    }
    order = {layer.name: k for k, layer in enumerate(model.layers)}

    def clone(layer):
        pruned_class = replacements.get(type(layer))
        is_output = layer.name in output_names
        if pruned_class is None or (is_output and not prune_output):
            return layer.__class__.from_config(layer.get_config())
        return pruned_class(
            **layer.get_config(),
            zero_rate=zero_rate,
            widen=widen and not is_output,
            seed=None if seed is None else seed + order[layer.name],
        )

    return clone_model(model, clone_function=clone)
