"""A Fisher memory of one variable as a Keras regularizer."""

import base64

import keras
import numpy as np
from keras import ops

from keras_memgeom.memory.penalty import quadratic_penalty


def _encode(array):
    array = np.ascontiguousarray(array, dtype="float32")
    return {"shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode(config):
    if isinstance(config, dict):
        data = np.frombuffer(base64.b64decode(config["data"]), dtype="float32")
        return data.reshape(config["shape"])
    return np.asarray(config, dtype="float32")


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FisherRegularizer(keras.regularizers.Regularizer):
    """Penalty `scale * sum(fisher * (w - anchor)^2) + offset` on one variable.

    The Laplace approximation of a remembered task: `fisher` is the
    per-example diagonal Fisher at `anchor`, and for a memory of `n` examples
    used while training on `num_train_examples` others,
    `scale = strength / 2 * n / num_train_examples`. `offset` is a constant
    (it keeps the value of a sum of several memories exact once they are
    merged into one quadratic). A regularizer the variable had before can be
    kept as `base` and is added.

    Args:
        anchor: array, the remembered value of the variable.
        fisher: array of the same shape, non-negative.
        scale: float.
        offset: float.
        base: another regularizer to add, or `None`.

    Returns:
        Calling it on a value returns the scalar penalty.

    Raises:
        ValueError: if `anchor` and `fisher` differ in shape.

    Example:
    >>> reg = FisherRegularizer(anchor=np.zeros(3), fisher=np.ones(3), scale=0.5)
    >>> float(reg(np.array([1.0, 2.0, 0.0])))
    2.5
    """

    def __init__(self, anchor, fisher, scale=1.0, offset=0.0, base=None):
        anchor, fisher = _decode(anchor), _decode(fisher)
        if anchor.shape != fisher.shape:
            raise ValueError(
                f"`anchor` has shape {anchor.shape} but `fisher` has shape {fisher.shape}."
            )
        self.anchor = anchor
        self.fisher = fisher
        self.scale = float(scale)
        self.offset = float(offset)
        self.base = keras.regularizers.get(base)
        # Device tensors made once, eagerly, so traced steps reuse them.
        self._anchor = ops.convert_to_tensor(anchor)
        self._fisher = ops.convert_to_tensor(fisher)

    def __call__(self, x):
        value = quadratic_penalty(x, self._anchor, self._fisher, self.scale, self.offset)
        if self.base is not None:
            value = ops.add(value, self.base(x))
        return value

    def get_config(self):
        return {
            "anchor": _encode(self.anchor),
            "fisher": _encode(self.fisher),
            "scale": self.scale,
            "offset": self.offset,
            "base": keras.regularizers.serialize(self.base) if self.base is not None else None,
        }
