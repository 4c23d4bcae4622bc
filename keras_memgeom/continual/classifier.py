"""The default model of the harness: a small ReLU network."""

import keras


def classifier(stream, *, width=400, depth=2):
    """Builds a plain Keras classifier for a `TaskStream`.

    `depth` hidden ReLU layers of `width` units, then one logit per output.
    In the task-incremental scenario (`stream.task_inputs > 0`) the last
    inputs one-hot encode the task: they are not fed to the hidden layers
    but pick the task's own head out of one head per task.

    Args:
        stream: the `TaskStream` to learn.
        width: units per hidden layer.
        depth: number of hidden layers.

    Returns:
        An uncompiled `keras.Model` that maps `(batch, stream.input_dim)`
        inputs to `(batch, stream.num_outputs)` logits.

    Example:

    >>> model = classifier(TaskStream.make("permuted", num_tasks=2), width=32)
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input((stream.input_dim,), name="inputs")
    num_codes = stream.task_inputs
    hidden = inputs[:, : stream.input_dim - num_codes] if num_codes else inputs
    for i in range(depth):
        hidden = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")(hidden)
    if not num_codes:
        logits = keras.layers.Dense(stream.num_outputs, name="logits")(hidden)
        return keras.Model(inputs, logits, name="classifier")
    heads = keras.layers.Dense(num_codes * stream.num_outputs, name="heads")(hidden)
    heads = keras.layers.Reshape((num_codes, stream.num_outputs))(heads)
    logits = keras.ops.einsum("bth,bt->bh", heads, inputs[:, -num_codes:])
    return keras.Model(inputs, logits, name="classifier")
