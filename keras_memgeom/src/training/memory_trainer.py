"""What the package's models add to Keras training: memories, a frontal lobe."""

import inspect
import os

import keras
from keras import ops
from keras.src.backend import get_stateless_scope
from keras.src.backend import in_stateless_scope
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from keras_memgeom import backend
from keras_memgeom.src.frontal_lobe.frontal_lobe import FrontalLobe
from keras_memgeom.src.memory import normalization_statistics as statistics
from keras_memgeom.src.memory.attach import MEMORY_REGULARIZERS
from keras_memgeom.src.memory.attach import attach
from keras_memgeom.src.memory.attach import attached_regularizers
from keras_memgeom.src.memory.attach import attachment_of
from keras_memgeom.src.memory.attach import detach
from keras_memgeom.src.memory.attach import memory_list
from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.fisher_regularizer import FisherRegularizer
from keras_memgeom.src.memory.merge import merge
from keras_memgeom.src.training.scalar_mean import ScalarMean
from keras_memgeom.src.training.train_examples import count_train_examples
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.checks import check_positive_int
from keras_memgeom.src.utils.model_save import save_model
from keras_memgeom.src.utils.renamed_argument import renamed_argument


class MemoryTrainer:
    """Mixin for `keras.Model`: Fisher memories as compile-time regularizers.

    `compile(..., memories=[memory, ...], strength=, num_train_examples=)`
    adds the memories' penalty (one term per memory) to the loss on every
    path that computes it: `fit`, `train_on_batch`, `evaluate`,
    `test_on_batch` and custom loops calling `compute_loss`. `fit` and
    `evaluate` report it as the metric `memory_penalty`. The memories are
    device state (non-trainable variables the traced step reads, not
    constants), so refitting, even on a different number of examples, does
    not retrace the step; that state is kept apart from the model's own
    (`memory_state.variables`, neither in `variables` nor in
    `non_trainable_variables`). They are saved with the model as assets and
    restored by `keras.saving.load_model`; layer configs stay free of them.
    A memory does not cover non-trainable state: while training with
    memories, `BatchNormalization`'s moving statistics are frozen by default
    (`normalization_statistics=`, kept in the compile config).

    `compile(..., frontal_lobe=FrontalLobe(...))` adds the frontal lobe's
    information penalty `information_strength * trace(F_FL)` to the training
    loss (phase 2 of the frontal-lobe procedure), reported as
    `information_penalty`; `set_information_penalty(False)` turns it off.
    `consolidate(memory)` merges a task's memory into the model's memories
    in place, as a task boundary does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memories = []
        self.memory_strength = 1.0
        self.num_train_examples = None
        self.normalization_statistics = statistics.DEFAULT_POLICY
        self._memory_num_train_examples = None
        self.memory_penalty_tracker = ScalarMean(name="memory_penalty")
        self.memory_state = MemoryState()
        self.frontal_lobe = None
        self.information_penalty_active = False
        self.information_penalty_tracker = None

    def compile(
        self,
        *args,
        memories=None,
        strength=1.0,
        num_train_examples=None,
        frontal_lobe=None,
        normalization_statistics=statistics.DEFAULT_POLICY,
        regularizers=None,
        **kwargs,
    ):
        """Configures the model for training, as `keras.Model.compile`.

        Args:
            *args: as `keras.Model.compile`.
            memories: a list of `FisherMemory` whose penalties are added
                to the loss (one term per memory), or `None`.
            strength: the memories' strength (`1` is the Laplace scaling).
            num_train_examples: the number of units the loss averages
                over: examples, or for per-token outputs `(batch,
                positions, d)` the unmasked tokens (as a Fisher memory's
                `n` counts them). By default `fit` counts them: the
                arrays' length less the `validation_split` part, or one
                pass over a finite `tf.data.Dataset`; tokens in one
                compiled pass of the model over the training inputs,
                before training. Sample weights do not change it (Keras
                averages a weighted loss over all the units of a batch,
                zero weights included). Needed for
                `train_on_batch`, `evaluate` or a custom loop before any
                `fit`, and for Python generators and `PyDataset`s.
            frontal_lobe: a `FrontalLobe` whose information penalty is added
                to the training loss (on until
                `set_information_penalty(False)`).
            normalization_statistics: what training with `memories`
                does to the moving statistics of `BatchNormalization`
                layers, which a memory does not remember. `"freeze"` (the
                default): they are neither updated nor replaced by batch
                statistics (normalization as at inference) while `gamma`
                and `beta` stay trainable under the memory, so the
                remembered task keeps its statistics. `"update"`: Keras's
                behaviour (batch statistics, moving statistics updated),
                which can lose the remembered task although its weights are
                kept. Without `memories` the layers are left as they
                are.
            regularizers: deprecated alias of `memories` (a
                `DeprecationWarning` names the new argument).
            **kwargs: as `keras.Model.compile`.

        Raises:
            ValueError: if `memories` is not a list of `FisherMemory`, both
                `memories` and `regularizers` are given,
                `strength` is not a finite non-negative number,
                `num_train_examples` is not a positive whole number,
                `frontal_lobe` is not a `FrontalLobe`,
                `normalization_statistics` is not `"freeze"` or `"update"`,
                or a memory does not fit the model.
        """
        if frontal_lobe is not None and not isinstance(
            frontal_lobe, FrontalLobe
        ):
            raise ValueError(
                "`frontal_lobe` takes a FrontalLobe; got "
                f"{type(frontal_lobe).__name__}."
            )
        memories = renamed_argument(
            "memories", memories, "regularizers", regularizers
        )
        if memories is not None and not isinstance(memories, (list, tuple)):
            raise ValueError(
                "`memories` takes a list of FisherMemory objects; got "
                f"{type(memories).__name__}. Write `memories=[memory]`."
            )
        memories = memory_list(memories or [], "memories")
        strength = check_number("strength", strength, minimum=0.0)
        num_train_examples = check_positive_int(
            "num_train_examples", num_train_examples, allow_none=True
        )
        normalization_statistics = statistics.check_policy(
            normalization_statistics
        )
        super().compile(*args, **kwargs)
        detach(self)  # the memories of the previous compile no longer apply
        self.memories = memories
        self.normalization_statistics = normalization_statistics
        if memories:
            statistics.apply_policy(self, normalization_statistics)
        self.memory_strength = strength
        self.num_train_examples = num_train_examples
        self._memory_num_train_examples = None
        self.frontal_lobe = frontal_lobe
        self.information_penalty_active = frontal_lobe is not None
        if (
            frontal_lobe is not None
            and self.information_penalty_tracker is None
        ):
            self.information_penalty_tracker = ScalarMean(
                name="information_penalty"
            )
        if self.memories and self.built and num_train_examples is not None:
            self._attach_memories(num_train_examples)

    def set_information_penalty(self, active):
        """Turns the frontal lobe's information penalty on or off.

        Off is phase 1 of the frontal-lobe procedure (the task with the
        memory penalty only), on is phase 2. The traced train function is
        rebuilt, so the change takes effect at the next step, also inside
        `fit`.

        Args:
            active: bool.

        Raises:
            ValueError: if turned on for a model compiled without a frontal
                lobe.
        """
        if active and self.frontal_lobe is None:
            raise ValueError(
                "The model has no frontal lobe: compile it with "
                "`frontal_lobe=keras_memgeom.FrontalLobe(...)` first."
            )
        if bool(active) != self.information_penalty_active:
            self.information_penalty_active = bool(active)
            self.make_train_function(force=True)

    def consolidate(
        self, memory, *, decay=1.0, replace=False, num_train_examples=None
    ):
        """Merges `memory` into the model's memories, in place.

        The model's memories become one: `merge(memories + [memory],
        decay=decay)`, or `memory` alone with `replace=True`, attached with
        the compiled `strength` and kept by later `fit` calls. The memories
        are device state: when the attached memory is one diagonal memory
        of the same variables (every consolidation after the first, for
        diagonal memories), the new anchors, Fishers and scale are assigned
        to the variables the traced steps read, so the next step, even
        inside a running `fit`, uses them without retracing. Otherwise the
        memory is attached anew and the steps are traced again at their
        next call.

        Args:
            memory: a `FisherMemory` of the model's variables.
            decay: factor in `(0, 1]` on the older precision (as `merge`).
            replace: whether `memory` replaces the model's memories instead
                of being merged into them.
            num_train_examples: the number of examples the training loss
                averages over. By default the compiled one, else the one
                the memories are attached with.

        Returns:
            The model's memory now, a `FisherMemory`.

        Raises:
            ValueError: if `memory` is not a `FisherMemory` or does not fit
                the model, `decay` or `num_train_examples` is invalid, the
                model is not built, or the number of training examples is
                unknown.

        Example:

        ```python
        import keras
        import numpy as np

        import keras_memgeom

        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        y = np.arange(32) % 2
        model = keras_memgeom.Sequential(
            [keras.Input((4,)), keras.layers.Dense(2)]
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile("sgd", loss, num_train_examples=32)
        for task in (x, -x):
            model.fit(task, y, epochs=1, verbose=0)
            memory = keras_memgeom.FisherMemory.estimate(model, (task, y))
            model.consolidate(memory)
        print(model.memories[0].num_examples)  # 64
        ```
        """
        if not isinstance(memory, FisherMemory):
            raise ValueError(
                f"`memory` takes a FisherMemory; got {type(memory).__name__}."
            )
        num_train_examples = check_positive_int(
            "num_train_examples", num_train_examples, allow_none=True
        )
        memories = [memory] if replace else list(self.memories) + [memory]
        merged = merge(memories, decay=decay)
        num_train_examples = self._known_num_train_examples(num_train_examples)
        if not self._assign_memory(merged, num_train_examples):
            self.memories = [merged]
            self._attach_memories(num_train_examples)
            # A running `fit` calls `train_function` at its next step.
            self.make_train_function()
        return merged

    def _assign_memory(self, memory, num_train_examples):
        """Writes `memory` into the attached memory's variables, if it fits.

        Returns:
            Whether it did: the attachment is one memory of the same
            variables, all diagonal, at the compiled strength.
        """
        attachment = attachment_of(self)
        if (
            attachment is None
            or len(attachment.memories) != 1
            or attachment.strength != self.memory_strength
            or memory.kronecker
            or attachment.memories[0].kronecker
            or set(memory.paths) != set(attachment.memories[0].paths)
        ):
            return False
        paths = {id(v): path for path, v in memory.match(self)}
        if not all(
            isinstance(r, FisherRegularizer) and id(v) in paths
            for v, r in attachment.regularizers
        ):
            return False
        anchor, fisher = memory.anchor, memory.fisher
        for variable, regularizer in attachment.regularizers:
            path = paths[id(variable)]
            regularizer.anchor.assign(anchor[path])
            regularizer.fisher.assign(fisher[path])
        attachment.memories = [memory]
        attachment.num_examples = memory.num_examples
        attachment.set_num_train_examples(num_train_examples)
        self.memories = [memory]
        self._memory_num_train_examples = num_train_examples
        return True

    def fit(self, x=None, y=None, *args, **kwargs):
        backend.check_distribution()
        if self.memories:
            arguments = _FIT_SIGNATURE.bind(
                self, x, y, *args, **kwargs
            ).arguments
            self._attach_memories(
                self.num_train_examples
                or count_train_examples(
                    x,
                    validation_split=arguments.get("validation_split", 0.0),
                    model=self,
                    batch_size=arguments.get("batch_size"),
                )
            )
        return super().fit(x, y, *args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._attach_memories()
        return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        self._attach_memories()
        return super().test_on_batch(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._attach_memories()
        return super().evaluate(*args, **kwargs)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if self.memories and attachment_of(self) is None:
            raise ValueError(_UNKNOWN_NUM_TRAIN_EXAMPLES)
        loss = super().compute_loss(
            x, y, y_pred, sample_weight, training=training
        )
        if training and self.information_penalty_active:
            information = (
                self.frontal_lobe.information_strength
                * self.frontal_lobe.fisher_trace(self, x, y, sample_weight)
            )
            self.information_penalty_tracker.update_state(information)
            loss = self._add_penalty(loss, information)
        # Here, and not among `losses`, because the steps map the memory's
        # state (held apart, as `memory_state`) only while computing the loss.
        penalty = self.memory_penalty()
        if penalty is not None:
            self.memory_penalty_tracker.update_state(penalty)
            loss = self._add_penalty(loss, penalty)
        return loss

    def _add_penalty(self, loss, penalty):
        # As Keras adds `losses`: under a TensorFlow distribution strategy
        # each replica's share is scaled so that the replicas sum to it once.
        penalty = self._aggregate_additional_loss(penalty)
        return ops.add(loss, ops.cast(penalty, loss.dtype))

    def memory_penalty(self):
        """The attached memories' penalty at the current weights.

        Returns:
            A scalar tensor, or `None` when no memory is attached. Other
            regularizers of the same variables are not included.

        Example:

        ```python
        import keras
        import numpy as np

        import keras_memgeom

        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        y = np.arange(32) % 2
        model = keras_memgeom.Sequential(
            [keras.Input((4,)), keras.layers.Dense(2)]
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile("sgd", loss)
        memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
        model.compile("sgd", loss, memories=[memory], num_train_examples=32)
        print(float(model.memory_penalty()))  # 0.0 at the anchor
        ```
        """
        terms = [
            regularizer.memory_penalty(variable.value)
            for variable, regularizer in attached_regularizers(self)
        ]
        return ops.sum(ops.stack(terms)) if terms else None

    def _get_regularization_losses(self):
        # Keras's loop, less the memories' penalties (`compute_loss` adds
        # them); the variables' own regularizers stay.
        losses = []
        for variable in self.trainable_weights:
            regularizer = variable.regularizer
            if isinstance(regularizer, MEMORY_REGULARIZERS):
                regularizer = regularizer.base
            if regularizer is None:
                continue
            if in_stateless_scope() and not in_symbolic_scope():
                value = get_stateless_scope().get_current_value(variable)
            else:
                value = variable
            losses.append(regularizer(value))
        return losses

    def _known_num_train_examples(self, num_train_examples=None):
        """The `n` of the memories: given, compiled, or last attached."""
        num_train_examples = (
            num_train_examples
            or self.num_train_examples
            or self._memory_num_train_examples
        )
        if num_train_examples is None:
            raise ValueError(_UNKNOWN_NUM_TRAIN_EXAMPLES)
        return num_train_examples

    def _attach_memories(self, num_train_examples=None):
        """Attaches the compiled memories, or rescales them (no retracing)."""
        if not self.memories:
            return
        num_train_examples = self._known_num_train_examples(num_train_examples)
        if not self.built:
            raise ValueError(
                "The model must be built before its memories are attached: "
                "call it on a batch or `build` it (a memory remembers built "
                "variables)."
            )
        attachment = attachment_of(self)
        current = (
            attachment is not None
            and len(attachment.memories) == len(self.memories)
            and all(a is b for a, b in zip(attachment.memories, self.memories))
            and attachment.strength == self.memory_strength
        )
        if current:
            if num_train_examples != self._memory_num_train_examples:
                attachment.set_num_train_examples(num_train_examples)
                self._memory_num_train_examples = num_train_examples
        else:
            attach(
                self,
                self.memories,
                num_train_examples=num_train_examples,
                strength=self.memory_strength,
                normalization_statistics=self.normalization_statistics,
            )

    def _on_memories_attached(self, attachment, num_train_examples):
        # `keras_memgeom.attach` on this model means the same as compiling
        # with the memories: they are kept, saved and reattached.
        self.memories = list(attachment.memories)
        self.memory_strength = attachment.strength
        self.normalization_statistics = statistics.policy_of(self)
        self._memory_num_train_examples = int(num_train_examples)
        self.memory_state.hold(attachment.variables)

    def _on_memories_detached(self):
        self.memories = []
        self._memory_num_train_examples = None
        self.memory_state.hold([])

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["strength"] = self.memory_strength
            config["num_train_examples"] = (
                self.num_train_examples or self._memory_num_train_examples
            )
            config["normalization_statistics"] = self.normalization_statistics
            if self.frontal_lobe is not None:
                config["frontal_lobe"] = keras.saving.serialize_keras_object(
                    self.frontal_lobe
                )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Saves the model as `keras.Model.save`; a `.keras` file atomically.

        A save that fails midway leaves the previous file as it was.

        Args:
            filepath: the destination.
            overwrite: whether to replace an existing file without asking.
            zipped: as `keras.Model.save`.
            **kwargs: as `keras.Model.save`.
        """
        save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def save_assets(self, dir_path):
        for i, memory in enumerate(self.memories):
            memory.save(os.path.join(dir_path, f"memory_{i}.memory"))

    def load_assets(self, dir_path):
        names = sorted(
            (n for n in os.listdir(dir_path) if n.endswith(".memory")),
            key=lambda n: int(n.split("_")[1].split(".")[0]),
        )
        self.memories = [
            FisherMemory.load(os.path.join(dir_path, n)) for n in names
        ]
        if self.memories and self.built and self.num_train_examples is not None:
            self._attach_memories()


class MemoryState(keras.metrics.Metric):
    """The attached memories' device state, kept apart from the model's own.

    The anchors, Fishers or Kronecker factors and the penalty's scale are
    state that the traced steps read, but not the model's: code that handles
    `model.variables` or `non_trainable_variables` (statistics, averages,
    checkpoint surgery) never sees them. Keras hands a model's metrics'
    variables to its steps as state (JAX's stateless steps take them as
    arguments), so holding them here keeps them device state, never
    constants of a trace. It measures nothing: `reset_state` leaves the
    memory as it is and `result` reports nothing. The memories themselves
    are saved as the model's assets.
    """

    def __init__(self, name="memory_state", **kwargs):
        super().__init__(name=name, **kwargs)
        object.__setattr__(self, "_held", [])

    def hold(self, variables):
        """Holds `variables` as the memory's state, in place of the last."""
        object.__setattr__(self, "_held", list(variables))

    @property
    def variables(self):
        return list(self._held)

    def update_state(self, *args, **kwargs):
        pass

    def reset_state(self):
        pass

    def result(self):
        return {}


_FIT_SIGNATURE = inspect.signature(keras.Model.fit)

_UNKNOWN_NUM_TRAIN_EXAMPLES = (
    "The model has memories, but the number of examples its loss averages over "
    "is unknown, so their penalty cannot be scaled: pass `num_train_examples=` "
    "to `compile` (or call `fit`, which counts them)."
)
