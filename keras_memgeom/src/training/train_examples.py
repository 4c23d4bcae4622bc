"""How many examples a training loss averages over."""

import math

import keras


def count_train_examples(x, *, validation_split=0.0):
    """The number of examples one epoch of `model.fit(x, ...)` trains on.

    Keras averages the loss over each batch and the batches cover the
    training data once per epoch, so this is the `n_B` of a memory's
    Laplace scaling. Sample weights do not change it: with the default
    `sum_over_batch_size` reduction a weighted loss is still divided by the
    batch size.

    Args:
        x: what `fit` takes as `x`: arrays (or a structure of arrays), or a
            finite `tf.data.Dataset` of batches (counted in one pass).
        validation_split: the fraction of arrays `fit` holds out, which the
            loss never sees.

    Returns:
        An int.

    Raises:
        ValueError: for inputs whose size cannot be known before training
            (Python generators, `PyDataset`, infinite datasets), naming
            `num_train_examples` as the way out.
    """
    leaves = keras.tree.flatten(x)
    if leaves and hasattr(leaves[0], "shape") and len(leaves[0].shape) > 0:
        num_examples = int(leaves[0].shape[0])
        # The same split as Keras's `fit`: the first part trains.
        return int(math.floor(num_examples * (1.0 - validation_split)))
    if _is_tf_dataset(x):
        return _count_dataset(x)
    raise ValueError(
        "Cannot tell how many examples the training loss averages over from "
        f"{type(x).__name__}: pass `num_train_examples=` to `compile`."
    )


def _is_tf_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(
        x, "cardinality"
    )


def _count_dataset(dataset):
    import tensorflow as tf

    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            "The training dataset is infinite, so the number of examples the "
            "loss averages over is unknown: pass `num_train_examples=` to "
            "`compile`."
        )
    sizes = dataset.map(
        lambda *batch: tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
    )
    return int(
        sizes.reduce(tf.constant(0, tf.int64), lambda total, size: total + size)
    )
