"""The default model of the harness: a small ReLU network."""

import keras


def classifier(stream, *, width=400, depth=2):
    """Builds a plain Keras classifier for a `TaskStream`.

    The inputs are flattened, then `depth` hidden ReLU layers of `width`
    units, then one logit per output. (In the task-incremental scenario
    the harness masks the logits of other tasks' classes: see
    `MaskedLogits`.)

    Args:
        stream: the `TaskStream` to learn.
        width: units per hidden layer.
        depth: number of hidden layers.

    Returns:
        An uncompiled `keras.Model` that maps `(batch, *stream.input_shape)`
        inputs to `(batch, stream.num_outputs)` logits.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    model = keras_memgeom.continual.classifier(stream, width=32)
    print(model.output_shape)  # (None, 10)
    ```
    """
    inputs = keras.Input(stream.input_shape, name="inputs")
    hidden = keras.layers.Flatten(name="flatten")(inputs)
    for i in range(depth):
        hidden = keras.layers.Dense(
            width, activation="relu", name=f"hidden_{i}"
        )(hidden)
    logits = keras.layers.Dense(stream.num_outputs, name="logits")(hidden)
    return keras.Model(inputs, logits, name="classifier")
