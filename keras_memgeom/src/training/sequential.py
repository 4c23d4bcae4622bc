"""A Keras `Sequential` model taking memories as regularizers in `compile`."""

import keras

from keras_memgeom.src.training.memory_trainer import MemoryTrainer


@keras.saving.register_keras_serializable(package="keras_memgeom")
class Sequential(MemoryTrainer, keras.Sequential):
    """`keras.Sequential` with Fisher memories as drop-in regularizers.

    The same `compile(..., memories=[memory], strength=,
    num_train_examples=, frontal_lobe=)` as `keras_memgeom.Model`, for a
    stack of layers.

    Args:
        layers: the layers, as for `keras.Sequential`.
        trainable: whether the model is trainable.
        name: the model's name.

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
    model.fit(x, y, epochs=2, verbose=0)
    memory_a = keras_memgeom.FisherMemory.estimate(model, (x, y))

    model.compile("adam", loss, memories=[memory_a], strength=100)
    model.fit(x[:, ::-1], y, epochs=2, verbose=0)
    ```
    """
