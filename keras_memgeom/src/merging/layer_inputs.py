"""The rows each weight layer's kernel multiplies, batch by batch."""

import keras
import numpy as np
from keras import ops

from keras_memgeom.src.layers.polynomial_dense import PolynomialDense
from keras_memgeom.src.symmetry.hidden_units import weight_layers
from keras_memgeom.src.utils.batches import iterate_batches
from keras_memgeom.src.utils.checks import check_finite_data


def layer_inputs(model, data, *, batch_size=256, name="data"):
    """Yields, per batch, the input rows of every weight layer of a model.

    The model runs in inference mode (dropout off, normalization with its
    moving statistics) with the inputs of its weight layers
    (`keras_memgeom.symmetry.weight_layers`) as extra outputs, and each is
    recorded as the rows its kernel multiplies: a Dense (or Dense-like
    EinsumDense) layer's inputs flattened to `(rows, inputs)`, a Conv2D layer's
    input patches `(rows, kernel_h * kernel_w * channels)`, one row per
    example and output position, in the order of
    `kernel.reshape(-1, units)`. A layer's pre-activations are then
    `rows @ kernel.reshape(-1, units) + bias`. What closed-form merges need
    (Gram matrices, unit statistics) is a sum over batches of these, so the
    whole data set is never held at once.

    Args:
        model: a Sequential or functional model.
        data: `(x, y)` arrays (labels are ignored), an array of inputs, or
            anything `FisherMemory.estimate` takes.
        batch_size: batch size for arrays.
        name: what the data is, named in errors (e.g. `"data[1]"`).

    Returns:
        A generator of lists of float64 numpy arrays, one per weight layer
        of `keras_memgeom.symmetry.weight_layers(model)`, input to output.

    Raises:
        ValueError: naming the layer, for weight layers `weight_layers`
            refuses, PolynomialDense layers (their kernel multiplies a basis
            expansion), Conv1D and Conv3D layers and dilated convolutions;
            for empty data, or inputs holding NaN or infinite values.

    Example:

    ```python
    import keras_memgeom

    # model_a, model_b: two trained models of one architecture and (x, y)
    # their data, as built in the how-to guide "Merging two models".
    grams = [0.0, 0.0]
    for rows in keras_memgeom.merging.layer_inputs(model_a, (x, y)):
        grams = [g + r.T @ r for g, r in zip(grams, rows)]
    print([g.shape for g in grams])  # one (fan_in, fan_in) per layer
    ```
    """
    layers = weight_layers(model)
    for layer in layers:
        _check_rows(layer)
    # One input tensor, not a list of one: the data's `x` is an array.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.input for layer in layers])
    if isinstance(data, np.ndarray):
        data = (data, np.zeros(len(data)))
    empty = True
    for x, y in iterate_batches(data, batch_size):
        check_finite_data(f"The inputs of {name}", x)
        if not len(y):
            continue
        empty = False
        inputs = probe(x, training=False)
        yield [
            _kernel_rows(
                layer,
                np.asarray(ops.convert_to_numpy(value), dtype="float64"),
            )
            for layer, value in zip(layers, inputs)
        ]
    if empty:
        raise ValueError(
            f"{name} is empty: statistics of the layers' inputs need at "
            "least one example."
        )


def _check_rows(layer):
    if isinstance(layer, PolynomialDense):
        raise ValueError(
            f"Layer {layer.name!r} (PolynomialDense): its kernel multiplies a "
            "basis expansion of its inputs, not the inputs; it cannot be "
            "merged or repaired from its inputs."
        )
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv3D)):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}): only Conv2D "
            "input patches are supported."
        )
    if isinstance(layer, keras.layers.Conv2D) and tuple(
        layer.dilation_rate
    ) != (1, 1):
        raise ValueError(
            f"Layer {layer.name!r} (Conv2D) is dilated; only dilation_rate 1 "
            "is supported."
        )


def _kernel_rows(layer, x):
    if not isinstance(layer, keras.layers.Conv2D):
        return x.reshape(-1, x.shape[-1])
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    if layer.padding == "same":
        # Keras (and TensorFlow) "same": the extra padding goes after.
        pads = []
        for size, k, s in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    # (batch, out_h, out_w, channels, kh, kw) -> rows in kernel order (kh, kw,
    # channels).
    windows = np.lib.stride_tricks.sliding_window_view(
        x, (kh, kw), axis=(1, 2)
    )[:, ::sh, ::sw]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(
        -1, kh * kw * x.shape[-1]
    )
