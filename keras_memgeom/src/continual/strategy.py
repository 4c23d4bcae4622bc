"""The base class of continual-learning methods, and their registry."""

import dataclasses

import keras

from keras_memgeom.src.continual.classifier import classifier
from keras_memgeom.src.continual.masked_logits import masked_model

_STRATEGIES = {}


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What a strategy hook knows about the task at hand.

    Args:
        stream: the `TaskStream` being learned.
        index: index of the current task.
        strength: penalty strength to use for this task: the strategy's own
            number, or the one `Harness` is trying for `strength="auto"`;
            `None` for strategies without a strength.
        loss: the loss the model is trained with (before any masking), or
            `None` for sparse cross-entropy on logits.

    Example:

    ```python
    import keras_memgeom


    class Announce(keras_memgeom.continual.Strategy):
        # Fine-tuning that prints which task it starts.

        name = "announce"

        def before_task(self, model, context):
            print(f"task {context.index + 1} of {len(context.stream.tasks)}")
    ```
    """

    stream: object
    index: int
    strength: object = None
    loss: object = None

    @property
    def task(self):
        """The current `Task`."""
        return self.stream.tasks[self.index]

    def fisher_model(self, model):
        """The model whose Fisher remembers the current task.

        `model` itself, or for a task-incremental task (`task.classes`)
        a model sharing its variables with the other classes' logits
        masked, compiled with the task's loss: its Fisher is that of the
        task's own head.
        """
        if self.task.classes is None:
            return model
        masked = masked_model(model, self.task.classes, self.stream.num_outputs)
        loss = self.loss or keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )
        masked.compile(loss=loss)
        return masked


def register_strategy(cls):
    """Class decorator: makes a `Strategy` subclass available by its `name`.

    Args:
        cls: a `Strategy` subclass with a unique `name`.

    Returns:
        `cls` itself, registered.

    Raises:
        ValueError: if the class has no `name` or the name is taken.

    Example:

    ```python
    import keras_memgeom


    @keras_memgeom.continual.register_strategy
    class Plain(keras_memgeom.continual.Strategy):
        # Fine-tuning under another name.

        name = "plain"


    print(keras_memgeom.continual.get_strategy("plain").name)  # plain
    ```
    """
    if not cls.name or cls.name in _STRATEGIES:
        raise ValueError(
            f"Strategy name {cls.name!r} is empty or already taken."
        )
    _STRATEGIES[cls.name] = cls
    return cls


def available_strategies():
    """Names of the registered strategies, sorted.

    Returns:
        A sorted list of strings.

    Example:

    ```python
    import keras_memgeom

    print(keras_memgeom.continual.available_strategies())
    # ['ewc', 'finetune', 'frontal-lobe', 'joint', 'online', 'online-ewc']
    ```
    """
    return sorted(_STRATEGIES)


def get_strategy_class(name):
    """The registered `Strategy` subclass of that name.

    Args:
        name: a name from `available_strategies()`, e.g. `"online"`.

    Returns:
        The `Strategy` subclass.

    Raises:
        ValueError: if no strategy has that name.

    Example:

    ```python
    import keras_memgeom

    cls = keras_memgeom.continual.get_strategy_class("online")
    print(cls is keras_memgeom.continual.Online)  # True
    ```
    """
    if name not in _STRATEGIES:
        raise ValueError(
            f"Unknown method {name!r}. Choose from: "
            f"{', '.join(available_strategies())}."
        )
    return _STRATEGIES[name]


def get_strategy(name, **kwargs):
    """Makes a registered strategy by name.

    Args:
        name: a name from `available_strategies()`, e.g. `"online"`.
        **kwargs: passed to the strategy's constructor.

    Returns:
        A `Strategy`.

    Raises:
        ValueError: if no strategy has that name.

    Example:

    ```python
    import keras_memgeom

    strategy = keras_memgeom.continual.get_strategy("online", strength=10)
    print(type(strategy).__name__, strategy.strength)  # Online 10.0
    ```
    """
    return get_strategy_class(name)(**kwargs)


class Strategy:
    """Base class of continual-learning methods.

    `Harness` trains one model on a `TaskStream`, one task after another.
    For each task it calls `compile` with a fresh optimizer, then
    `before_task`, fits on `training_data` with `callbacks`, and calls
    `after_task`. A method overrides the hooks it needs (and `build_model`
    if it needs another model) and is registered with
    `@register_strategy`. The default is plain fine-tuning.

    Class attributes:
        name: the name the method is registered and reported under.
        strength: penalty strength (a number or `"auto"`), or `None` for
            methods without one.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)


    @keras_memgeom.continual.register_strategy
    class Replay(keras_memgeom.continual.Strategy):
        # The current task and 100 examples of each earlier one.

        name = "replay"

        def training_data(self, context):
            tasks = context.stream.tasks[: context.index + 1]
            x = np.concatenate(
                [t.x_train[:100] for t in tasks[:-1]] + [tasks[-1].x_train]
            )
            y = np.concatenate(
                [t.y_train[:100] for t in tasks[:-1]] + [tasks[-1].y_train]
            )
            return x, y


    run = harness.run(Replay())
    ```
    """

    name = None
    strength = None

    def build_model(self, stream, *, width):
        """Builds the uncompiled model for `stream`.

        Args:
            stream: the `TaskStream`.
            width: width of the hidden layers.

        Returns:
            The default `classifier(stream, width=width)`.
        """
        return classifier(stream, width=width)

    def check(self, *, epochs):
        """Refuses harness settings the method cannot run with.

        Called by `Harness.check` before any training; the default accepts
        everything.

        Args:
            epochs: the harness's epochs per task.

        Raises:
            ValueError: naming the setting, if the method cannot run.
        """

    def compile(self, model, *, optimizer, loss):
        """Compiles the model for a task; called before every task.

        Args:
            model: the model.
            optimizer: a fresh optimizer for this task.
            loss: the loss (sparse cross-entropy on logits).
        """
        model.compile(optimizer=optimizer, loss=loss)

    def callbacks(self, context):
        """Returns extra Keras callbacks for fitting the current task."""
        return []

    def training_data(self, context):
        """Returns the `(x, y)` arrays to fit on for the current task.

        For a streamed task (`StreamedTask`), a `tf.data.Dataset` of its
        `(x, y)` examples instead: the harness batches and shuffles it.
        """
        return context.task.data("train")

    def before_task(self, model, context):
        """Called after the model is compiled for a task, before fitting."""

    def after_task(self, model, context):
        """Called after fitting a task, before the model is evaluated."""

    @property
    def memory(self):
        """The memory the method holds now, or `None`.

        The harness reports its effective dimension after every task.
        """
        return None

    def get_config(self):
        """The method's settings, as saved in the results."""
        return {"name": self.name}

    def __repr__(self):
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if k != "name"
        )
        return f"{type(self).__name__}({args})"
