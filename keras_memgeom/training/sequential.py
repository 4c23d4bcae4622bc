"""A Keras `Sequential` model that takes memories as regularizers in `compile`."""

import keras

from keras_memgeom.training.memory_trainer import MemoryTrainer


@keras.saving.register_keras_serializable(package="keras_memgeom")
class Sequential(MemoryTrainer, keras.Sequential):
    """`keras.Sequential` with Fisher memories as drop-in regularizers.

    The same `compile(..., regularizers=[memory], strength=,
    num_train_examples=, frontal_lobe=)` as `keras_memgeom.Model`, for a
    stack of layers.

    Args:
        layers: the layers, as for `keras.Sequential`.
        trainable: whether the model is trainable.
        name: the model's name.

    Example:
    >>> model = keras_memgeom.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...               regularizers=[memory_a], strength=100)
    >>> model.fit(x_b, y_b, epochs=5)
    """
