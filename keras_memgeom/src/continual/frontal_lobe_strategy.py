"""Frontal-lobe consolidation as a continual-learning method."""

from keras_memgeom.src.continual.classifier import classifier
from keras_memgeom.src.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.src.continual.memory_strategy import MemoryStrategy
from keras_memgeom.src.continual.strategy import register_strategy
from keras_memgeom.src.frontal_lobe.consolidate import Consolidate
from keras_memgeom.src.frontal_lobe.consolidation import check_consolidation
from keras_memgeom.src.frontal_lobe.frontal_lobe import FrontalLobe
from keras_memgeom.src.training.model import Model
from keras_memgeom.src.utils.checks import check_positive

# The harness's classifier: two hidden layers, half of each the frontal lobe.
DEFAULT_LAYERS = ("hidden_0", "hidden_1")

# The arguments that moved into `FrontalLobe`, and their names there.
_MOVED = {
    "fraction": "fraction",
    "information_strength": "information_strength",
    "information_estimator": "estimator",
}


@register_strategy
class FrontalLobeStrategy(MemoryStrategy):
    """Keeps a frontal lobe of working space free, task after task.

    The model is a `keras_memgeom.Model` compiled with `frontal_lobe`. Each
    task's `fit` runs `keras_memgeom.frontal_lobe.Consolidate`: the first
    epochs train with the long-term memory's penalty, the last
    `information_epochs` add `information_strength * trace(F_FL)`, and at
    the end the frontal lobe is consolidated as `consolidation` says (kept,
    forgotten, reset, or distilled into the rest of the network and reset)
    and the task's Fisher is merged into one long-term memory (as `online`
    does), which the next task's `fit` attaches with `strength`.

    Args:
        strength: penalty strength, as for `MemoryStrategy` but a number
            (the consolidation runs inside `fit`, so `"auto"` cannot
            replay it per grid point).
        estimator: Fisher estimator, as for `MemoryStrategy`.
        max_examples: examples per memory, as for `MemoryStrategy`.
        frontal_lobe: the `FrontalLobe` (its layers, fraction, information
            strength and estimator), or its `get_config()` dict. By
            default half of the units of the harness classifier's hidden
            layers `hidden_0` and `hidden_1`, `information_strength=1`.
        decay: factor on the older precision at each merge, in `(0, 1]`.
        information_epochs: epochs of phase 2 at the end of each task (out
            of the harness's epochs per task).
        consolidation: what happens to the frontal lobe at the end of a
            task: `"keep"`, `"forget"`, `"reset"` or `"distill"` (see
            `keras_memgeom.frontal_lobe.Consolidate`).
        distill_epochs: epochs of distillation after each task
            (`"distill"`), on top of the harness's epochs per task.
        distill_batch_size: batch size of distillation.
        distill_learning_rate: Adam's learning rate in distillation.
        fisher_examples: deprecated alias of `max_examples`.
        **moved: the arguments that moved into `FrontalLobe`
            (`fraction`, `information_strength`, `information_estimator`):
            passing one raises a `TypeError` naming its place there.

    Raises:
        TypeError: for the old arguments `fraction`,
            `information_strength` and `information_estimator`, naming
            their place in `frontal_lobe=FrontalLobe(...)`.
        ValueError: for `strength="auto"` or bad arguments.

    Example:

    ```python
    import keras_memgeom
    from keras_memgeom import continual

    stream = continual.TaskStream.make("permuted", "digits", num_tasks=2)
    strategy = continual.FrontalLobeStrategy(
        strength=100,
        frontal_lobe=keras_memgeom.FrontalLobe(
            ["hidden_0", "hidden_1"], fraction=0.5
        ),
        consolidation="distill",
        information_epochs=1,
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
        frontal_lobe=None,
        decay=1.0,
        information_epochs=3,
        consolidation="keep",
        distill_epochs=5,
        distill_batch_size=32,
        distill_learning_rate=1e-3,
        fisher_examples=None,
        **moved,
    ):
        for name in moved:
            if name not in _MOVED:
                raise TypeError(
                    "FrontalLobeStrategy got an unexpected keyword argument "
                    f"{name!r}."
                )
        if moved:
            settings = ", ".join(f"{_MOVED[k]}=..." for k in moved)
            raise TypeError(
                f"FrontalLobeStrategy no longer takes {sorted(moved)}: pass "
                f"`frontal_lobe=keras_memgeom.FrontalLobe(layers, {settings})`."
            )
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
        if frontal_lobe is None:
            frontal_lobe = FrontalLobe(list(DEFAULT_LAYERS), fraction=0.5)
        elif isinstance(frontal_lobe, dict):
            frontal_lobe = FrontalLobe.from_config(frontal_lobe)
        elif not isinstance(frontal_lobe, FrontalLobe):
            raise ValueError(
                "`frontal_lobe` takes a FrontalLobe or its config; got "
                f"{type(frontal_lobe).__name__}."
            )
        self.frontal_lobe = frontal_lobe
        self.decay = check_positive("decay", decay, maximum=1.0)
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
        vars(self).update(
            check_consolidation(
                consolidation,
                distill_epochs,
                distill_batch_size,
                distill_learning_rate,
            )
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
        return Model(base.input, base.output, name=base.name)

    def compile(self, model, *, optimizer, loss):
        model.compile(
            optimizer=optimizer,
            loss=loss,
            memories=self.memories,
            strength=self.strength,
            frontal_lobe=self.frontal_lobe,
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
            "frontal_lobe": self.frontal_lobe.get_config(),
            "decay": self.decay,
            "information_epochs": self.information_epochs,
            "consolidation": self.consolidation,
            "distill_epochs": self.distill_epochs,
            "distill_batch_size": self.distill_batch_size,
            "distill_learning_rate": self.distill_learning_rate,
        }
