"""Batches of numpy arrays from anything `model.fit` accepts."""

import itertools

import keras
import numpy as np

from keras_memgeom.src.utils.checks import check_positive_int


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
    return batch[0], batch[1], batch[2] if len(batch) > 2 else None


def _endless(what):
    return ValueError(
        f"{what} may never end: pass `max_examples` to say how many "
        "examples to use."
    )


def _dataset_batches(data, max_examples):
    import tensorflow as tf  # only reached with a tf.data.Dataset

    if (
        max_examples is None
        and data.cardinality() == tf.data.INFINITE_CARDINALITY
    ):
        raise _endless("The tf.data.Dataset has infinite cardinality: it")
    labels = (
        keras.tree.flatten(data.element_spec[1])
        if isinstance(data.element_spec, tuple)
        else []
    )
    if any(spec.shape.rank == 0 for spec in labels):
        raise ValueError(
            "The tf.data.Dataset yields single examples (its labels have "
            "no batch axis): batch it with `.batch(...)` first."
        )
    return (_split(b) for b in data.as_numpy_iterator())


def _py_dataset_batches(data, max_examples):
    if data.num_batches is None:
        if max_examples is None:
            raise _endless(
                "The PyDataset has no length (`num_batches` is None): it"
            )
        return (_split(data[i]) for i in itertools.count())
    return (_split(data[i]) for i in range(data.num_batches))


def iterate_batches(data, batch_size=256, max_examples=None, weights=False):
    """Yields `(x, y)` numpy batches from `data`.

    Data that may never end must come with `max_examples`: a `tf.data`
    dataset of infinite cardinality, a `PyDataset` without `num_batches`,
    and any one-shot iterator (a generator: `iter(data) is data`), whose end
    cannot be known in advance. Containers (lists of batches) need none.

    Args:
        data: a tuple of arrays `(x, y)` or `(x, y, sample_weight)`, a
            `tf.data.Dataset`, a `keras.utils.PyDataset` or an iterable of
            such batches. `x` may be a nested structure.
        batch_size: the batch size used to cut a tuple of arrays; datasets
            keep their own batching.
        max_examples: stop after this many examples (the last batch is cut).
        weights: whether the sample weights are yielded too (`None` for a
            batch without them); without it they are dropped.

    Returns:
        A generator of `(x, y)` (or `(x, y, sample_weight)`) tuples of numpy
        arrays.

    Raises:
        ValueError: if `batch_size` or `max_examples` is not a positive whole
            number, data that may never end comes without `max_examples`, a
            batch has no labels or no batch axis, or `x` and `y` disagree in
            length.

    Example:

    ```python
    import numpy as np

    x, y = np.zeros((10, 3)), np.arange(10)
    print([len(b[1]) for b in iterate_batches((x, y), 4)])  # [4, 4, 2]
    ```
    """
    batch_size = check_positive_int("batch_size", batch_size)
    max_examples = check_positive_int(
        "max_examples", max_examples, allow_none=True
    )
    if isinstance(data, tuple):
        arrays = _split(data)
        if arrays[2] is None:  # keras.tree maps `None` as a leaf
            arrays = arrays[:2]
        arrays = keras.tree.map_structure(_to_numpy, arrays)
        num_x, num_y = _num_rows(arrays[0]), len(arrays[1])
        if num_x != num_y:
            raise ValueError(f"`x` has {num_x} examples but `y` has {num_y}.")
        batches = (
            keras.tree.map_structure(lambda a: a[i : i + batch_size], arrays)
            for i in range(0, num_y, batch_size)
        )
    elif isinstance(data, keras.utils.PyDataset):
        batches = _py_dataset_batches(data, max_examples)
    elif hasattr(data, "as_numpy_iterator"):
        batches = _dataset_batches(data, max_examples)
    else:
        if max_examples is None and iter(data) is data:
            raise _endless(
                f"The data is a one-shot iterator ({type(data).__name__}) that"
            )
        batches = (_split(b) for b in data)
    seen = 0
    for x, y, *w in batches:
        x, y = keras.tree.map_structure(_to_numpy, x), _to_numpy(y)
        w = None if not w or w[0] is None else _to_numpy(w[0])
        if y.ndim == 0 or _num_rows(x) != len(y):
            raise ValueError(
                "A batch has inputs of shape "
                f"{np.shape(keras.tree.flatten(x)[0])} and labels of shape "
                f"{y.shape}, which disagree in their first (batch) axis: is "
                "the data unbatched? Batch a tf.data.Dataset with "
                "`.batch(...)`."
            )
        if max_examples is not None:
            room = max_examples - seen
            if room <= 0:
                return
            x, y = keras.tree.map_structure(lambda a: a[:room], (x, y))
            w = None if w is None else w[:room]
        seen += len(y)
        yield (x, y, w) if weights else (x, y)
