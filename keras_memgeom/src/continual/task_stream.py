"""Sequences of tasks built from one image data set."""

import dataclasses

import numpy as np

from keras_memgeom.src.continual.image_dataset import StreamedImageDataset
from keras_memgeom.src.continual.image_dataset import as_images
from keras_memgeom.src.continual.image_dataset import check_labels
from keras_memgeom.src.utils.checks import check_finite_data
from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.checks import check_positive_int


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: float32 inputs and int32 labels, three splits.

    `x_val`/`y_val` are held out of the training data; they choose
    `strength="auto"` and are never trained on. Inputs keep the shape of
    the data (e.g. `(N, 8, 8, 1)` images).

    `classes` is `None` when the model may predict any output, or the
    output indices of this task's classes (task-incremental learning: the
    task is known, so the logits of other tasks' classes are masked out
    of the loss, the Fisher and the evaluation).

    Args:
        name: the task's name.
        x_train: training inputs.
        y_train: training labels.
        x_val: validation inputs.
        y_val: validation labels.
        x_test: test inputs.
        y_test: test labels.
        classes: `None`, or the output indices of this task's classes.

    Example:

    ```python
    from keras_memgeom import continual

    stream = continual.TaskStream.make("permuted", "digits", num_tasks=2)
    task = stream.tasks[0]
    x, y = task.data("train")
    print(task.num_examples("train") == len(y))  # True
    ```
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple = None

    def data(self, split):
        """The `(x, y)` arrays of `split` (`"train"`, `"val"` or `"test"`)."""
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def num_examples(self, split):
        """The number of examples of `split`."""
        return len(getattr(self, f"y_{split}"))


@dataclasses.dataclass(frozen=True)
class StreamedTask:
    """One task read example by example: three `tf.data` splits.

    What `TaskStream.make` builds from a `StreamedImageDataset`: `train`,
    `val` and `test` are `tf.data.Dataset`s of `(x, y)` examples (unbatched,
    their length known), made from the data set's pipelines by a map (a
    permutation, a rotation) or a filter (a split's classes), so only a
    batch at a time is ever in memory. `classes` is as for `Task`.

    Args:
        name: the task's name.
        train: the training examples.
        val: the validation examples (the first ones of the training
            data, held out).
        test: the test examples.
        classes: `None`, or the output indices of this task's classes.

    Example:

    ```python
    import tensorflow_datasets as tfds

    from keras_memgeom import continual

    with tfds.testing.mock_data(num_examples=40):
        stream = continual.TaskStream.make(
            "permuted", "tfds:mnist", num_tasks=2
        )
        task = stream.tasks[1]
        print(task.num_examples("train"), task.data("test"))
    ```
    """

    name: str
    train: object
    val: object
    test: object
    classes: tuple = None

    def data(self, split):
        """The `tf.data.Dataset` of `(x, y)` examples of `split`."""
        return getattr(self, split)

    def num_examples(self, split):
        """The number of examples of `split`."""
        return int(getattr(self, split).cardinality())


# Examples the training data of a streamed task is shuffled over.
SHUFFLE_BUFFER = 10_000


def num_examples(data):
    """The number of examples of `(x, y)` arrays or a dataset of examples.

    Args:
        data: `(x, y)` arrays, or a `tf.data.Dataset` of `(x, y)` examples
            of known length (a `StreamedTask`'s split).

    Returns:
        The number of examples, an int.
    """
    if isinstance(data, tuple):
        return len(data[1])
    return int(data.cardinality())


def batched(data, batch_size, *, shuffle=False):
    """Batches a dataset of examples for `fit`, `predict` or a Fisher.

    Args:
        data: `(x, y)` arrays (returned as they are: Keras batches them), or
            a `tf.data.Dataset` of `(x, y)` examples.
        batch_size: the batch size.
        shuffle: whether to shuffle the examples, anew every epoch, over a
            buffer of at most `SHUFFLE_BUFFER` examples.

    Returns:
        `data` itself for arrays, else a batched `tf.data.Dataset`.

    Example:

    ```python
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(([[0.0], [1.0]], [0, 1]))
    print(num_examples(data), batched(data, 2).element_spec)
    ```
    """
    if isinstance(data, tuple):
        return data
    import tensorflow as tf

    if shuffle:
        size = min(max(num_examples(data), 1), SHUFFLE_BUFFER)
        data = data.shuffle(size, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """A sequence of classification tasks that share one model.

    Build it with `TaskStream.make` (a scenario applied to an image data
    set), `TaskStream.from_arrays` or `TaskStream.from_datasets` (one task
    per data set of your own). Every task has inputs of the same shape and
    the same number of outputs, so one Keras model with `num_outputs`
    logits learns them all.

    Args:
        scenario: how the tasks were made, e.g. `"permuted"`.
        dataset: name of the data set they come from.
        tasks: the `Task`s, in training order.
        input_shape: the shape of one input, e.g. `(8, 8, 1)`.
        num_outputs: number of classes the model predicts.
        seed: the data seed the tasks were made with, or `None`.

    Example:

    ```python
    from keras_memgeom import continual

    stream = continual.TaskStream.make("permuted", "digits", num_tasks=3)
    print(len(stream.tasks), stream.input_shape, stream.num_outputs)
    # 3 (8, 8, 1) 10
    ```
    """

    scenario: str
    dataset: str
    tasks: tuple
    input_shape: tuple
    num_outputs: int
    seed: object = None

    @property
    def input_dim(self):
        """The number of entries of one input."""
        return int(np.prod(self.input_shape))

    @property
    def task_incremental(self):
        """Whether the tasks restrict the outputs (`Task.classes`)."""
        return any(task.classes is not None for task in self.tasks)

    @classmethod
    def make(
        cls,
        scenario,
        dataset="digits",
        *,
        num_tasks=5,
        split_scenario="task",
        validation_split=0.1,
        max_train_examples=None,
        seed=0,
    ):
        """Makes a task stream from one image data set.

        Scenarios (every one keeps the images' shape):

        - `"permuted"`: every task is the whole data set with a fixed
          random pixel permutation (task 0 keeps the original order);
          the labels stay (domain-incremental).
        - `"rotated"`: task `t` rotates every image by `180 * t /
          num_tasks` degrees (domain-incremental).
        - `"split"`: the classes are dealt in order into `num_tasks`
          groups of equal size, one group per task. `split_scenario`
          says what the model is told: `"task"`: which task an input
          comes from (task-incremental: the logits of the other tasks'
          classes are masked, as with one head per task); `"domain"`:
          nothing, and the model predicts the class within the task;
          `"class"`: nothing, and the model predicts the class among all
          classes (class-incremental).

        Args:
            scenario: one of `"permuted"`, `"split"`, `"rotated"`.
            dataset: an `ImageDataset`, or a name or `.npz` path for
                `ImageDataset.load`.
            num_tasks: number of tasks.
            split_scenario: for `"split"`: `"task"`, `"domain"` or
                `"class"`.
            validation_split: fraction of each task's training examples
                held out as its validation split.
            max_train_examples: if set, use at most this many training
                examples per task (before the validation split).
            seed: the data seed: the data split, permutations and
                validation split.

        Returns:
            A `TaskStream`.

        Raises:
            ValueError: for an unknown scenario or data set, a bad number
                of tasks, a `validation_split` outside `[0, 1)`, or one that
                leaves a task fewer training examples than it has classes,
                or no validation example although `validation_split > 0`.
        """
        # The scenarios build on `Task`: imported here, not at the top.
        from keras_memgeom.src.continual import scenarios

        return cls(
            *scenarios.make_tasks(
                scenario,
                dataset,
                num_tasks=num_tasks,
                split_scenario=split_scenario,
                validation_split=validation_split,
                max_train_examples=max_train_examples,
                seed=seed,
            ),
            seed,
        )

    @classmethod
    def from_arrays(
        cls,
        tasks,
        *,
        test_split=0.2,
        validation_split=0.1,
        name="arrays",
        num_classes=None,
        seed=0,
    ):
        """Makes a task stream from your own arrays, one entry per task.

        A task given as `(x, y)` is shuffled by `seed` and split into
        test (`test_split`), validation (`validation_split` of the rest)
        and training examples; one given as `(x_train, y_train, x_test,
        y_test)` keeps its test split. Inputs keep their shape (images
        `(N, 8, 8, 1)` stay images) and must be finite; labels are class
        indices, and the model predicts `max(label) + 1` classes, or
        `num_classes`. A largest label far above the number of distinct
        labels is taken for a stray one and refused unless `num_classes`
        is given (see `check_labels`).

        Args:
            tasks: a list of `(x, y)` or `(x_train, y_train, x_test,
                y_test)` tuples of arrays.
            test_split: fraction of an `(x, y)` task held out for testing,
                in `(0, 1)`.
            validation_split: fraction of the training examples held out
                as the validation split, in `[0, 1)`.
            name: the data set's name in the results.
            num_classes: `None`, or the number of classes the model
                predicts (every label must be below it).
            seed: the data seed of the shuffles.

        Returns:
            A `TaskStream` with scenario `"custom"`.

        Raises:
            ValueError: naming the task, for inputs and labels of
                different lengths, inputs of another shape than the first
                task's, NaN or infinite inputs, labels that are not
                non-negative integers or a stray label far above the
                others (naming the value and its index), or a split that
                leaves a split empty.
        """
        tasks = list(tasks)
        if not tasks:
            raise ValueError("from_arrays needs at least one task, got none.")
        test_split = check_positive("test_split", test_split, maximum=1.0)
        if test_split == 1.0:
            raise ValueError("`test_split` must be < 1, got 1.0.")
        check_validation_split(validation_split)
        if num_classes is not None:
            num_classes = check_positive_int("num_classes", num_classes)
        rng = np.random.default_rng(seed)
        given = []
        for t, arrays in enumerate(tasks):
            if len(arrays) not in (2, 4):
                raise ValueError(
                    f"Task {t} must be (x, y) or (x_train, y_train, x_test, "
                    f"y_test), got {len(arrays)} arrays."
                )
            given.append(
                [
                    _as_pair(t, i // 2, *arrays[i : i + 2])
                    for i in range(0, len(arrays), 2)
                ]
            )
        # Before any shuffle: the index in the message is the caller's.
        num_outputs = check_labels(
            [
                (f"Task {t}'s {_ARRAY_NAMES[i][1]}", y)
                for t, pairs in enumerate(given)
                for i, (_, y) in enumerate(pairs)
            ],
            num_classes,
        )
        made, shape = [], None
        for t, pairs in enumerate(given):
            pairs = [(x, y.astype("int32")) for x, y in pairs]
            if len(pairs) == 1:
                x, y = pairs[0]
                order = rng.permutation(len(y))
                num_test = int(round(test_split * len(y)))
                pairs = [(x[order[num_test:]], y[order[num_test:]])]
                pairs.append((x[order[:num_test]], y[order[:num_test]]))
            (x, y), test = pairs
            num_val = int(round(validation_split * len(y)))
            arrays = (x[num_val:], y[num_val:], x[:num_val], y[:num_val], *test)
            shape = shape or arrays[0].shape[1:]
            if arrays[0].shape[1:] != shape or test[0].shape[1:] != shape:
                raise ValueError(
                    f"Task {t} has inputs of shape {arrays[0].shape[1:]}, "
                    f"other than task 0's {shape}."
                )
            if not len(test[1]):
                raise ValueError(
                    f"Task {t} has no test example; use a larger test_split."
                )
            made.append(Task(f"{name}-{t}", *arrays))
        check_splits(made, validation_split)
        return cls("custom", name, tuple(made), tuple(shape), num_outputs, seed)

    @classmethod
    def from_datasets(cls, datasets, **kwargs):
        """Makes a task stream from `tf.data` data sets or tfds builders.

        Each entry is one task: a `tf.data.Dataset` of `(x, y)` pairs
        (batched or not), split as `from_arrays` splits `(x, y)`; or a
        tensorflow-datasets builder (`tfds.builder(name)`, prepared), whose
        `train` and `test` splits are read as supervised pairs. Integer
        images are scaled to `[0, 1]`; a missing channel axis is added.

        Args:
            datasets: a list of data sets or builders.
            **kwargs: passed to `from_arrays` (`test_split`,
                `validation_split`, `name`, `seed`).

        Returns:
            A `TaskStream`.

        Raises:
            ValueError: for an entry that is neither, or as `from_arrays`.
        """
        return cls.from_arrays(
            [_dataset_arrays(t, d) for t, d in enumerate(datasets)], **kwargs
        )

    @staticmethod
    def estimate_nbytes(
        dataset,
        scenario,
        num_tasks,
        *,
        split_scenario="task",
        max_train_examples=None,
    ):
        """Bytes of float32 inputs that `make` would hold, before making it.

        Args:
            dataset: an `ImageDataset`, or a `StreamedImageDataset` (whose
                tasks hold no examples: 0 bytes).
            scenario: as for `make`.
            num_tasks: as for `make`.
            split_scenario: as for `make`.
            max_train_examples: as for `make`.

        Returns:
            A dict: `nbytes` (the total), `tasks`, `examples` (train,
            validation and test, per task), `features` (per example).
        """
        if isinstance(dataset, StreamedImageDataset):
            # Streamed tasks hold a batch at a time, not their examples.
            return {
                "nbytes": 0,
                "tasks": num_tasks,
                "examples": 0,
                "features": int(np.prod(dataset.image_shape)),
            }
        train = len(dataset.x_train)
        if max_train_examples is not None:
            train = min(train, max_train_examples)
        examples = train + len(dataset.x_test)
        features = int(np.prod(dataset.image_shape))
        if scenario == "split":
            # Each example lands in one task.
            examples = -(-examples // num_tasks)
        return {
            "nbytes": num_tasks * examples * features * 4,
            "tasks": num_tasks,
            "examples": examples,
            "features": features,
        }


def check_splits(tasks, validation_split):
    """Refuses a validation split that leaves a task unusable."""
    for task in tasks:
        num_classes = len(
            np.unique(np.concatenate([task.y_train, task.y_val, task.y_test]))
        )
        check_counts(
            task.name,
            num_classes,
            len(task.y_train),
            len(task.y_val),
            validation_split,
        )


def check_counts(name, num_classes, num_train, num_val, validation_split):
    """Refuses too few training examples, or no validation example."""
    if num_train < num_classes:
        raise ValueError(
            f"validation_split={validation_split} leaves task {name!r} "
            f"{num_train} training examples ({num_val} held out for "
            f"validation), fewer than its {num_classes} classes; use a "
            "smaller validation_split."
        )
    if validation_split > 0 and not num_val:
        raise ValueError(
            f"validation_split={validation_split} holds out no validation "
            f"example of task {name!r} ({num_train} training examples); use "
            "a larger validation_split, or 0 for none."
        )


def check_validation_split(validation_split):
    """Refuses a `validation_split` outside [0, 1)."""
    if not 0 <= validation_split < 1:
        raise ValueError(
            f"validation_split must be in [0, 1), got {validation_split!r}."
        )


# The names of the arrays of a task given as 2 or 4 arrays, for messages.
_ARRAY_NAMES = (("inputs", "labels"), ("test inputs", "test labels"))


def _as_pair(index, position, x, y):
    """Checks one task's `(x, y)`; returns the inputs as float32."""
    x, y = np.asarray(x), np.asarray(y)
    inputs, labels = _ARRAY_NAMES[position]
    if len(x) != len(y):
        raise ValueError(
            f"Task {index} has {len(x)} {inputs} but {len(y)} {labels}."
        )
    with np.errstate(over="ignore"):  # reported just below, by name
        x = x.astype("float32")
    # After the cast: float64 beyond the float32 range turns infinite too.
    check_finite_data(f"Task {index}'s {inputs}", x)
    return x, y  # the labels are checked with every task's, then cast


def _dataset_arrays(index, data):
    """The arrays of one entry of `from_datasets`."""
    if hasattr(data, "as_dataset") and hasattr(data, "info"):  # A tfds builder.
        return tuple(
            a
            for split in ("train", "test")
            for a in _to_arrays(
                data.as_dataset(split=split, as_supervised=True)
            )
        )
    if hasattr(data, "element_spec"):  # A tf.data.Dataset.
        return _to_arrays(data)
    raise ValueError(
        f"Task {index}: expected a tf.data.Dataset or a tensorflow-datasets "
        f"builder, got {type(data).__name__}."
    )


def _to_arrays(dataset):
    """`(x, y)` numpy arrays of a data set of pairs, batched or not."""
    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    if ys and ys[0].ndim == 0:  # Unbatched: one example per element.
        x, y = np.stack(xs), np.stack(ys)
    else:
        x, y = np.concatenate(xs), np.concatenate(ys)
    return as_images(x), y
