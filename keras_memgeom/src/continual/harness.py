"""Trains continual-learning methods on a task stream and measures them."""

import copy
import inspect
import json
import time
import warnings
import weakref

import keras
import numpy as np

from keras_memgeom.src.continual import metrics
from keras_memgeom.src.continual import results
from keras_memgeom.src.continual.masked_logits import MaskedLoss
from keras_memgeom.src.continual.strategy import Strategy
from keras_memgeom.src.continual.strategy import TaskContext
from keras_memgeom.src.continual.task_stream import batched
from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.clone_model import clone_model

DEFAULT_STRENGTH_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


class Harness:
    """Trains methods on a `TaskStream` and measures how they remember.

    The model is the default MLP (`classifier`), or yours: a Keras model
    (cloned with `keras.models.clone_model` for every run) or a
    zero-argument function that builds one, mapping the stream's inputs
    to its `num_outputs` logits. Every method starts from the same
    initial weights: the init seed (`seed`) is set before the model is
    built or cloned. The data seed is the stream's own. For each task the
    strategy compiles the model with a fresh optimizer and the loss of
    `compile` (default: Adam and sparse cross-entropy on logits; for a
    task-incremental stream the logits of other tasks' classes are
    masked in the loss and the evaluation, see `MaskedLogits`), its
    `before_task` hook runs, the model is fit on `strategy.training_data`
    with `strategy.callbacks`, `after_task` runs, and the model is tested
    on the test split of every task. A strategy with `strength="auto"` is
    trained once per strength of `strength_grid` for each task after the first;
    the weights with the best mean accuracy on the validation splits of the
    tasks seen so far are kept. A strategy with `strength="sweep"` is run once
    per strength of `strength_grid` by `compare`.

    Args:
        stream: the `TaskStream` to learn.
        model: `None` for the default MLP, a Keras model, or a
            zero-argument callable returning a new one.
        compile: `None`, a dict with `optimizer` and/or `loss` (an
            optimizer instance is copied from its config for every task),
            or a zero-argument callable returning such a dict.
        width: hidden width of the default model.
        epochs: epochs per task.
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        strength_grid: strengths tried by `strength="auto"`.
        prior_precision: prior precision for the effective dimension of
            the memory (see `FisherMemory.effective_dimension`).
        seed: the init seed: random seed of the weights and the training
            order.
        repeats: runs of every method, with init seeds `seed`, `seed + 1`,
            ...; the results then hold their mean and spread.
        progress: a callable taking one line of progress text, or `None`
            to be silent.
        progress_bar: whether to show a `keras.utils.Progbar` over the
            tasks of every run.

    Raises:
        ValueError: naming the argument, for bad settings.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=5
    )
    harness = keras_memgeom.continual.Harness(stream, epochs=10)
    document = harness.compare(
        [
            keras_memgeom.continual.Finetune(),
            keras_memgeom.continual.Online(strength=100),
            keras_memgeom.continual.Joint(),
        ]
    )
    print(keras_memgeom.continual.format_table(document))
    ```
    """

    def __init__(
        self,
        stream,
        *,
        model=None,
        compile=None,
        width=400,
        epochs=10,
        batch_size=32,
        learning_rate=1e-3,
        strength_grid=DEFAULT_STRENGTH_GRID,
        prior_precision=1.0,
        seed=0,
        repeats=1,
        progress=None,
        progress_bar=False,
    ):
        for name, value in (
            ("width", width),
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("repeats", repeats),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int, got {value!r}."
                )
        if not strength_grid:
            raise ValueError(
                "strength_grid must hold positive numbers, got "
                f"{strength_grid!r}."
            )
        self.stream = stream
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.strength_grid = tuple(
            check_positive("strength_grid", s) for s in strength_grid
        )
        self.prior_precision = check_positive(
            "prior_precision", prior_precision
        )
        if not (
            model is None or isinstance(model, keras.Model) or callable(model)
        ):
            raise ValueError(
                "model must be a Keras model or a function that builds one, "
                f"got {model!r}."
            )
        if not (
            compile is None or isinstance(compile, dict) or callable(compile)
        ):
            raise ValueError(
                f"compile must be a dict or a callable, got {compile!r}."
            )
        self.model = model
        self.compile_hook = compile
        self._last_model = None  # the model function's latest, weakly
        if not callable(compile):
            self._compile_args()  # a bad dict fails now, not mid-run
        self.seed = seed
        self.repeats = repeats
        self.progress = progress
        self.progress_bar = progress_bar

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
            "data_seed": self.stream.seed,
            "repeats": self.repeats,
            "model": _model_name(self.model),
        }

    def compare(self, strategies, *, previous=None, on_update=None):
        """Runs several methods and gathers a results document.

        A strategy with `strength="sweep"` is run once per strength of
        `strength_grid` (as `"<name>@<strength>"`), and every run is
        repeated `repeats` times over the init seeds (as
        `"<name>#seed<init seed>"`); the document's `summary` gives the
        mean and spread of each, and `sweep` every grid point and the best.

        Args:
            strategies: `Strategy` instances with distinct names.
            previous: `None`, or the results document of an earlier,
                interrupted comparison with the same settings: its
                complete runs are kept, not run again; a run it left
                unfinished is run again from its first task (see
                docs/harness.md).
            on_update: `None`, or a callable that gets the results so far,
                a valid document with `"complete": False` until the end,
                after every task of every run (e.g. to save them).

        Returns:
            A dict following `results.RESULTS_SCHEMA`.

        Raises:
            ValueError: see `check`; if `previous` was made with other
                settings.
        """
        self.check(strategies)
        plan = self.plan(strategies)
        runs = self._kept_runs(previous, plan)
        bar = None
        if self.progress_bar:
            num_tasks = len(self.stream.tasks)
            bar = keras.utils.Progbar(
                len(plan) * num_tasks,
                unit_name="task",
                stateful_metrics=["seen acc"],
            )
            bar.update(len(runs) * num_tasks)
        for key, strategy, seed in plan:
            if key in runs:
                continue

            def on_task(run, key=key):
                runs[key] = run
                if bar is not None:
                    done = run["tasks_done"]
                    seen = np.mean(run["accuracy_matrix"][-1][:done])
                    bar.add(1, [("seen acc", seen)])
                if on_update is not None:
                    on_update(self.document(plan, runs))

            self.run(strategy, seed=seed, label=key, on_task=on_task)
        return self.document(plan, runs)

    def plan(self, strategies):
        """The runs `compare` makes: `(key, fresh strategy, init seed)`."""
        plan = []
        for strategy in strategies:
            variants = [(strategy.name, strategy)]
            if strategy.strength == "sweep":
                variants = []
                for strength in self.strength_grid:
                    variant = copy.deepcopy(strategy)
                    variant.strength = strength
                    variants.append((f"{strategy.name}@{strength:g}", variant))
            for label, variant in variants:
                for repeat in range(self.repeats):
                    key = (
                        label
                        if self.repeats == 1
                        else f"{label}#seed{self.seed + repeat}"
                    )
                    plan.append(
                        (key, copy.deepcopy(variant), self.seed + repeat)
                    )
        return plan

    def document(self, plan, runs):
        """The results document of a plan, given the runs done so far.

        Args:
            plan: the runs, from `plan` (or the strategies, in order).
            runs: run key -> its entry (complete or not), from `run`.

        Returns:
            A dict following `results.RESULTS_SCHEMA`; `"complete"` says
            whether every run has finished every task.
        """
        if plan and not isinstance(plan[0], tuple):
            plan = self.plan(plan)
        keys = [key for key, _, _ in plan]
        config = {**self.get_config(), "methods": keys}
        ordered = {key: runs[key] for key in keys if key in runs}
        return results.make_document(config, self.seed, ordered)

    def _kept_runs(self, previous, plan):
        """The complete runs of `previous` that `plan` would repeat."""
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
                "The previous results were made with other settings: "
                f"{', '.join(changed)}."
            )
        kept = {}
        for key, strategy, _ in plan:
            run = previous["methods"].get(key)
            if (
                run is None
                or run.get("tasks_done", config["num_tasks"])
                < config["num_tasks"]
            ):
                continue
            stored = {
                _RENAMED_CONFIG_KEYS.get(k, k): v
                for k, v in run["config"].items()
            }
            if stored != _as_json(strategy.get_config()):
                raise ValueError(
                    f"{key}: the previous results were made with "
                    f"{run['config']}, not {strategy.get_config()}."
                )
            kept[key] = run
        return kept

    def check(self, strategies):
        """Checks that the strategies can run here, before any training.

        Raises:
            ValueError: if two strategies share a name, one has
                `strength="auto"` and the stream has no validation splits,
                one builds its own model and the harness has yours, one
                refuses the harness's settings (`Strategy.check`), or the
                `compile` settings are unusable.
        """
        self._compile_args()
        names = [s.name for s in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"Each method may appear once, got {names}.")
        for strategy in strategies:
            if strategy.strength == "auto" and not all(
                t.num_examples("val") for t in self.stream.tasks
            ):
                raise ValueError(
                    f"{strategy.name}: strength 'auto' needs validation "
                    "splits; make the stream with validation_split > 0."
                )
            if (
                self.model is not None
                and type(strategy).build_model is not Strategy.build_model
            ):
                raise ValueError(
                    f"{strategy.name} builds its own model, so it cannot train "
                    "the model given to the harness."
                )
            strategy.check(epochs=self.epochs)

    def run(self, strategy, *, seed=None, label=None, on_task=None):
        """Trains one method on the whole stream.

        Args:
            strategy: a fresh `Strategy`.
            seed: the init seed of this run (default: the harness's).
            label: the run's name in the results and progress (default:
                the strategy's name).
            on_task: `None`, or a callable that gets the run's entry so
                far (`tasks_done` tasks, `accuracy_matrix` with one row per
                finished task) after every task.

        Returns:
            A dict: the run's entry of the results document (its config,
            accuracy matrix, metrics, chosen strength, effective
            dimension, and the time per task spent training, estimating
            the memory and evaluating).

        Raises:
            ValueError: see `check`; for a model whose outputs do not
                match the stream.
        """
        self.check([strategy])
        seed = self.seed if seed is None else seed
        label = label or strategy.name
        tasks = self.stream.tasks
        keras.utils.set_random_seed(seed)
        model = self.build_model(strategy)
        initial = [self._accuracy(model, t, "test") for t in tasks]
        matrix = np.zeros((len(tasks), len(tasks)))
        strengths, dimensions = [], []
        times = {"train": [], "memory": [], "eval": []}
        for index in range(len(tasks)):
            start = time.perf_counter()
            remembers = strategy.memory is not None
            context = self._train_task(model, strategy, index)
            trained = time.perf_counter()
            strategy.after_task(model, context)
            remembered = time.perf_counter()
            strengths.append(context.strength if remembers else None)
            matrix[index] = [self._accuracy(model, t, "test") for t in tasks]
            times["train"].append(trained - start)
            times["memory"].append(remembered - trained)
            times["eval"].append(time.perf_counter() - remembered)
            memory = strategy.memory
            dimensions.append(
                None
                if memory is None
                else float(memory.effective_dimension(self.prior_precision)[0])
            )
            self._report(
                f"{label}: task {index + 1}/{len(tasks)} done, mean accuracy "
                f"on tasks so far {matrix[index, : index + 1].mean():.3f}"
            )
            wall_times = [
                a + b
                for a, b in zip(times["train"], times["memory"], strict=True)
            ]
            entry = {
                "method": label,
                "config": strategy.get_config(),
                "init_seed": seed,
                "tasks_done": index + 1,
                "accuracy_matrix": matrix[: index + 1].tolist(),
                "initial_accuracy": initial,
                "strength": list(strengths),
                "effective_dimension": list(dimensions),
                "wall_time_per_task": wall_times,
                "wall_time": float(sum(wall_times)),
                **{f"{k}_time_per_task": list(v) for k, v in times.items()},
            }
            if index + 1 == len(tasks):
                entry.update(metrics.summarize(matrix, initial))
            if on_task is not None:
                on_task(entry)
        return entry

    def build_model(self, strategy):
        """The uncompiled model of one run, built under the current seed.

        Raises:
            ValueError: if its output is not `(batch, stream.num_outputs)`,
                if the model function returned the model (or variables) of
                its previous call, or if the model outputs probabilities
                (a softmax) while the loss expects logits.
        """
        if self.model is None:
            model = strategy.build_model(self.stream, width=self.width)
        elif isinstance(self.model, keras.Model):
            # Fresh weights from the current seed: every run starts alike.
            model = clone_model(self.model)
        else:
            model = self.model()
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"The model function returned {model!r}, not a Keras model."
                )
            self._check_new_model(model)
        if not model.built:
            model.build((None, *self.stream.input_shape))
        shape = tuple(
            model.compute_output_shape((None, *self.stream.input_shape))
        )
        if shape[1:] != (self.stream.num_outputs,):
            raise ValueError(
                f"Model {model.name!r} maps inputs {self.stream.input_shape} "
                f"to outputs {shape[1:]}, but the stream has "
                f"{self.stream.num_outputs} classes: it needs "
                f"{self.stream.num_outputs} logits."
            )
        self._check_outputs(model)
        return model

    def _check_new_model(self, model):
        """Refuses a model function that hands out one model twice."""
        previous = self._last_model() if self._last_model else None
        if previous is not None:
            shared = {id(v) for v in previous.weights}
            if model is previous or any(id(v) in shared for v in model.weights):
                raise ValueError(
                    f"The model function {_model_name(self.model)!r} returned "
                    f"model {model.name!r}, which is (or shares variables "
                    "with) the model of its previous call: every method "
                    "would continue from the previous one's weights. The "
                    "model function must build a new model on each call."
                )
        self._last_model = weakref.ref(model)

    def _check_outputs(self, model):
        """Refuses probabilities (a softmax output) under a loss on logits."""
        if not model.built or not self.stream.input_shape:
            return
        probe = np.random.default_rng(0).normal(
            size=(4, *self.stream.input_shape)
        )
        try:
            outputs = keras.ops.convert_to_numpy(
                model(keras.ops.convert_to_tensor(probe, "float32"))
            )
        except Exception:  # A model that needs other inputs: not probed.
            return
        probabilities = np.all(outputs >= 0) and np.allclose(
            outputs.sum(axis=-1), 1.0, atol=1e-4
        )
        if not probabilities:
            return
        from_logits = _from_logits(self._compile_args()["loss"])
        if from_logits is True:
            raise ValueError(
                f"Model {model.name!r} outputs probabilities (they sum to 1: "
                "a softmax at the end?), but the loss expects logits "
                "(from_logits=True), so it would train on the softmax of a "
                "softmax. Drop the final softmax, or pass a loss with "
                "from_logits=False in `compile`."
            )
        if self.stream.task_incremental:
            raise ValueError(
                f"Model {model.name!r} outputs probabilities (they sum to 1), "
                "but a task-incremental stream masks other tasks' classes "
                "by adding -1e9 to logits: drop the final softmax."
            )
        if from_logits is None:
            warnings.warn(
                f"Model {model.name!r} outputs probabilities (they sum to 1) "
                "and the harness cannot tell whether the loss expects "
                "logits; if it does, drop the final softmax.",
                stacklevel=3,
            )

    def _train_task(self, model, strategy, index):
        """Fits one task; returns its context, with the strength used."""
        strength = strategy.strength
        if strength != "auto" or strategy.memory is None:
            context = self._context(
                index, None if strength == "auto" else strength
            )
            self._fit(model, strategy, context)
            return context
        start = model.get_weights()
        best = None
        for candidate in self.strength_grid:
            model.set_weights(start)
            context = self._context(index, candidate)
            self._fit(model, strategy, context)
            seen = self.stream.tasks[: index + 1]
            score = np.mean([self._accuracy(model, t, "val") for t in seen])
            self._report(
                f"{strategy.name}: strength {candidate:g}: validation accuracy "
                f"{score:.3f}"
            )
            if best is None or score > best[0]:
                best = (score, context, model.get_weights())
        model.set_weights(best[2])
        return best[1]

    def _context(self, index, strength):
        return TaskContext(
            self.stream, index, strength, self._compile_args()["loss"]
        )

    def _compile_args(self):
        """A fresh optimizer and the loss, from the `compile` hook.

        Raises:
            ValueError: naming the setting, for a hook that returns no
                dict, an unknown key, optimizer or loss, or a loss that
                cannot classify integer labels from the model's outputs.
        """
        hook = self.compile_hook
        args = hook() if callable(hook) else hook or {}
        if not isinstance(args, dict):
            raise ValueError(
                f"The compile function returned {args!r}, not a dict with "
                "optimizer and/or loss."
            )
        unknown = set(args) - {"optimizer", "loss"}
        if unknown:
            raise ValueError(
                f"compile takes optimizer and loss, got {sorted(unknown)}."
            )
        optimizer = args.get("optimizer") or keras.optimizers.Adam(
            self.learning_rate
        )
        if isinstance(optimizer, keras.optimizers.Optimizer):
            # An optimizer holds state of one model: a new one per task.
            optimizer = type(optimizer).from_config(optimizer.get_config())
        try:
            optimizer = keras.optimizers.get(optimizer)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"compile['optimizer']: unusable optimizer {optimizer!r}: "
                f"{error}"
            ) from None
        loss = args.get("loss") or keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )
        try:
            loss = keras.losses.get(loss)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"compile['loss']: unknown loss {loss!r}: {error}"
            ) from None
        self._check_loss(loss)
        return {"optimizer": optimizer, "loss": loss}

    def _check_loss(self, loss):
        """Refuses a loss that does not score integer labels against outputs.

        The probe: two examples whose outputs put 0.9 on the labelled class
        (valid probabilities, and logits ranking it first) must cost less
        than the same outputs put on another class. A regression loss such
        as mean squared error compares the label with every output alike
        and fails; a loss on one-hot labels fails on the shapes.
        """
        classes = self.stream.num_outputs
        if classes < 2:
            return
        labels = np.array([0, 1], "int32")
        others = (labels + 1) % classes

        def outputs(hot):
            values = np.full((2, classes), 0.1 / (classes - 1), "float32")
            values[np.arange(2), hot] = 0.9
            return keras.ops.convert_to_tensor(values)

        try:
            right, wrong = (
                float(
                    keras.ops.convert_to_numpy(
                        keras.ops.sum(
                            loss(
                                keras.ops.convert_to_tensor(labels), outputs(h)
                            )
                        )
                    )
                )
                for h in (labels, others)
            )
        except Exception as error:
            raise ValueError(
                f"compile['loss']: {_loss_name(loss)} cannot score integer "
                f"class labels (batch,) against outputs (batch, {classes}): "
                f"{error}. Use a loss like "
                "SparseCategoricalCrossentropy(from_logits=True)."
            ) from None
        if not (np.isfinite(right) and np.isfinite(wrong) and right < wrong):
            raise ValueError(
                f"compile['loss']: {_loss_name(loss)} does not score integer "
                "class labels (it costs no less when the output favours the "
                "labelled class: a regression loss such as 'mse'?). Use a "
                "loss like SparseCategoricalCrossentropy(from_logits=True)."
            )

    def _fit(self, model, strategy, context):
        args = self._compile_args()
        classes = context.task.classes
        if classes is not None:
            args["loss"] = MaskedLoss(
                args["loss"], classes, self.stream.num_outputs
            )
        strategy.compile(model, **args)
        strategy.before_task(model, context)
        data = strategy.training_data(context)
        callbacks = list(strategy.callbacks(context))
        if self.progress:
            callbacks.append(
                _Progress(self.progress, strategy, context, self.epochs)
            )
        if isinstance(data, tuple):
            x, y = data
            fit_args = {"x": x, "y": y, "batch_size": self.batch_size}
        else:  # A streamed task: read a shuffled batch at a time.
            fit_args = {"x": batched(data, self.batch_size, shuffle=True)}
        model.fit(
            **fit_args,
            epochs=self.epochs,
            shuffle=isinstance(data, tuple),  # the dataset shuffles itself
            verbose=0,
            callbacks=callbacks,
        )

    def _accuracy(self, model, task, split):
        """Accuracy on one split of a task, over the task's classes only."""
        data = task.data(split)
        if not isinstance(data, tuple):
            return _streamed_accuracy(model, task, data)
        x, y = data
        if not len(y):
            raise ValueError(
                f"Cannot measure accuracy on the empty {split} split of "
                f"{task.name!r}."
            )
        logits = np.asarray(model.predict(x, batch_size=1024, verbose=0))
        return float(np.mean(_predictions(logits, task.classes) == y))

    def _report(self, message):
        if self.progress:
            self.progress(message)


def _predictions(logits, classes):
    """The predicted classes, among `classes` only when it is not `None`."""
    if classes is not None:
        keep = np.zeros(logits.shape[-1], bool)
        keep[list(classes)] = True
        logits = np.where(keep, logits, -np.inf)
    return np.argmax(logits, axis=-1)


def _streamed_accuracy(model, task, data):
    """Accuracy over a dataset of examples, read a batch at a time."""
    correct = total = 0
    for x, y in batched(data, 1024).as_numpy_iterator():
        logits = np.asarray(model.predict_on_batch(x))
        correct += int(np.sum(_predictions(logits, task.classes) == y))
        total += len(y)
    if not total:
        raise ValueError(
            f"Cannot measure accuracy on an empty split of {task.name!r}."
        )
    return correct / total


def _loss_name(loss):
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return repr(name or loss)


def _from_logits(loss):
    """Whether a loss expects logits: True, False, or None if unknown."""
    if hasattr(loss, "from_logits"):
        return bool(loss.from_logits)
    kwargs = getattr(loss, "_fn_kwargs", None)
    if isinstance(kwargs, dict) and "from_logits" in kwargs:
        return bool(kwargs["from_logits"])
    try:
        parameter = inspect.signature(loss).parameters.get("from_logits")
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return bool(parameter.default)


def _model_name(model):
    if model is None:
        return "mlp"
    return (
        model.name
        if isinstance(model, keras.Model)
        else getattr(model, "__name__", "custom")
    )


# Strategy config keys renamed since results were first written: a
# previous results file keeps resuming.
_RENAMED_CONFIG_KEYS = {"fisher_examples": "max_examples"}


def _as_json(value):
    # What a value reads back as from a results file (tuples become lists).
    return json.loads(json.dumps(value))


class _Progress(keras.callbacks.Callback):
    """Reports task, method and epoch at the end of every epoch."""

    def __init__(self, report, strategy, context, epochs):
        super().__init__()
        self.report = report
        self.epochs = epochs
        num_tasks = len(context.stream.tasks)
        self.prefix = f"{strategy.name}: task {context.index + 1}/{num_tasks}"
        if context.strength is not None and strategy.strength == "auto":
            self.prefix += f" (strength {context.strength:g})"

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss", float("nan"))
        self.report(
            f"{self.prefix} epoch {epoch + 1}/{self.epochs} loss {loss:.4f}"
        )
