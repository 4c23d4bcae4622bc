"""Task-incremental outputs: the logits of other tasks' classes masked."""

import keras
import numpy as np

# Far below any logit, yet finite in float32 so that gradients stay finite.
_MASKED = -1e9


@keras.saving.register_keras_serializable(package="keras_memgeom")
class MaskedLogits(keras.layers.Layer):
    """Keeps the logits of some classes and masks the others out.

    Adds `-1e9` to the logits of every class not in `classes`, so that
    softmax, cross-entropy and argmax see only the task's classes. This is
    one output head per task written as one shared output layer: the rows
    of the last layer that belong to a task are that task's head (van de
    Ven & Tolias 2019, task-incremental learning).

    Args:
        classes: the output indices to keep.
        num_outputs: the number of logits.
        **kwargs: as `keras.layers.Layer` (`name`, `dtype`, ...).

    Input shape:
        N-D tensor of logits with shape `(batch_size, ..., num_outputs)`.

    Output shape:
        The same shape as the input.

    Example:

    ```python
    import keras

    import keras_memgeom

    layer = keras_memgeom.continual.MaskedLogits((2, 3), num_outputs=4)
    logits = layer(keras.ops.ones((1, 4)))
    print(keras.ops.argmax(logits, axis=-1))  # [2]: class 0 and 1 are masked
    ```
    """

    def __init__(self, classes, num_outputs, **kwargs):
        super().__init__(**kwargs)
        self.classes = tuple(int(c) for c in classes)
        self.num_outputs = int(num_outputs)
        offset = np.full((self.num_outputs,), _MASKED, "float32")
        offset[list(self.classes)] = 0.0
        self._offset = offset

    def call(self, logits):
        return logits + keras.ops.cast(self._offset, logits.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "classes": list(self.classes),
            "num_outputs": self.num_outputs,
        }


def masked_model(model, classes, num_outputs):
    """A model sharing `model`'s variables whose logits are masked.

    Its trainable variables are `model`'s own (the same objects, paths and
    order), so a `FisherMemory` estimated on it fits `model`.

    Args:
        model: a functional or `Sequential` Keras model with one output.
        classes: the output indices to keep.
        num_outputs: the number of logits.

    Returns:
        An uncompiled `keras.Model`.

    Raises:
        ValueError: for a model without symbolic inputs (a subclassed model
            that was never called on a `keras.Input`).
    """
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            "Task-incremental streams mask the logits of model "
            f"{model.name!r}, which needs a functional or Sequential model "
            "with known inputs."
        )
    masked = MaskedLogits(classes, num_outputs, name="masked_logits")(
        outputs[0]
    )
    # One input as a tensor, not a list: the model is called on arrays.
    inputs = inputs[0] if len(inputs) == 1 else inputs
    return keras.Model(inputs, masked, name=f"{model.name}_masked")


@keras.saving.register_keras_serializable(package="keras_memgeom")
class MaskedLoss(keras.losses.Loss):
    """A loss on logits with the logits of other tasks' classes masked.

    Args:
        loss: the loss on logits, e.g. sparse categorical cross-entropy.
        classes: the output indices to keep.
        num_outputs: the number of logits.
        **kwargs: as `keras.losses.Loss` (`name`, `reduction`, `dtype`).
    """

    def __init__(self, loss, classes, num_outputs, **kwargs):
        loss = keras.losses.get(loss)
        kwargs.setdefault("name", f"masked_{getattr(loss, 'name', 'loss')}")
        super().__init__(**kwargs)
        self.loss = loss
        # Per-example values: `Loss.__call__` reduces them itself.
        self.fn = loss.call if isinstance(loss, keras.losses.Loss) else loss
        self.mask = MaskedLogits(classes, num_outputs)

    def call(self, y_true, y_pred):
        return self.fn(y_true, self.mask(y_pred))

    def get_config(self):
        return {
            **super().get_config(),
            "loss": keras.losses.serialize(self.loss),
            "classes": list(self.mask.classes),
            "num_outputs": self.mask.num_outputs,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.losses.deserialize(config["loss"])
        return cls(**config)
