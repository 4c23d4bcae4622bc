"""A Fisher memory of one variable as a Keras regularizer."""

import base64

import keras
import numpy as np

from keras_memgeom.memory.penalty import quadratic_penalty
from keras_memgeom.utils.checks import check_number


def _encode(array):
    array = np.ascontiguousarray(array, dtype="float32")
    return {
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(config):
    if isinstance(config, dict):
        data = np.frombuffer(base64.b64decode(config["data"]), dtype="float32")
        return data.reshape(config["shape"])
    return np.asarray(keras.ops.convert_to_numpy(config), dtype="float32")


def memory_state(value, name, like=None):
    """A non-trainable `keras.Variable` for memory state, laid out like `like`.

    A traced step reads it as state and never bakes it in. Under a
    `keras.distribution` it is sharded like the model variable `like` it
    remembers (when shapes agree), so model parallelism splits memories as
    it splits weights.
    """
    layout = None
    if like is not None and tuple(like.shape) == tuple(np.shape(value)):
        layout = (
            like._layout
        )  # Keras keeps a variable's distribution layout here
    return keras.Variable(
        value, trainable=False, dtype="float32", name=name, layout=layout
    )


@keras.saving.register_keras_serializable(package="keras_memgeom")
class FisherRegularizer(keras.regularizers.Regularizer):
    """Penalty `scale * (sum(fisher * (w - anchor)^2) + offset)` on a variable.

    The Laplace approximation of a remembered task: `fisher` is the
    per-example diagonal Fisher at `anchor`, and for a memory of `n` examples
    used while training on `num_train_examples` others,
    `scale = strength / 2 * n / num_train_examples`. `offset` is a constant
    (it keeps the value of a sum of several memories exact once they are
    merged into one quadratic). A regularizer the variable had before can be
    kept as `base` and is added.

    `anchor`, `fisher` and `scale` are held as non-trainable `keras.Variable`s
    (on the device), so a compiled step reads them as state; `scale` may be
    a variable shared by the regularizers of one model.

    Args:
        anchor: array, the remembered value of the variable.
        fisher: array of the same shape, non-negative.
        scale: a float, or a scalar `keras.Variable` to share.
        offset: float, in units of `scale`.
        base: another regularizer to add, or `None`.
        like: the variable it regularizes, whose distribution layout the
            memory's arrays take, or `None`.

    Returns:
        Calling it on a value returns the scalar penalty.

    Raises:
        ValueError: if `anchor` and `fisher` differ in shape, or `scale` or
            `offset` is not a finite number.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    regularizer = keras_memgeom.FisherRegularizer(
        anchor=np.zeros(3), fisher=np.ones(3), scale=0.5
    )
    print(float(regularizer(np.array([1.0, 2.0, 0.0]))))  # 2.5
    ```
    """

    def __init__(
        self, anchor, fisher, scale=1.0, offset=0.0, base=None, like=None
    ):
        anchor, fisher = _decode(anchor), _decode(fisher)
        if anchor.shape != fisher.shape:
            raise ValueError(
                f"`anchor` has shape {anchor.shape} but `fisher` has shape "
                f"{fisher.shape}."
            )
        self.anchor = memory_state(anchor, "memory_anchor", like)
        self.fisher = memory_state(fisher, "memory_fisher", like)
        if not isinstance(scale, keras.Variable):
            scale = memory_state(
                check_number("scale", scale, minimum=0.0), "memory_scale"
            )
        self.scale = scale
        self.offset = check_number("offset", offset)
        self.base = keras.regularizers.get(base)

    @property
    def variables(self):
        """The state the penalty reads (not a shared scale)."""
        return [self.anchor, self.fisher]

    def __call__(self, x):
        value = quadratic_penalty(
            x, self.anchor, self.fisher, self.scale, self.offset
        )
        if self.base is not None:
            value = keras.ops.add(value, self.base(x))
        return value

    def get_config(self):
        # The arrays travel in the config only where a plain Keras model
        # keeps the regularizer in its layers' configs; the package's models
        # save memories as assets and never serialize these.
        return {
            "anchor": _encode(keras.ops.convert_to_numpy(self.anchor)),
            "fisher": _encode(keras.ops.convert_to_numpy(self.fisher)),
            "scale": float(keras.ops.convert_to_numpy(self.scale)),
            "offset": self.offset,
            "base": keras.regularizers.serialize(self.base)
            if self.base is not None
            else None,
        }
