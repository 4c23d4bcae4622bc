"""Batches of numpy arrays from anything `model.fit` accepts."""

import keras
import numpy as np


def _to_numpy(value):
    if hasattr(value, "detach"):  # torch tensors, whatever the Keras backend
        value = value.detach().cpu()
    return np.asarray(value)


def _num_rows(x):
    return len(keras.tree.flatten(x)[0])


def _split(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            "Each batch must be an `(x, y)` or `(x, y, sample_weight)` tuple; "
            f"got {type(batch).__name__}. A Fisher memory needs labels (or "
            "targets) alongside the inputs."
        )
    return batch[0], batch[1]


def iterate_batches(data, batch_size=256, max_examples=None):
    """Yields `(x, y)` numpy batches from `data`.

    Args:
        data: a tuple of arrays `(x, y)` (optionally with sample weights, which
            are ignored), a `tf.data.Dataset`, a `keras.utils.PyDataset` or an
            iterable of `(x, y)` batches. `x` may be a nested structure.
        batch_size: the batch size used to cut a tuple of arrays; datasets
            keep their own batching.
        max_examples: stop after this many examples (the last batch is cut).

    Returns:
        A generator of `(x, y)` tuples of numpy arrays.

    Raises:
        ValueError: if a batch has no labels or `x` and `y` disagree in length.
    """
    if isinstance(data, tuple):
        arrays = keras.tree.map_structure(_to_numpy, _split(data))
        num_x, num_y = _num_rows(arrays[0]), len(arrays[1])
        if num_x != num_y:
            raise ValueError(f"`x` has {num_x} examples but `y` has {num_y}.")
        batches = (
            keras.tree.map_structure(lambda a: a[i : i + batch_size], arrays)
            for i in range(0, num_y, batch_size)
        )
    elif isinstance(data, keras.utils.PyDataset):
        batches = (_split(data[i]) for i in range(data.num_batches))
    elif hasattr(data, "as_numpy_iterator"):
        batches = (_split(b) for b in data.as_numpy_iterator())
    else:
        batches = (_split(b) for b in data)
    seen = 0
    for x, y in batches:
        x, y = keras.tree.map_structure(_to_numpy, x), _to_numpy(y)
        if max_examples is not None:
            room = max_examples - seen
            if room <= 0:
                return
            x, y = keras.tree.map_structure(lambda a: a[:room], (x, y))
        seen += len(y)
        yield x, y

