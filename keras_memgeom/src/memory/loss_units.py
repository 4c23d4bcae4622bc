"""The units a Keras loss averages over: examples, or unmasked tokens."""

import itertools

import keras
from keras import ops
from keras.src.backend.common.masking import get_keras_mask

from keras_memgeom import backend


def loss_units(outputs, mask):
    """1 for every output unit a Keras loss averages over, 0 for the others.

    A unit is an example of `(batch, d)` outputs, or a position of
    per-token `(batch, positions, d)` outputs. The output's Keras mask
    (from `Embedding(mask_zero=True)`, `Masking`, ...) leaves its masked
    units out, as Keras's losses divide by the unmasked ones; sample
    weights leave none out, as the default `sum_over_batch_size` reduction
    divides a weighted loss by all units, zero weights included. A Fisher
    memory's `n` and the `num_train_examples` that training infers both
    count these units.

    Args:
        outputs: a model's output, `(batch, [positions,] d)`.
        mask: its Keras mask (`(batch, [positions])`), or `None`.

    Returns:
        A tensor of `outputs`'s dtype and shape `outputs.shape[:-1]`.

    Example:

    ```python
    import numpy as np

    mask = np.array([[True, True, False]])
    print(loss_units(np.zeros((1, 3, 4), "float32"), mask))  # [[1. 1. 0.]]
    ```
    """
    outputs = ops.convert_to_tensor(outputs)
    shape = ops.shape(outputs)[:-1]
    if mask is None:
        return ops.ones(shape, outputs.dtype)
    return ops.cast(ops.reshape(mask, shape), outputs.dtype)


def count_loss_units(model, inputs):
    """How many units a Keras loss averages `model`'s outputs over.

    The model runs on the batches of `inputs` in one compiled pass (jax and
    TensorFlow compile away what the count does not read: for a mask from
    the inputs, the mask alone); the count is summed on the device and read
    once at the end.

    Args:
        model: a built Keras model.
        inputs: an iterable of input batches (`x` as the model takes it).

    Returns:
        The number of `loss_units` of the batches, an int; `None` when
        they are the examples: a model with several outputs, or one
        `(batch, d)` output without a mask.

    Example:

    ```python
    import keras
    import numpy as np

    tokens = keras.Input((3,), dtype="int32")
    h = keras.layers.Embedding(4, 2, mask_zero=True)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(4)(h))
    x = np.array([[1, 2, 0], [3, 0, 0]], "int32")
    print(count_loss_units(model, [x[:1], x[1:]]))  # 3
    ```
    """
    batches = iter(inputs)
    first = next(batches, None)
    if first is None:
        return 0
    # One example says what the units are: cheap next to the pass.
    outputs = model(
        keras.tree.map_structure(lambda a: a[:1], first), training=False
    )
    if len(keras.tree.flatten(outputs)) != 1:
        return None
    if len(outputs.shape) < 3 and get_keras_mask(outputs) is None:
        return None
    variables = model.variables

    def count(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            outputs = model(x, training=False)
        units = loss_units(outputs, get_keras_mask(outputs))
        return {"units": ops.sum(ops.cast(units, "int32"))}, []

    step = backend.batch_step(count, variables)
    totals = None
    for x in itertools.chain([first], batches):
        totals, _ = step(totals, (x,))
    totals = backend.batch_total(totals)
    return int(ops.convert_to_numpy(totals["units"]))
