"""A Keras model that takes memories as regularizers in `compile`."""

import keras
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

from keras_memgeom.training.memory_trainer import MemoryTrainer


@keras.saving.register_keras_serializable(package="keras_memgeom")
class Model(MemoryTrainer, keras.Model):
    """`keras.Model` with Fisher memories as drop-in regularizers.

    Build it like `keras.Model` (functional: `Model(inputs, outputs)`, or
    subclassed). `compile(..., regularizers=[memory, ...])` adds the memories'
    penalty (one term per memory) to the loss of `fit`, `train_on_batch`,
    `evaluate` and custom loops calling `compute_loss`, reported as the
    metric `memory_penalty`. The penalty is added by overriding
    `compute_loss` (Keras's own `train_step` then differentiates it on every
    backend, keeping sample weights, metrics and loss scaling) and `fit`
    (which counts the examples the loss averages over). The memories are
    device state, saved with the model by `model.save` and restored by
    `keras.saving.load_model`. See `MemoryTrainer` for the frontal lobe.

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


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FunctionalModel(Model, Functional):
    """The functional form of `Model`, built by `Model(inputs, outputs)`."""
