"""The inputs each weight layer of a model sees, batch by batch."""

import keras
import numpy as np
from keras import ops

from keras_memgeom.symmetry.unit_chain import unit_chain
from keras_memgeom.utils.batches import iterate_batches


def layer_inputs(model, data, *, batch_size=256):
    """Yields, per batch, the input of every weight layer of a chain model.

    The model is run layer by layer in inference mode (dropout off,
    normalization with its moving statistics); the input of each Dense /
    Conv2D / PolynomialDense layer is recorded on the way. What closed-form
    merges need (Gram matrices, unit statistics) is a sum over batches of
    these, so the whole data set is never held at once.

    Args:
        model: a chain model supported by `keras_memgeom.symmetry`.
        data: `(x, y)` arrays (labels are ignored), an array of inputs, or
            anything `FisherMemory.estimate` takes.
        batch_size: batch size for arrays.

    Returns:
        A generator of lists of numpy arrays, one per weight layer of
        `unit_chain(model)`, input to output.

    Raises:
        ValueError: naming the layer, for models `keras_memgeom.symmetry`
            does not support.

    Example:
    >>> gram = sum(inputs[0].T @ inputs[0] for inputs in layer_inputs(model, (x, y)))
    """
    weight_layers = [unit_layer.layer for unit_layer in unit_chain(model)]
    if isinstance(data, np.ndarray):
        data = (data, np.zeros(len(data)))
    for x, _ in iterate_batches(data, batch_size):
        inputs, hidden = [], ops.convert_to_tensor(x)
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if any(layer is w for w in weight_layers):
                inputs.append(np.asarray(ops.convert_to_numpy(hidden), dtype="float64"))
            hidden = layer(hidden, training=False)
        yield inputs
