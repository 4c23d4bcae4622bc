"""Cloning a model without losing the package's model class or settings."""

import keras


def clone_model(model, clone_function=None):
    """`keras.models.clone_model` that keeps the package's model classes.

    Keras clones every `Sequential` as a plain `keras.Sequential` and, when
    the original is compiled, compiles the clone with the original's compile
    config. For a compiled `keras_memgeom.Sequential` that config holds the
    memory settings (`strength`, `num_train_examples`, `frontal_lobe`),
    which a plain model does not take. This clones the layers as Keras does,
    rebuilds the clone in the original's class, and then compiles it with
    the original's settings. The clone has new weights, like Keras's.

    Args:
        model: a functional or `Sequential` Keras model, a package model or
            not, compiled or not.
        clone_function: as in `keras.models.clone_model`: called on each
            layer to make its clone; `None` clones each layer from its
            config.

    Returns:
        A new model of the same class, compiled like `model` if it was.

    Example:

    ```python
    import keras
    import keras_memgeom
    from keras_memgeom.src.utils.clone_model import clone_model

    model = keras_memgeom.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3)]
    )
    model.compile("sgd", "mse", strength=10.0)
    clone = clone_model(model)
    print(type(clone).__name__, clone.memory_strength)  # Sequential 10.0
    ```
    """
    kwargs = (
        {} if clone_function is None else {"clone_function": clone_function}
    )
    compile_config = model.get_compile_config() if model.compiled else None
    # Keras compiles the clone itself when the original is compiled; it is
    # compiled below instead, once it has the original's class.
    compiled, model.compiled = model.compiled, False
    try:
        clone = keras.models.clone_model(model, **kwargs)
    finally:
        model.compiled = compiled
    if isinstance(model, keras.Sequential) and type(clone) is not type(model):
        clone = type(model)(
            list(clone._layers), name=model.name, trainable=model.trainable
        )
    if compile_config:
        clone.compile_from_config(compile_config)
    return clone
