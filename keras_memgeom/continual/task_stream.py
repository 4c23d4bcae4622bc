"""Sequences of tasks built from one image data set."""

import dataclasses

import numpy as np
from scipy import ndimage

from keras_memgeom.continual.image_dataset import ImageDataset

SCENARIOS = ("permuted", "split", "rotated")
SPLIT_SCENARIOS = ("task", "domain", "class")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: flat float32 inputs and int32 labels, three splits.

    `x_val`/`y_val` are held out of the training data; they choose
    `strength="auto"` and are never trained on.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """A sequence of classification tasks that share one model.

    Build it with `TaskStream.make`. Every task has the same input size
    and the same number of outputs, so one plain Keras classifier with
    `num_outputs` logits learns them all.

    Args:
        scenario: how the tasks were made, e.g. `"permuted"`.
        dataset: name of the data set they come from.
        tasks: the `Task`s, in training order.
        input_dim: length of one flat input.
        num_outputs: number of classes the model predicts.
        task_inputs: number of trailing input entries that one-hot encode
            the task (the task-incremental scenario), else 0.

    Example:

    >>> stream = TaskStream.make("permuted", "digits", num_tasks=3)
    >>> len(stream.tasks), stream.input_dim, stream.num_outputs
    (3, 64, 10)
    """

    scenario: str
    dataset: str
    tasks: tuple
    input_dim: int
    num_outputs: int
    task_inputs: int = 0

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
        """Makes a task stream.

        Scenarios:

        - `"permuted"`: every task is the whole data set with a fixed
          random pixel permutation (task 0 keeps the original order);
          the labels stay (domain-incremental).
        - `"rotated"`: task `t` rotates every image by `180 * t /
          num_tasks` degrees (domain-incremental).
        - `"split"`: the classes are dealt in order into `num_tasks`
          groups of equal size, one group per task. `split_scenario`
          says what the model is told: `"task"`: which task an input
          comes from (a one-hot task code appended to the input selects
          the task's head: task-incremental); `"domain"`: nothing, and
          the model predicts the class within the task; `"class"`:
          nothing, and the model predicts the class among all classes
          seen so far (class-incremental).

        Args:
            scenario: one of `"permuted"`, `"split"`, `"rotated"`.
            dataset: an `ImageDataset` or a name for `ImageDataset.load`.
            num_tasks: number of tasks.
            split_scenario: for `"split"`: `"task"`, `"domain"` or
                `"class"`.
            validation_split: fraction of each task's training examples
                held out as its validation split.
            max_train_examples: if set, use at most this many training
                examples per task (before the validation split).
            seed: seeds the data split, permutations and validation split.

        Returns:
            A `TaskStream`.

        Raises:
            ValueError: for an unknown scenario or data set, a bad number
                of tasks, a `validation_split` outside `[0, 1)`, or one that
                leaves a task fewer training examples than it has classes,
                or no validation example although `validation_split > 0`.
        """
        if scenario not in SCENARIOS:
            raise ValueError(
                f"Unknown scenario {scenario!r}. Choose one of: {', '.join(SCENARIOS)}."
            )
        if split_scenario not in SPLIT_SCENARIOS:
            raise ValueError(
                f"Unknown split scenario {split_scenario!r}. Choose one of: "
                f"{', '.join(SPLIT_SCENARIOS)}."
            )
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}.")
        if not isinstance(dataset, ImageDataset):
            dataset = ImageDataset.load(dataset, seed=seed)
        rng = np.random.default_rng(seed)
        x_train, y_train = dataset.x_train, dataset.y_train
        if max_train_examples is not None:
            x_train, y_train = x_train[:max_train_examples], y_train[:max_train_examples]
        num_val = int(round(validation_split * len(x_train)))
        splits = (
            (x_train[num_val:], y_train[num_val:]),
            (x_train[:num_val], y_train[:num_val]),
            (dataset.x_test, dataset.y_test),
        )
        input_dim = int(np.prod(dataset.image_shape))
        if scenario == "split":
            stream = cls._split(dataset, splits, num_tasks, split_scenario, input_dim)
            _check_splits(stream.tasks, validation_split)
            return stream

        tasks = []
        for t in range(num_tasks):
            if scenario == "permuted":
                order = np.arange(input_dim) if t == 0 else rng.permutation(input_dim)
                arrays = [a for x, y in splits for a in (_flat(x)[:, order], y)]
            else:
                angle = 180.0 * t / num_tasks
                arrays = [a for x, y in splits for a in (_flat(_rotate(x, angle)), y)]
            tasks.append(Task(f"{scenario}-{t}", *arrays))
            _check_splits(tasks[-1:], validation_split)
        return cls(scenario, dataset.name, tuple(tasks), input_dim, dataset.num_classes)

    @staticmethod
    def estimate_nbytes(
        dataset, scenario, num_tasks, *, split_scenario="task", max_train_examples=None
    ):
        """Bytes of float32 inputs that `make` would hold, before making it.

        Args:
            dataset: an `ImageDataset`.
            scenario, num_tasks, split_scenario, max_train_examples: as for
                `make`.

        Returns:
            A dict: `nbytes` (the total), `tasks`, `examples` (train,
            validation and test, per task), `features` (per example).
        """
        train = len(dataset.x_train)
        if max_train_examples is not None:
            train = min(train, max_train_examples)
        examples = train + len(dataset.x_test)
        features = int(np.prod(dataset.image_shape))
        tasks = num_tasks
        if scenario == "split":
            # Each example lands in one task; the task code adds columns.
            examples = -(-examples // num_tasks)
            features += num_tasks if split_scenario == "task" else 0
        return {
            "nbytes": tasks * examples * features * 4,
            "tasks": tasks,
            "examples": examples,
            "features": features,
        }

    @classmethod
    def _split(cls, dataset, splits, num_tasks, split_scenario, input_dim):
        per_task, leftover = divmod(dataset.num_classes, num_tasks)
        if leftover or per_task < 1:
            raise ValueError(
                f"A split of {dataset.name!r} needs a number of tasks that "
                f"divides its {dataset.num_classes} classes, got {num_tasks}."
            )
        tasks = []
        for t in range(num_tasks):
            first = t * per_task
            arrays = []
            for x, y in splits:
                keep = (y >= first) & (y < first + per_task)
                x, y = _flat(x[keep]), y[keep]
                if split_scenario == "task":
                    code = np.zeros((len(x), num_tasks), "float32")
                    code[:, t] = 1.0
                    x = np.concatenate([x, code], axis=1)
                if split_scenario != "class":
                    y = y - first
                arrays += [x, y]
            tasks.append(Task(f"split-{split_scenario}-{t}", *arrays))
        task_inputs = num_tasks if split_scenario == "task" else 0
        num_outputs = dataset.num_classes if split_scenario == "class" else per_task
        return cls(
            f"split-{split_scenario}",
            dataset.name,
            tuple(tasks),
            input_dim + task_inputs,
            num_outputs,
            task_inputs,
        )


def _check_splits(tasks, validation_split):
    """Refuses a validation split that leaves a task unusable."""
    for task in tasks:
        num_classes = len(np.unique(np.concatenate([task.y_train, task.y_val, task.y_test])))
        if len(task.y_train) < num_classes:
            raise ValueError(
                f"validation_split={validation_split} leaves task {task.name!r} "
                f"{len(task.y_train)} training examples ({len(task.y_val)} held out for "
                f"validation), fewer than its {num_classes} classes; use a smaller "
                "validation_split."
            )
        if validation_split > 0 and not len(task.y_val):
            raise ValueError(
                f"validation_split={validation_split} holds out no validation example of "
                f"task {task.name!r} ({len(task.y_train)} training examples); use a "
                "larger validation_split, or 0 for none."
            )


def _flat(images):
    return images.reshape(len(images), int(np.prod(images.shape[1:])))


def _rotate(images, angle):
    return ndimage.rotate(images, angle, axes=(1, 2), reshape=False, order=1)
