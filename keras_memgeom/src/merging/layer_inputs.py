"""The rows each weight layer's kernel multiplies, batch by batch."""

import keras
import numpy as np
from keras import ops

from keras_memgeom.src.layers.polynomial_dense import PolynomialDense
from keras_memgeom.src.symmetry.unit_chain import unit_chain
from keras_memgeom.src.utils.batches import iterate_batches
from keras_memgeom.src.utils.checks import check_finite_data


def layer_inputs(model, data, *, batch_size=256, name="data"):
    """Yields, per batch, the input rows of every weight layer of a chain model.

    The model is run layer by layer in inference mode (dropout off,
    normalization with its moving statistics) and the input of each Dense
    and Conv2D layer is recorded as the rows its kernel multiplies: a
    Dense layer's inputs flattened to `(rows, inputs)`, a Conv2D layer's
    input patches `(rows, kernel_h * kernel_w * channels)`, one row per
    example and output position, in the order of
    `kernel.reshape(-1, units)`. A layer's pre-activations are then
    `rows @ kernel.reshape(-1, units) + bias`. What closed-form merges need
    (Gram matrices, unit statistics) is a sum over batches of these, so the
    whole data set is never held at once.

    Args:
        model: a chain model supported by `keras_memgeom.symmetry`.
        data: `(x, y)` arrays (labels are ignored), an array of inputs, or
            anything `FisherMemory.estimate` takes.
        batch_size: batch size for arrays.
        name: what the data is, named in errors (e.g. `"data[1]"`).

    Returns:
        A generator of lists of float64 numpy arrays, one per weight layer
        of `unit_chain(model)`, input to output.

    Raises:
        ValueError: naming the layer, for models `keras_memgeom.symmetry`
            does not support, PolynomialDense layers (their kernel
            multiplies a basis expansion) and dilated convolutions; for
            empty data, or inputs holding NaN or infinite values.

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
    weight_layers = [unit_layer.layer for unit_layer in unit_chain(model)]
    for layer in weight_layers:
        _check_rows(layer)
    if isinstance(data, np.ndarray):
        data = (data, np.zeros(len(data)))
    empty = True
    for x, y in iterate_batches(data, batch_size):
        check_finite_data(f"The inputs of {name}", x)
        if not len(y):
            continue
        empty = False
        rows, hidden = [], ops.convert_to_tensor(x)
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if any(layer is w for w in weight_layers):
                rows.append(
                    _kernel_rows(
                        layer,
                        np.asarray(
                            ops.convert_to_numpy(hidden), dtype="float64"
                        ),
                    )
                )
            hidden = layer(hidden, training=False)
        yield rows
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
