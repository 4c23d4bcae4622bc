"""Frontal-lobe consolidation as a continual-learning method."""

import keras_memgeom
from keras_memgeom.src.callbacks.consolidate import Consolidate
from keras_memgeom.src.callbacks.consolidate import check_consolidation
from keras_memgeom.src.continual.classifier import classifier
from keras_memgeom.src.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.src.continual.memory_strategy import MemoryStrategy
from keras_memgeom.src.continual.strategy import register_strategy
from keras_memgeom.src.training.frontal_lobe import INFORMATION_ESTIMATORS
from keras_memgeom.src.utils.checks import check_number


@register_strategy
class FrontalLobeStrategy(MemoryStrategy):
    """Keeps a frontal lobe of working space free, task after task.

    The model is a `keras_memgeom.Model` with a frontal lobe made of a
    `fraction` of the units of every hidden layer. Each task's `fit` runs
    `keras_memgeom.callbacks.Consolidate`: the first epochs train with the
    long-term memory's penalty, the last `information_epochs` add
    `information_strength * trace(F_FL)`, and at the end the frontal lobe
    is consolidated as `consolidation` says (kept, forgotten, reset, or
    distilled into the rest of the network and reset) and the task's Fisher
    is merged into one long-term memory (as `online` does), which the next
    task's `fit` attaches with `strength`.

    Args:
        strength: penalty strength, as for `MemoryStrategy` but a number
            (the consolidation runs inside `fit`, so `"auto"` cannot
            replay it per grid point).
        estimator: Fisher estimator, as for `MemoryStrategy`.
        max_examples: examples per memory, as for `MemoryStrategy`.
        decay: factor on the older precision at each merge, in `(0, 1]`.
        fraction: share of the units of each hidden layer in the frontal
            lobe, in `(0, 1]`.
        information_strength: `lambda`, the weight of the information
            penalty.
        information_epochs: epochs of phase 2 at the end of each task (out
            of the harness's epochs per task).
        information_estimator: `"empirical"` or `"exact"` Fisher trace in
            the penalty.
        consolidation: what happens to the frontal lobe at the end of a
            task: `"merge"`, `"forget"`, `"reset"` or `"distill"` (see
            `keras_memgeom.callbacks.Consolidate`).
        distill_epochs: epochs of distillation after each task
            (`"distill"`), on top of the harness's epochs per task.
        distill_batch_size: batch size of distillation.
        distill_learning_rate: Adam's learning rate in distillation.
        fisher_examples: deprecated alias of `max_examples`.

    Raises:
        ValueError: for `strength="auto"` or bad arguments.

    Example:

    ```python
    from keras_memgeom import continual

    stream = continual.TaskStream.make("permuted", "digits", num_tasks=2)
    strategy = continual.FrontalLobeStrategy(
        strength=100, consolidation="distill", information_epochs=1
    )
    continual.Harness(stream, width=32, epochs=2).run(strategy)
    ```
    """

    name = "frontal-lobe"

    def __init__(
        self,
        *,
        strength=DEFAULT_STRENGTH,
        estimator="exact",
        max_examples=None,
        decay=1.0,
        fraction=0.5,
        information_strength=1.0,
        information_epochs=3,
        information_estimator="empirical",
        consolidation="merge",
        distill_epochs=5,
        distill_batch_size=32,
        distill_learning_rate=1e-3,
        fisher_examples=None,
    ):
        if strength == "auto":
            raise ValueError(
                "frontal-lobe consolidates inside `fit`, so it takes a "
                "numeric strength, not 'auto'."
            )
        super().__init__(
            strength=strength,
            estimator=estimator,
            max_examples=max_examples,
            fisher_examples=fisher_examples,
        )
        decay = check_number(
            "decay", decay, minimum=0.0, inclusive_minimum=False, maximum=1.0
        )
        if information_estimator not in INFORMATION_ESTIMATORS:
            raise ValueError(
                "Unknown information_estimator "
                f"{information_estimator!r}; expected one of "
                f"{INFORMATION_ESTIMATORS}."
            )
        fraction = check_number(
            "fraction",
            fraction,
            minimum=0.0,
            inclusive_minimum=False,
            maximum=1.0,
        )
        information_strength = check_number(
            "information_strength", information_strength, minimum=0.0
        )
        self.decay = decay
        self.fraction = fraction
        self.information_strength = information_strength
        if (
            isinstance(information_epochs, bool)
            or not isinstance(information_epochs, int)
            or information_epochs < 0
        ):
            raise ValueError(
                "`information_epochs` must be a non-negative int; got "
                f"{information_epochs!r}."
            )
        self.information_epochs = information_epochs
        self.information_estimator = information_estimator
        (
            self.consolidation,
            self.distill_epochs,
            self.distill_batch_size,
            self.distill_learning_rate,
        ) = check_consolidation(
            consolidation,
            distill_epochs,
            distill_batch_size,
            distill_learning_rate,
        )
        self.records = []  # The Consolidate records of each task.

    def check(self, *, epochs):
        """Refuses epochs per task fewer than `information_epochs`.

        Args:
            epochs: the harness's epochs per task.

        Raises:
            ValueError: if the information phase would not fit in a task.
        """
        if self.information_epochs > epochs:
            raise ValueError(
                f"frontal-lobe: information_epochs={self.information_epochs} "
                f"is more than the {epochs} epochs per task; the information "
                "phase is the last information_epochs of each task's epochs. "
                "Use fewer information epochs (memgeom: --information-epochs) "
                "or more epochs per task."
            )

    def build_model(self, stream, *, width):
        base = classifier(stream, width=width)
        return keras_memgeom.Model(base.input, base.output, name=base.name)

    def compile(self, model, *, optimizer, loss):
        hidden = [
            layer.name
            for layer in model.layers
            if layer.name.startswith("hidden_")
        ]
        frontal_lobe = keras_memgeom.FrontalLobe(
            hidden,
            fraction=self.fraction,
            information_strength=self.information_strength,
            estimator=self.information_estimator,
        )
        model.compile(
            optimizer=optimizer,
            loss=loss,
            memories=self.memories,
            strength=self.strength,
            frontal_lobe=frontal_lobe,
        )

    def before_task(self, model, context):
        """Nothing: `Model.fit` attaches the memories given to `compile`."""

    def callbacks(self, context):
        self._consolidate = Consolidate(
            self.training_data(context),
            information_epochs=self.information_epochs,
            estimator=self.estimator,
            max_examples=self.max_examples,
            decay=self.decay,
            consolidation=self.consolidation,
            distill_epochs=self.distill_epochs,
            distill_batch_size=self.distill_batch_size,
            distill_learning_rate=self.distill_learning_rate,
        )
        return [self._consolidate]

    def after_task(self, model, context):
        self.memories = list(model.memories)
        self.records.append(self._consolidate.records)

    def get_config(self):
        return {
            **super().get_config(),
            "decay": self.decay,
            "fraction": self.fraction,
            "information_strength": self.information_strength,
            "information_epochs": self.information_epochs,
            "information_estimator": self.information_estimator,
            "consolidation": self.consolidation,
            "distill_epochs": self.distill_epochs,
            "distill_batch_size": self.distill_batch_size,
            "distill_learning_rate": self.distill_learning_rate,
        }
