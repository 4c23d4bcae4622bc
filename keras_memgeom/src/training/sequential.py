"""A Keras `Sequential` model taking memories as regularizers in `compile`."""

import keras

from keras_memgeom.src.training.memory_trainer import MemoryTrainer


@keras.saving.register_keras_serializable(package="keras_memgeom")
class Sequential(MemoryTrainer, keras.Sequential):
    """`keras.Sequential` with Fisher memories as drop-in regularizers.

    The same `compile(..., memories=[memory], strength=,
    num_train_examples=, frontal_lobe=)` as `keras_memgeom.Model`, for a
    stack of layers; `keras_memgeom.Model`'s example shows the whole
    workflow.

    Args:
        *args: as `keras.Sequential`: `layers` (the layers, default none
            yet), `trainable` (default `True`), `name`.
        **kwargs: as `keras.Sequential`.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    model = keras_memgeom.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    model.compile("adam", loss, memories=[memory], num_train_examples=64)
    ```
    """
