"""Frontal-lobe consolidation as a continual-learning method."""

import keras_memgeom
from keras_memgeom.callbacks.consolidate import Consolidate
from keras_memgeom.continual.classifier import classifier
from keras_memgeom.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.continual.memory_strategy import MemoryStrategy
from keras_memgeom.continual.strategy import register_strategy
from keras_memgeom.training.frontal_lobe import ESTIMATORS
from keras_memgeom.utils.checks import check_number


@register_strategy
class FrontalLobeStrategy(MemoryStrategy):
    """Keeps a frontal lobe of working space free, task after task.

    The model is a `keras_memgeom.Model` with a frontal lobe made of a
    `fraction` of the units of every hidden layer. Each task's `fit` runs
    `keras_memgeom.callbacks.Consolidate`: the first epochs train with the
    long-term memory's penalty, the last `information_epochs` add
    `information_strength * trace(F_FL)`, and at the end the task's Fisher
    is merged into one long-term memory (as `online` does), which the next
    task's `fit` attaches with `strength`.

    Args:
        strength, estimator, fisher_examples: see `MemoryStrategy`;
            `strength` must be a number (the consolidation runs inside
            `fit`, so `"auto"` cannot replay it per grid point).
        decay: factor on the older precision at each merge, in `(0, 1]`.
        fraction: share of the units of each hidden layer in the frontal
            lobe, in `(0, 1]`.
        information_strength: `lambda`, the weight of the information
            penalty.
        information_epochs: epochs of phase 2 at the end of each task (out
            of the harness's epochs per task).
        information_estimator: `"empirical"` or `"exact"` Fisher trace in
            the penalty.
        forget_frontal_lobe: drop the frontal lobe's Fisher from each new
            memory before merging.

    Raises:
        ValueError: for `strength="auto"` or bad arguments.

    Example:
    >>> Harness(TaskStream.make("permuted", num_tasks=3), width=32).run(FrontalLobeStrategy(strength=100))
    """

    name = "frontal-lobe"

    def __init__(
        self,
        *,
        strength=DEFAULT_STRENGTH,
        estimator="exact",
        fisher_examples=None,
        decay=1.0,
        fraction=0.5,
        information_strength=1.0,
        information_epochs=3,
        information_estimator="empirical",
        forget_frontal_lobe=False,
    ):
        if strength == "auto":
            raise ValueError(
                "frontal-lobe consolidates inside `fit`, so it takes a numeric strength, not 'auto'."
            )
        super().__init__(
            strength=strength,
            estimator=estimator,
            fisher_examples=fisher_examples,
        )
        decay = check_number(
            "decay", decay, minimum=0.0, inclusive_minimum=False, maximum=1.0
        )
        if information_estimator not in ESTIMATORS:
            raise ValueError(
                f"Unknown information_estimator {information_estimator!r}; expected one of {ESTIMATORS}."
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
        self.information_epochs = int(information_epochs)
        self.information_estimator = information_estimator
        self.forget_frontal_lobe = bool(forget_frontal_lobe)
        self.records = []  # The Consolidate records of each task.

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
            regularizers=self.memories,
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
            max_examples=self.fisher_examples,
            decay=self.decay,
            forget_frontal_lobe=self.forget_frontal_lobe,
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
            "forget_frontal_lobe": self.forget_frontal_lobe,
        }
