"""Trains continual-learning methods on a task stream and measures them."""

import json
import time

import keras
import numpy as np

from keras_memgeom.continual import metrics, results
from keras_memgeom.continual.strategy import TaskContext
from keras_memgeom.utils.checks import check_number

DEFAULT_STRENGTH_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


class Harness:
    """Trains methods on a `TaskStream` and measures how they remember.

    Every method starts from the same initial weights (the seed is reset
    before each run). For each task the strategy compiles the model with
    a fresh Adam optimizer and sparse cross-entropy on logits, its
    `before_task` hook runs, the model is fit on `strategy.training_data`
    with `strategy.callbacks`, `after_task` runs, and the model is tested
    on the test split of every task. A strategy with `strength="auto"` is trained once per strength
    of `strength_grid` for each task after the first; the weights with the
    best mean accuracy on the validation splits of the tasks seen so far
    are kept.

    Args:
        stream: the `TaskStream` to learn.
        width: hidden width of the default model.
        epochs: epochs per task.
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        strength_grid: strengths tried by `strength="auto"`.
        prior_precision: prior precision for the effective dimension of
            the memory (see `FisherMemory.effective_dimension`).
        seed: random seed of the weights and the training order.
        progress: a callable taking one line of progress text, or `None`
            to be silent.

    Example:

    ```python
    stream = TaskStream.make("permuted", "digits", num_tasks=5)
    harness = Harness(stream, epochs=10)
    document = harness.compare([Finetune(), Online(strength=100), Joint()])
    print(document["methods"]["online"]["average_accuracy"])
    ```
    """

    def __init__(
        self,
        stream,
        *,
        width=400,
        epochs=10,
        batch_size=32,
        learning_rate=1e-3,
        strength_grid=DEFAULT_STRENGTH_GRID,
        prior_precision=1.0,
        seed=0,
        progress=None,
    ):
        for name, value in (("width", width), ("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not strength_grid:
            raise ValueError(f"strength_grid must hold positive numbers, got {strength_grid!r}.")
        self.stream = stream
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = check_number(
            "learning_rate", learning_rate, minimum=0.0, inclusive_minimum=False
        )
        self.strength_grid = tuple(
            check_number("strength_grid", s, minimum=0.0, inclusive_minimum=False)
            for s in strength_grid
        )
        self.prior_precision = check_number(
            "prior_precision", prior_precision, minimum=0.0, inclusive_minimum=False
        )
        self.seed = seed
        self.progress = progress

    def get_config(self):
        """The settings, as saved in the results."""
        return {
            "scenario": self.stream.scenario,
            "dataset": self.stream.dataset,
            "num_tasks": len(self.stream.tasks),
            "width": self.width,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "strength_grid": list(self.strength_grid),
            "prior_precision": self.prior_precision,
        }

    def compare(self, strategies, *, previous=None, on_update=None):
        """Runs several methods and gathers a results document.

        Args:
            strategies: `Strategy` instances with distinct names.
            previous: `None`, or the results document of an earlier,
                interrupted comparison with the same settings: its
                complete methods are kept, not run again; a method it
                left unfinished is run again from its first task (see
                docs/harness.md).
            on_update: `None`, or a callable that gets the results so far,
                a valid document with `"complete": False` until the end,
                after every task of every method (e.g. to save them).

        Returns:
            A dict following `results.RESULTS_SCHEMA`.

        Raises:
            ValueError: see `check`; if `previous` was made with other
                settings.
        """
        self.check(strategies)
        runs = self._kept_runs(previous, strategies)
        for strategy in strategies:
            if strategy.name in runs:
                continue

            def on_task(run, name=strategy.name):
                runs[name] = run
                if on_update is not None:
                    on_update(self.document(strategies, runs))

            self.run(strategy, on_task=on_task)
        return self.document(strategies, runs)

    def document(self, strategies, runs):
        """The results document of `strategies`, given the runs done so far.

        Args:
            strategies: the strategies compared, in order.
            runs: method name -> its entry (complete or not), from `run`.

        Returns:
            A dict following `results.RESULTS_SCHEMA`; `"complete"` says
            whether every strategy has finished every task.
        """
        config = {**self.get_config(), "methods": [s.name for s in strategies]}
        ordered = {s.name: runs[s.name] for s in strategies if s.name in runs}
        return results.make_document(config, self.seed, ordered)

    def _kept_runs(self, previous, strategies):
        """The complete runs of `previous` that `strategies` would repeat."""
        if previous is None:
            return {}
        results.validate_results(previous)
        config, stored = _as_json(self.get_config()), previous["config"]
        changed = [
            f"{key} {stored.get(key)!r} (now {value!r})"
            for key, value in {**config, "seed": self.seed}.items()
            if (previous["seed"] if key == "seed" else stored.get(key)) != value
        ]
        if changed:
            raise ValueError(
                f"The previous results were made with other settings: {', '.join(changed)}."
            )
        kept = {}
        for strategy in strategies:
            run = previous["methods"].get(strategy.name)
            if run is None or run.get("tasks_done", config["num_tasks"]) < config["num_tasks"]:
                continue
            if run["config"] != _as_json(strategy.get_config()):
                raise ValueError(
                    f"{strategy.name}: the previous results were made with "
                    f"{run['config']}, not {strategy.get_config()}."
                )
            kept[strategy.name] = run
        return kept

    def check(self, strategies):
        """Checks that the strategies can run here, before any training.

        Raises:
            ValueError: if two strategies share a name, or one has
                `strength="auto"` and the stream has no validation splits.
        """
        names = [s.name for s in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"Each method may appear once, got {names}.")
        for strategy in strategies:
            if strategy.strength == "auto" and not all(len(t.y_val) for t in self.stream.tasks):
                raise ValueError(
                    f"{strategy.name}: strength 'auto' needs validation splits; "
                    "make the stream with validation_split > 0."
                )

    def run(self, strategy, *, on_task=None):
        """Trains one method on the whole stream.

        Args:
            strategy: a fresh `Strategy`.
            on_task: `None`, or a callable that gets the method's entry so
                far (`tasks_done` tasks, `accuracy_matrix` with one row per
                finished task) after every task.

        Returns:
            A dict: the method's entry of the results document (its
            config, accuracy matrix, metrics, chosen strength, effective
            dimension and wall time per task).

        Raises:
            ValueError: for `strength="auto"` on a stream without
                validation splits.
        """
        self.check([strategy])
        tasks = self.stream.tasks
        keras.utils.set_random_seed(self.seed)
        model = strategy.build_model(self.stream, width=self.width)
        initial = [self._accuracy(model, t.x_test, t.y_test) for t in tasks]
        matrix = np.zeros((len(tasks), len(tasks)))
        strengths, dimensions, wall_times = [], [], []
        for index in range(len(tasks)):
            start = time.perf_counter()
            remembers = strategy.memory is not None
            context = self._train_task(model, strategy, index)
            strategy.after_task(model, context)
            wall_times.append(time.perf_counter() - start)
            strengths.append(context.strength if remembers else None)
            matrix[index] = [self._accuracy(model, t.x_test, t.y_test) for t in tasks]
            memory = strategy.memory
            dimensions.append(
                None
                if memory is None
                else float(memory.effective_dimension(self.prior_precision)[0])
            )
            self._report(
                f"{strategy.name}: task {index + 1}/{len(tasks)} done, mean accuracy "
                f"on tasks so far {matrix[index, : index + 1].mean():.3f}"
            )
            entry = {
                "method": strategy.name,
                "config": strategy.get_config(),
                "tasks_done": index + 1,
                "accuracy_matrix": matrix[: index + 1].tolist(),
                "initial_accuracy": initial,
                "strength": list(strengths),
                "effective_dimension": list(dimensions),
                "wall_time_per_task": list(wall_times),
                "wall_time": float(sum(wall_times)),
            }
            if index + 1 == len(tasks):
                entry.update(metrics.summarize(matrix, initial))
            if on_task is not None:
                on_task(entry)
        return entry

    def _train_task(self, model, strategy, index):
        """Fits one task; returns its context, with the strength used."""
        strength = strategy.strength
        if strength != "auto" or strategy.memory is None:
            context = TaskContext(self.stream, index, None if strength == "auto" else strength)
            self._fit(model, strategy, context)
            return context
        start = model.get_weights()
        best = None
        for candidate in self.strength_grid:
            model.set_weights(start)
            context = TaskContext(self.stream, index, candidate)
            self._fit(model, strategy, context)
            seen = self.stream.tasks[: index + 1]
            score = np.mean([self._accuracy(model, t.x_val, t.y_val) for t in seen])
            self._report(
                f"{strategy.name}: strength {candidate:g}: validation accuracy {score:.3f}"
            )
            if best is None or score > best[0]:
                best = (score, context, model.get_weights())
        model.set_weights(best[2])
        return best[1]

    def _fit(self, model, strategy, context):
        strategy.compile(
            model,
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        strategy.before_task(model, context)
        x, y = strategy.training_data(context)
        callbacks = list(strategy.callbacks(context))
        if self.progress:
            callbacks.append(_Progress(self.progress, strategy, context, self.epochs))
        model.fit(
            x,
            y,
            batch_size=self.batch_size,
            epochs=self.epochs,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )

    def _accuracy(self, model, x, y):
        if not len(y):
            raise ValueError("Cannot measure accuracy on an empty split.")
        logits = model.predict(x, batch_size=1024, verbose=0)
        return float(np.mean(np.argmax(logits, axis=-1) == y))

    def _report(self, message):
        if self.progress:
            self.progress(message)


def _as_json(value):
    # What a value reads back as from a results file (tuples become lists).
    return json.loads(json.dumps(value))


class _Progress(keras.callbacks.Callback):
    """Reports task, method and epoch at the end of every epoch."""

    def __init__(self, report, strategy, context, epochs):
        super().__init__()
        self.report = report
        self.epochs = epochs
        self.prefix = f"{strategy.name}: task {context.index + 1}/{len(context.stream.tasks)}"
        if context.strength is not None and strategy.strength == "auto":
            self.prefix += f" (strength {context.strength:g})"

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss", float("nan"))
        self.report(f"{self.prefix} epoch {epoch + 1}/{self.epochs} loss {loss:.4f}")
