"""How many examples (or tokens) a training loss averages over."""

import math

import keras

from keras_memgeom.src.memory.loss_units import count_loss_units


def count_train_examples(
    x, *, validation_split=0.0, model=None, batch_size=None
):
    """The number of units one epoch of `model.fit(x, ...)` trains on.

    Keras averages the loss over each batch and the batches cover the
    training data once per epoch, so this is the `n_B` of a memory's
    Laplace scaling. The units are those a Fisher memory counts
    (`loss_units`): the examples, or for per-token outputs `(batch,
    positions, d)` the unmasked positions, as Keras's losses average over
    them. Those are counted before training, in one compiled pass of
    `model` over the training inputs. Sample weights do not change the
    count: with the default `sum_over_batch_size` reduction a weighted loss
    is still divided by all the units of the batch, zero weights included.

    Args:
        x: what `fit` takes as `x`: arrays (or a structure of arrays), or a
            finite `tf.data.Dataset` of batches (counted in one pass).
        validation_split: the fraction of arrays `fit` holds out, which the
            loss never sees.
        model: the model `fit` trains, whose outputs say what the units
            are; without it, the units are the examples.
        batch_size: the batch size of the pass over arrays (32 by default,
            as `fit`'s).

    Returns:
        An int.

    Raises:
        ValueError: for inputs whose size cannot be known before training
            (Python generators, `PyDataset`, infinite datasets), naming
            `num_train_examples` as the way out.

    Example:

    ```python
    import numpy as np

    x = np.zeros((10, 3), "float32")
    print(count_train_examples(x, validation_split=0.2))  # 8
    ```
    """
    leaves = keras.tree.flatten(x)
    if leaves and hasattr(leaves[0], "shape") and len(leaves[0].shape) > 0:
        num_examples = int(leaves[0].shape[0])
        # The same split as Keras's `fit`: the first part trains.
        num_examples = int(math.floor(num_examples * (1.0 - validation_split)))
        size = batch_size or 32
        batches = (
            keras.tree.map_structure(
                lambda a: a[i : min(i + size, num_examples)], x
            )
            for i in range(0, num_examples, size)
        )
    elif _is_tf_dataset(x):
        num_examples = _count_dataset(x)
        batches = (_inputs(batch) for batch in x.as_numpy_iterator())
    else:
        raise ValueError(
            "Cannot tell how many examples the training loss averages over "
            f"from {type(x).__name__}: pass `num_train_examples=` to "
            "`compile`."
        )
    units = None if model is None else count_loss_units(model, batches)
    return num_examples if units is None else units


def _inputs(batch):
    # A dataset for `fit` yields `(x, y[, sample_weight])`, or `x` alone.
    return batch[0] if isinstance(batch, tuple) else batch


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
