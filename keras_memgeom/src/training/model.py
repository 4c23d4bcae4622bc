"""A Keras model that takes memories as regularizers in `compile`."""

import keras
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

from keras_memgeom.src.training.memory_trainer import MemoryTrainer


@keras.saving.register_keras_serializable(package="keras_memgeom")
class Model(MemoryTrainer, keras.Model):
    """`keras.Model` with Fisher memories as drop-in regularizers.

    Build it like `keras.Model` (functional: `Model(inputs, outputs)`, or
    subclassed). `compile(..., memories=[memory, ...])` adds the memories'
    penalty (one term per memory) to the loss of `fit`, `train_on_batch`,
    `evaluate` and custom loops calling `compute_loss`, reported as the
    metric `memory_penalty`. The penalty is added by overriding
    `compute_loss` (Keras's own `train_step` then differentiates it on every
    backend, keeping sample weights, metrics and loss scaling) and `fit`
    (which counts the examples the loss averages over). The memories are
    device state, saved with the model by `model.save` and restored by
    `keras.saving.load_model`. See `MemoryTrainer` for the frontal lobe.

    Args:
        *args: as `keras.Model`: `inputs` and `outputs` for the functional
            form, nothing for a subclass.
        **kwargs: as `keras.Model` (`name`, `trainable`, ...).

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(3)(hidden))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    model.fit(x, y, epochs=2, verbose=0)
    memory_a = keras_memgeom.FisherMemory.estimate(model, (x, y))

    model.compile("adam", loss, memories=[memory_a], strength=100)
    history = model.fit(x[:, ::-1], y, epochs=2, verbose=0)
    print(sorted(history.history))  # ['loss', 'memory_penalty']
    ```
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
