"""A Keras model that takes memories as regularizers in `compile`."""

import os

import keras
from keras import ops
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

from keras_memgeom.memory.attach import attach, attached_regularizers, detach
from keras_memgeom.memory.fisher_memory import FisherMemory
from keras_memgeom.training.frontal_lobe import FrontalLobe


@keras.saving.register_keras_serializable(package="keras_memgeom")
class Model(keras.Model):
    """`keras.Model` with Fisher memories as drop-in regularizers.

    Build it like `keras.Model` (functional: `Model(inputs, outputs)`, or
    subclassed). `compile(..., regularizers=[memory, ...])` adds the memories'
    penalty (one term per memory) to the training loss, and `fit` reports it
    as the metric `memory_penalty` beside the loss. The memories are saved
    with the model by `model.save` and restored by `keras.saving.load_model`.

    `compile(..., frontal_lobe=FrontalLobe(...))` adds the frontal lobe's
    information penalty `lambda * trace(F_FL)` to the training loss (phase 2
    of the frontal-lobe procedure), reported as `information_penalty`;
    `set_information_penalty(False)` turns it off (phase 1), and the
    `keras_memgeom.callbacks.Consolidate` callback schedules both phases and
    the consolidation inside `fit`.

    Example:
    >>> inputs = keras.Input((64,))
    >>> outputs = keras.layers.Dense(10)(keras.layers.Dense(32, "relu")(inputs))
    >>> model = keras_memgeom.Model(inputs, outputs)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...               regularizers=[memory_a], strength=100)
    >>> model.fit(x_b, y_b, epochs=5)   # logs loss and memory_penalty
    """

    def __new__(cls, *args, **kwargs):
        # Like `keras.Model`: the functional form gets a functional class,
        # so that subclasses of `Model` stay subclassed models.
        if cls is Model and functional_init_arguments(args, kwargs):
            return keras.Model.__new__(FunctionalModel)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memories = []
        self.memory_strength = 1.0
        self.num_train_examples = None
        self.memory_penalty_tracker = keras.metrics.Mean(name="memory_penalty")
        self.frontal_lobe = None
        self.information_penalty_active = False
        self.information_penalty_tracker = None

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
                over; by default the size of the arrays given to `fit`.
            frontal_lobe: a `FrontalLobe` whose information penalty is added
                to the training loss (on until `set_information_penalty(False)`).
            **kwargs: as `keras.Model.compile`.

        Raises:
            ValueError: if a regularizer is not a `FisherMemory` or
                `frontal_lobe` is not a `FrontalLobe`.
        """
        if frontal_lobe is not None and not isinstance(frontal_lobe, FrontalLobe):
            raise ValueError(
                f"`frontal_lobe` takes a FrontalLobe; got {type(frontal_lobe).__name__}."
            )
        regularizers = list(regularizers or [])
        for memory in regularizers:
            if not isinstance(memory, FisherMemory):
                raise ValueError(
                    "`regularizers` takes FisherMemory objects; got "
                    f"{type(memory).__name__}. Attach per-variable Keras "
                    "regularizers to the layers instead."
                )
        super().compile(*args, **kwargs)
        if self.memories:
            detach(self)  # the memories of the previous compile no longer apply
        self.memories = regularizers
        self.memory_strength = float(strength)
        self.num_train_examples = num_train_examples
        self.frontal_lobe = frontal_lobe
        self.information_penalty_active = frontal_lobe is not None
        if frontal_lobe is not None and self.information_penalty_tracker is None:
            self.information_penalty_tracker = keras.metrics.Mean(name="information_penalty")

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

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["strength"] = self.memory_strength
            config["num_train_examples"] = self.num_train_examples
            if self.frontal_lobe is not None:
                config["frontal_lobe"] = keras.saving.serialize_keras_object(self.frontal_lobe)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        if self.memories:
            num_train_examples = self.num_train_examples or _num_examples(x)
            attach(
                self,
                self.memories,
                num_train_examples=num_train_examples,
                strength=self.memory_strength,
            )
        return super().fit(x, y, *args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if training and self.information_penalty_active:
            information = self.frontal_lobe.strength * self.frontal_lobe.fisher_trace(
                self, x, y, sample_weight
            )
            self.information_penalty_tracker.update_state(information)
            loss = ops.add(loss, ops.cast(information, loss.dtype))
        # Evaluated again for the metric; traced steps dedupe the arithmetic.
        terms = [reg(variable.value) for variable, reg in attached_regularizers(self)]
        if terms:
            self.memory_penalty_tracker.update_state(ops.sum(ops.stack(terms)))
        return loss

    def save_assets(self, dir_path):
        for i, memory in enumerate(self.memories):
            memory.save(os.path.join(dir_path, f"memory_{i}.memory"))

    def load_assets(self, dir_path):
        names = sorted(
            (n for n in os.listdir(dir_path) if n.endswith(".memory")),
            key=lambda n: int(n.split("_")[1].split(".")[0]),
        )
        self.memories = [FisherMemory.load(os.path.join(dir_path, n)) for n in names]


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FunctionalModel(Model, Functional):
    """The functional form of `Model`, built by `Model(inputs, outputs)`."""


def _num_examples(x):
    """Number of examples in arrays passed to `fit`.

    Raises:
        ValueError: for datasets and generators, whose size is unknown here.
    """
    leaves = keras.tree.flatten(x)
    if leaves and hasattr(leaves[0], "shape") and len(leaves[0].shape) > 0:
        return int(leaves[0].shape[0])
    raise ValueError(
        "Cannot tell how many examples the training loss averages over from "
        f"{type(x).__name__}: pass `num_train_examples=` to `compile`."
    )
