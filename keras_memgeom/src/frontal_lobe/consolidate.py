"""The frontal-lobe schedule: task, information penalty, consolidation."""

import keras

from keras_memgeom.src.frontal_lobe.consolidation import check_consolidation
from keras_memgeom.src.memory.fisher import ESTIMATORS
from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.checks import check_positive_int


class Consolidate(keras.callbacks.Callback):
    """Runs the frontal-lobe procedure inside an ordinary `model.fit`.

    Training is cut into cycles: the whole `fit` (a task boundary at its
    end) or every `period` epochs. In each cycle
    1. the first epochs train with the long-term memory's penalty only
       (phase 1: the information penalty is off);
    2. the last `information_epochs` add the frontal lobe's information
       penalty `information_strength * trace(F_FL)` (phase 2), so its
       information moves into the rest of the network;
    3. at the cycle's end the task is consolidated: the Fisher on `data`
       is estimated and merged into the model's long-term memory by
       `model.consolidate` (in place: the running `fit` goes on with the
       new memory, at the compiled `strength`).

    `consolidation` says what happens to the frontal lobe at step 3:

    - `"keep"`: nothing; its Fisher is merged with the rest (`"merge"` is
      the deprecated old name).
    - `"forget"`: its Fisher is zeroed before merging, so long-term memory
      never pins it (its units keep what they hold, unprotected).
    - `"reset"`: its units are re-initialized with zero outgoing weights
      (`FrontalLobe.reset`: the network then computes what it computed
      without them), the Fisher is estimated on that network, and the
      frontal lobe's part of it is zeroed: its precision stays at the
      prior.
    - `"distill"`: first the rest of the network is trained, under the
      memory of the previous tasks, to reproduce the outputs of the whole
      network on `data` with the frontal lobe silenced
      (`FrontalLobe.distill`, the compress step of Schwarz et al. 2018),
      then as `"reset"`.

    The end of `fit` is a task boundary: when `fit` ends inside a cycle
    (`keras.callbacks.EarlyStopping`, `stop_training`, or a number of epochs
    that `period` does not divide), the epochs trained so far are
    consolidated at the end of training all the same, so what they learned
    is remembered; the information phase of that cycle is then shorter or
    skipped.

    At the end of each phase the exact Fisher trace on `data` of the frontal
    lobe and of the rest is added to the epoch's logs
    (`frontal_lobe_fisher_trace`, `rest_fisher_trace`), and after each
    consolidation the effective dimension `sum P / (P + alpha)` of the
    long-term memory (`frontal_lobe_effective_dimension`,
    `rest_effective_dimension`). The same numbers are kept in `records`
    (with `distillation_loss` for `"distill"`).

    Args:
        data: `(x, y)` arrays of the task, for the Fisher and the
            distillation.
        information_epochs: epochs of phase 2 at the end of each cycle.
        period: `None` for one cycle per `fit`, or the cycle length in
            epochs.
        estimator: the Fisher estimator of the consolidated memory.
        max_examples: estimate the Fisher on at most this many examples.
        decay: factor in `(0, 1]` on the older precision at each merge.
        consolidation: one of `"keep"`, `"forget"`, `"reset"`,
            `"distill"`.
        distill_epochs: epochs of distillation (`"distill"`).
        distill_batch_size: batch size of distillation.
        distill_learning_rate: Adam's learning rate in distillation.
        prior_precision: `alpha > 0` of the effective dimension.

    Raises:
        ValueError: for bad arguments here; at the start of `fit`, if the
            model is not a `keras_memgeom.Model` compiled with a frontal
            lobe, or a cycle is shorter than `information_epochs`.

    Example:

    ```python
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(3)(hidden))
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        frontal_lobe=keras_memgeom.FrontalLobe(["hidden"], fraction=0.5),
        strength=100.0,
    )
    x = np.random.normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    consolidate = keras_memgeom.frontal_lobe.Consolidate(
        (x, y), information_epochs=1, consolidation="distill"
    )
    model.fit(x, y, epochs=2, verbose=0, callbacks=[consolidate])
    ```
    """

    def __init__(
        self,
        data,
        *,
        information_epochs=5,
        period=None,
        estimator="exact",
        max_examples=None,
        decay=1.0,
        consolidation="keep",
        distill_epochs=5,
        distill_batch_size=32,
        distill_learning_rate=1e-3,
        prior_precision=1.0,
    ):
        super().__init__()
        if not isinstance(data, tuple) or len(data) != 2:
            raise ValueError(
                "`data` must be an `(x, y)` tuple of the task's arrays."
            )
        if not isinstance(information_epochs, int) or information_epochs < 0:
            raise ValueError(
                "`information_epochs` must be a non-negative int; got "
                f"{information_epochs!r}."
            )
        if period is not None and (not isinstance(period, int) or period < 1):
            raise ValueError(
                f"`period` must be a positive int or None; got {period!r}."
            )
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"Unknown estimator {estimator!r}; expected one of "
                f"{ESTIMATORS}."
            )
        decay = check_positive("decay", decay, maximum=1.0)
        prior_precision = check_positive("prior_precision", prior_precision)
        self.data = data
        self.information_epochs = information_epochs
        self.period = period
        self.estimator = estimator
        self.max_examples = check_positive_int(
            "max_examples", max_examples, allow_none=True
        )
        self.decay = decay
        vars(self).update(
            check_consolidation(
                consolidation,
                distill_epochs,
                distill_batch_size,
                distill_learning_rate,
            )
        )
        self.prior_precision = prior_precision
        self.records = []

    def on_train_begin(self, logs=None):
        frontal_lobe = getattr(self.model, "frontal_lobe", None)
        if frontal_lobe is None:
            raise ValueError(
                "Consolidate needs a keras_memgeom.Model compiled with "
                "`frontal_lobe=keras_memgeom.FrontalLobe(...)`."
            )
        self._cycle = self.period or self.params["epochs"]
        if self.information_epochs > self._cycle:
            raise ValueError(
                f"`information_epochs` ({self.information_epochs}) is longer "
                f"than a cycle ({self._cycle} epochs)."
            )
        frontal_lobe.masks(self.model)  # Names the bad layer now, not mid-fit.
        self._last_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        position = epoch % self._cycle
        self.model.set_information_penalty(
            position >= self._cycle - self.information_epochs
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        self._last_epoch = epoch
        position = epoch % self._cycle
        # Without phase 2 the end of phase 1 is the consolidation, which
        # records the same traces.
        if (
            self.information_epochs
            and position == self._cycle - self.information_epochs - 1
        ):
            fisher, _ = self._fisher("exact")
            self._record(
                epoch,
                "task",
                logs,
                traces=self.model.frontal_lobe.split(self.model, fisher),
            )
        if position == self._cycle - 1:
            self._consolidate(epoch, logs)

    def on_train_end(self, logs=None):
        # Stopped inside a cycle: without this the task would never be
        # remembered, and nothing would say so.
        epoch = self._last_epoch
        if epoch is not None and epoch % self._cycle != self._cycle - 1:
            self._consolidate(epoch, {})

    def _fisher(self, estimator):
        memory = FisherMemory.estimate(
            self.model,
            self.data,
            estimator=estimator,
            max_examples=self.max_examples,
        )
        return memory.fisher, memory

    def _consolidate(self, epoch, logs):
        model, frontal_lobe = self.model, self.model.frontal_lobe
        exact, exact_memory = self._fisher("exact")
        self._record(
            epoch, "information", logs, traces=frontal_lobe.split(model, exact)
        )
        if self.consolidation == "distill":
            history = frontal_lobe.distill(
                model,
                self.data[0],
                epochs=self.distill_epochs,
                batch_size=self.distill_batch_size,
                learning_rate=self.distill_learning_rate,
            )
            logs["distillation_loss"] = float(history.history["loss"][-1])
            self.records[-1]["distillation_loss"] = logs["distillation_loss"]
        if self.consolidation in ("reset", "distill"):
            frontal_lobe.reset(model)
        if self.consolidation in ("reset", "distill") or (
            self.estimator != "exact"
        ):
            fisher, memory = self._fisher(self.estimator)
        else:
            fisher, memory = exact, exact_memory
        if self.consolidation != "keep":
            masks = frontal_lobe.masks(model)
            fisher = {
                path: value * (1.0 - masks.get(path, 0.0))
                for path, value in fisher.items()
            }
            memory = FisherMemory(
                memory.anchor, fisher, memory.num_examples, memory.estimator
            )
        model.consolidate(
            memory,
            decay=self.decay,
            num_train_examples=model.num_train_examples
            or model._memory_num_train_examples
            or len(self.data[1]),
        )
        precision = model.memories[0].precision
        occupied = {
            variable.path: precision[path]
            / (precision[path] + self.prior_precision)
            for path, variable in model.memories[0].match(model)
        }
        self._record(
            epoch,
            "consolidated",
            logs,
            dimensions=frontal_lobe.split(model, occupied),
        )

    def _record(self, epoch, phase, logs, traces=None, dimensions=None):
        record = {"epoch": epoch, "phase": phase}
        if traces is not None:
            record["frontal_lobe_fisher_trace"], record["rest_fisher_trace"] = (
                traces
            )
        if dimensions is not None:
            (
                record["frontal_lobe_effective_dimension"],
                record["rest_effective_dimension"],
            ) = dimensions
        self.records.append(record)
        logs.update(
            {
                k: float(v)
                for k, v in record.items()
                if k not in ("epoch", "phase")
            }
        )
