"""The scenarios of `TaskStream.make`: tasks made from one image data set.

- `"permuted"`: every task is the whole data set with a fixed random
  pixel permutation (task 0 keeps the original order); the labels stay
  (domain-incremental).
- `"rotated"`: task `t` rotates every image by `180 * t / num_tasks`
  degrees (domain-incremental).
- `"split"`: the classes are dealt in order into `num_tasks` groups of
  equal size, one group per task; `SPLIT_SCENARIOS` says what the model is
  told (`"task"`, `"domain"` or `"class"`-incremental).

Each scenario is made from arrays (`ImageDataset`) or, example by example,
from `tf.data` pipelines (`StreamedImageDataset`).
"""

import numpy as np
from scipy import ndimage

from keras_memgeom.src.continual.image_dataset import ImageDataset
from keras_memgeom.src.continual.image_dataset import StreamedImageDataset
from keras_memgeom.src.continual.task_stream import StreamedTask
from keras_memgeom.src.continual.task_stream import Task
from keras_memgeom.src.continual.task_stream import check_counts
from keras_memgeom.src.continual.task_stream import check_splits
from keras_memgeom.src.continual.task_stream import check_validation_split

SCENARIOS = ("permuted", "split", "rotated")
SPLIT_SCENARIOS = ("task", "domain", "class")


def make_tasks(
    scenario,
    dataset,
    *,
    num_tasks,
    split_scenario,
    validation_split,
    max_train_examples,
    seed,
):
    """The tasks of a scenario, as `TaskStream.make` describes them.

    Args:
        scenario, dataset, num_tasks, split_scenario, validation_split,
            max_train_examples, seed: as for `TaskStream.make`.

    Returns:
        `(scenario name, data set name, tasks, input shape, num_outputs)`,
        the fields of a `TaskStream` but its seed.

    Raises:
        ValueError: as `TaskStream.make`.
    """
    if scenario not in SCENARIOS:
        raise ValueError(
            f"Unknown scenario {scenario!r}. Choose one of: "
            f"{', '.join(SCENARIOS)}."
        )
    if split_scenario not in SPLIT_SCENARIOS:
        raise ValueError(
            f"Unknown split scenario {split_scenario!r}. Choose one of: "
            f"{', '.join(SPLIT_SCENARIOS)}."
        )
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(
            f"num_tasks must be a positive int, got {num_tasks!r}."
        )
    check_validation_split(validation_split)
    if not isinstance(dataset, (ImageDataset, StreamedImageDataset)):
        dataset = ImageDataset.load(dataset, seed=seed)
    if isinstance(dataset, StreamedImageDataset):
        return _make_streamed(
            scenario,
            dataset,
            num_tasks,
            split_scenario,
            validation_split,
            max_train_examples,
            seed,
        )
    rng = np.random.default_rng(seed)
    x_train, y_train = dataset.x_train, dataset.y_train
    if max_train_examples is not None:
        x_train, y_train = (
            x_train[:max_train_examples],
            y_train[:max_train_examples],
        )
    num_val = int(round(validation_split * len(x_train)))
    splits = (
        (x_train[num_val:], y_train[num_val:]),
        (x_train[:num_val], y_train[:num_val]),
        (dataset.x_test, dataset.y_test),
    )
    shape = tuple(dataset.image_shape)
    if scenario == "split":
        made = _split(dataset, splits, num_tasks, split_scenario)
        check_splits(made[2], validation_split)
        return made

    tasks = []
    for t in range(num_tasks):
        if scenario == "permuted":
            size = int(np.prod(shape))
            order = np.arange(size) if t == 0 else rng.permutation(size)
            arrays = [a for x, y in splits for a in (_permute(x, order), y)]
        else:
            angle = 180.0 * t / num_tasks
            arrays = [a for x, y in splits for a in (_rotate(x, angle), y)]
        tasks.append(Task(f"{scenario}-{t}", *arrays))
        check_splits(tasks[-1:], validation_split)
    return scenario, dataset.name, tuple(tasks), shape, dataset.num_classes


def _classes_per_task(dataset, num_tasks):
    """Classes per task of a split; refuses a split that leaves some over."""
    per_task, leftover = divmod(dataset.num_classes, num_tasks)
    if leftover or per_task < 1:
        raise ValueError(
            f"A split of {dataset.name!r} needs a number of tasks that "
            f"divides its {dataset.num_classes} classes, got {num_tasks}."
        )
    return per_task


def _split(dataset, splits, num_tasks, split_scenario):
    """The array tasks of `"split"`: one group of classes per task."""
    per_task = _classes_per_task(dataset, num_tasks)
    tasks = []
    for t in range(num_tasks):
        first = t * per_task
        arrays = []
        for x, y in splits:
            keep = (y >= first) & (y < first + per_task)
            y = y[keep]
            arrays += [
                x[keep],
                y - first if split_scenario == "domain" else y,
            ]
        classes = (
            tuple(range(first, first + per_task))
            if split_scenario == "task"
            else None
        )
        tasks.append(
            Task(f"split-{split_scenario}-{t}", *arrays, classes=classes)
        )
    num_outputs = (
        per_task if split_scenario == "domain" else dataset.num_classes
    )
    return (
        f"split-{split_scenario}",
        dataset.name,
        tuple(tasks),
        tuple(dataset.image_shape),
        num_outputs,
    )


def _permute(images, order):
    """Permutes the entries of every example, keeping its shape."""
    flat = images.reshape(len(images), len(order))[:, order]
    return flat.reshape(images.shape)


def _rotate(images, angle):
    return ndimage.rotate(images, angle, axes=(1, 2), reshape=False, order=1)


def _label_counts(dataset, num_classes, first=None):
    """Examples per class of a dataset of examples, in one streamed pass.

    With `first`, the counts of the first `first` examples and of the rest.
    """
    import tensorflow as tf

    counts = np.zeros((2, num_classes), "int64")
    seen = 0
    labels = dataset.map(lambda x, y: y, num_parallel_calls=tf.data.AUTOTUNE)
    for batch in labels.batch(4096).as_numpy_iterator():
        cut = len(batch)
        if first is not None:
            cut = min(max(first - seen, 0), len(batch))
        if np.any((batch < 0) | (batch >= num_classes)):
            raise ValueError(
                f"The labels must be class indices in [0, {num_classes}); "
                f"got {batch[(batch < 0) | (batch >= num_classes)][0]}."
            )
        counts[0] += np.bincount(batch[:cut], minlength=num_classes)
        counts[1] += np.bincount(batch[cut:], minlength=num_classes)
        seen += len(batch)
    return counts if first is not None else counts[0]


def _make_streamed(
    scenario,
    dataset,
    num_tasks,
    split_scenario,
    validation_split,
    max_train_examples,
    seed,
):
    """`make_tasks` for a `StreamedImageDataset`: tasks of pipelines."""
    import tensorflow as tf

    train = dataset.train
    if max_train_examples is not None:
        train = train.take(max_train_examples)
    classes = dataset.num_classes
    total = int(train.cardinality())
    if total < 0:  # Unknown: counted in a pass over the labels.
        total = int(_label_counts(train, classes).sum())
    num_val = int(round(validation_split * total))
    # What each split holds, in one pass over its labels.
    val_counts, train_counts = _label_counts(train, classes, first=num_val)
    splits = (
        (train.skip(num_val), train_counts),
        (train.take(num_val), val_counts),
        (dataset.test, _label_counts(dataset.test, classes)),
    )
    shape = tuple(dataset.image_shape)

    def task(name, transform=None, keep=(0, classes), shift=0, labels=None):
        low, high = keep
        made, sizes, present = [], [], np.zeros(high - low, bool)
        for data, counts in splits:
            if keep != (0, classes):
                data = data.filter(lambda x, y: (y >= low) & (y < high))
            if transform is not None or shift:
                data = data.map(
                    lambda x, y: (
                        x if transform is None else transform(x),
                        y - shift,
                    ),
                    num_parallel_calls=tf.data.AUTOTUNE,
                )
            sizes.append(int(counts[low:high].sum()))
            present |= counts[low:high] > 0
            made.append(
                data.apply(tf.data.experimental.assert_cardinality(sizes[-1]))
            )
        check_counts(
            name,
            int(present.sum()),
            sizes[0],
            sizes[1],
            validation_split,
        )
        return StreamedTask(name, *made, classes=labels)

    tasks = []
    rng = np.random.default_rng(seed)
    if scenario == "split":
        per_task = _classes_per_task(dataset, num_tasks)
        for t in range(num_tasks):
            first = t * per_task
            tasks.append(
                task(
                    f"split-{split_scenario}-{t}",
                    keep=(first, first + per_task),
                    shift=first if split_scenario == "domain" else 0,
                    labels=(
                        tuple(range(first, first + per_task))
                        if split_scenario == "task"
                        else None
                    ),
                )
            )
        num_outputs = per_task if split_scenario == "domain" else classes
        return (
            f"split-{split_scenario}",
            dataset.name,
            tuple(tasks),
            shape,
            num_outputs,
        )
    size = int(np.prod(shape))
    for t in range(num_tasks):
        if scenario == "permuted":
            order = np.arange(size) if t == 0 else rng.permutation(size)
            transform = _permutation(order, shape)
        else:
            transform = _rotation(180.0 * t / num_tasks, shape)
        tasks.append(task(f"{scenario}-{t}", transform))
    return scenario, dataset.name, tuple(tasks), shape, classes


def _permutation(order, shape):
    import tensorflow as tf

    order = tf.constant(order, "int32")
    return lambda x: tf.reshape(tf.gather(tf.reshape(x, [-1]), order), shape)


def _rotation(angle, shape):
    import tensorflow as tf

    def rotate(x):
        rotated = tf.numpy_function(
            lambda image: _rotate(image[None], angle)[0].astype("float32"),
            [x],
            tf.float32,
        )
        return tf.ensure_shape(rotated, shape)

    return rotate
