"""What the package's models add to Keras training: memories, a frontal lobe."""

import inspect
import os

import keras
from keras import ops

from keras_memgeom import backend
from keras_memgeom.memory.attach import attach
from keras_memgeom.memory.attach import attached_regularizers
from keras_memgeom.memory.attach import attachment_of
from keras_memgeom.memory.attach import detach
from keras_memgeom.memory.attach import memory_list
from keras_memgeom.memory.fisher_memory import FisherMemory
from keras_memgeom.training.frontal_lobe import FrontalLobe
from keras_memgeom.training.train_examples import count_train_examples
from keras_memgeom.utils.checks import check_number
from keras_memgeom.utils.checks import check_positive_int


class MemoryTrainer:
    """Mixin for `keras.Model`: Fisher memories as compile-time regularizers.

    `compile(..., regularizers=[memory, ...], strength=, num_train_examples=)`
    adds the memories' penalty (one term per memory) to the loss on every
    path that computes it: `fit`, `train_on_batch`, `evaluate`,
    `test_on_batch` and custom loops calling `compute_loss`. `fit` and
    `evaluate` report it as the metric `memory_penalty`. The memories are
    device state (non-trainable variables the traced step reads, not
    constants), so refitting, even on a different number of examples, does
    not retrace the step. They are saved with the model as assets and
    restored by `keras.saving.load_model`; layer configs stay free of them.

    `compile(..., frontal_lobe=FrontalLobe(...))` adds the frontal lobe's
    information penalty `information_strength * trace(F_FL)` to the training
    loss (phase 2 of the frontal-lobe procedure), reported as
    `information_penalty`; `set_information_penalty(False)` turns it off.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memories = []
        self.memory_strength = 1.0
        self.num_train_examples = None
        self._memory_num_train_examples = None
        self.memory_penalty_tracker = keras.metrics.Mean(name="memory_penalty")
        self._memory_terms = None
        self.frontal_lobe = None
        self.information_penalty_active = False
        self.information_penalty_tracker = None

    @property
    def variables(self):
        # The attached memory is state of the model's steps but not a
        # weight: it is in `variables` (so traced steps take it as state)
        # and not in `weights` (so it is neither saved twice nor trained).
        variables = super().variables
        attachment = attachment_of(self)
        if attachment is not None:
            variables = variables + attachment.variables
        return variables

    def compile(
        self,
        *args,
        regularizers=None,
        strength=1.0,
        num_train_examples=None,
        frontal_lobe=None,
        **kwargs,
    ):
        """Configures the model for training, as `keras.Model.compile`.

        Args:
            *args: as `keras.Model.compile`.
            regularizers: a list of `FisherMemory` whose penalties are added
                to the loss.
            strength: the memories' strength (`1` is the Laplace scaling).
            num_train_examples: the number of examples the loss averages
                over. By default `fit` counts them: the arrays' length less
                the `validation_split` part, or one pass over a finite
                `tf.data.Dataset`. Sample weights do not change it (Keras
                averages a weighted loss over the batch size). Needed for
                `train_on_batch`, `evaluate` or a custom loop before any
                `fit`, and for Python generators and `PyDataset`s.
            frontal_lobe: a `FrontalLobe` whose information penalty is added
                to the training loss (on until
                `set_information_penalty(False)`).
            **kwargs: as `keras.Model.compile`.

        Raises:
            ValueError: if `regularizers` is not a list of `FisherMemory`,
                `strength` is not a finite non-negative number,
                `num_train_examples` is not a positive whole number,
                `frontal_lobe` is not a `FrontalLobe`, or a memory does not
                fit the model.
        """
        if frontal_lobe is not None and not isinstance(
            frontal_lobe, FrontalLobe
        ):
            raise ValueError(
                "`frontal_lobe` takes a FrontalLobe; got "
                f"{type(frontal_lobe).__name__}."
            )
        if regularizers is not None and not isinstance(
            regularizers, (list, tuple)
        ):
            raise ValueError(
                "`regularizers` takes a list of FisherMemory objects; got "
                f"{type(regularizers).__name__}. Write `regularizers=[memory]`."
            )
        memories = memory_list(regularizers or [], "regularizers")
        strength = check_number("strength", strength, minimum=0.0)
        num_train_examples = check_positive_int(
            "num_train_examples", num_train_examples, allow_none=True
        )
        super().compile(*args, **kwargs)
        detach(self)  # the memories of the previous compile no longer apply
        self.memories = memories
        self.memory_strength = strength
        self.num_train_examples = num_train_examples
        self._memory_num_train_examples = None
        self.frontal_lobe = frontal_lobe
        self.information_penalty_active = frontal_lobe is not None
        if (
            frontal_lobe is not None
            and self.information_penalty_tracker is None
        ):
            self.information_penalty_tracker = keras.metrics.Mean(
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

    def fit(self, x=None, y=None, *args, **kwargs):
        backend.check_distribution()
        if self.memories:
            arguments = _FIT_SIGNATURE.bind(
                self, x, y, *args, **kwargs
            ).arguments
            split = arguments.get("validation_split", 0.0)
            self._attach_memories(
                self.num_train_examples
                or count_train_examples(x, validation_split=split)
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
        self._memory_terms = None
        loss = super().compute_loss(
            x, y, y_pred, sample_weight, training=training
        )
        if training and self.information_penalty_active:
            information = (
                self.frontal_lobe.information_strength
                * self.frontal_lobe.fisher_trace(self, x, y, sample_weight)
            )
            self.information_penalty_tracker.update_state(information)
            loss = ops.add(loss, ops.cast(information, loss.dtype))
        # The metric reads the penalties Keras just added to the loss where
        # they were evaluated for it (eager torch would compute them twice);
        # where Keras took them from an earlier forward pass (jax), they
        # are evaluated again and the compiler merges the two.
        terms = self._memory_terms
        self._memory_terms = None
        if terms is None:
            terms = [
                reg(variable.value)
                for variable, reg in attached_regularizers(self)
            ]
        if terms:
            self.memory_penalty_tracker.update_state(ops.sum(ops.stack(terms)))
        return loss

    def _get_regularization_losses(self):
        losses = super()._get_regularization_losses()
        memory = {id(reg) for _, reg in attached_regularizers(self)}
        if memory:
            regularized = [
                v for v in self.trainable_weights if v.regularizer is not None
            ]
            self._memory_terms = [
                loss
                for variable, loss in zip(regularized, losses)
                if id(variable.regularizer) in memory
            ]
        return losses

    def _attach_memories(self, num_train_examples=None):
        """Attaches the compiled memories, or rescales them (no retracing)."""
        if not self.memories:
            return
        num_train_examples = (
            num_train_examples
            or self.num_train_examples
            or self._memory_num_train_examples
        )
        if num_train_examples is None:
            raise ValueError(_UNKNOWN_NUM_TRAIN_EXAMPLES)
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
            )

    def _on_memories_attached(self, attachment, num_train_examples):
        # `keras_memgeom.attach` on this model means the same as compiling
        # with the memories: they are kept, saved and reattached.
        self.memories = list(attachment.memories)
        self.memory_strength = attachment.strength
        self._memory_num_train_examples = int(num_train_examples)

    def _on_memories_detached(self):
        self.memories = []
        self._memory_num_train_examples = None

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["strength"] = self.memory_strength
            config["num_train_examples"] = (
                self.num_train_examples or self._memory_num_train_examples
            )
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


_FIT_SIGNATURE = inspect.signature(keras.Model.fit)

_UNKNOWN_NUM_TRAIN_EXAMPLES = (
    "The model has memories, but the number of examples its loss averages over "
    "is unknown, so their penalty cannot be scaled: pass `num_train_examples=` "
    "to `compile` (or call `fit`, which counts them)."
)
