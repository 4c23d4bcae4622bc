"""A Fisher memory of one variable as a Keras regularizer."""

import base64

import keras
import numpy as np
from keras.src.saving.keras_saveable import KerasSaveable

from keras_memgeom.src.memory.penalty import quadratic_penalty
from keras_memgeom.src.utils.checks import check_number


def _encode(array):
    array = np.ascontiguousarray(array, dtype="float32")
    return {
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(config):
    # Files written before the arrays moved to the weights file carry them
    # base64-encoded in the config.
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
class FisherRegularizer(KerasSaveable, keras.regularizers.Regularizer):
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
    a variable shared by the regularizers of one model. Set as a layer's
    `*_regularizer`, `model.save` keeps `anchor` and `fisher` in the weights
    file (the config holds only their shape), so a saved model keeps its
    penalty without its config growing with the model.

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
        value = self.memory_penalty(x)
        if self.base is not None:
            value = keras.ops.add(value, self.base(x))
        return value

    def memory_penalty(self, x):
        """The memory's penalty at `x`, without `base`."""
        return quadratic_penalty(
            x, self.anchor, self.fisher, self.scale, self.offset
        )

    def get_config(self):
        # Only the shape: the arrays go to the weights file
        # (`save_own_variables`), where Keras keeps every other weight.
        return {
            "shape": list(self.anchor.shape),
            "scale": float(keras.ops.convert_to_numpy(self.scale)),
            "offset": self.offset,
            "base": keras.regularizers.serialize(self.base)
            if self.base is not None
            else None,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        shape = config.pop("shape", None)
        if shape is not None:
            # The arrays follow from the weights file (`load_own_variables`).
            config["anchor"] = np.zeros(shape, "float32")
            config["fisher"] = np.zeros(shape, "float32")
        return cls(**config)

    def save_own_variables(self, store):
        """Writes the anchor and the Fisher into a Keras weights store."""
        store["anchor"] = keras.ops.convert_to_numpy(self.anchor)
        store["fisher"] = keras.ops.convert_to_numpy(self.fisher)

    def load_own_variables(self, store):
        """Reads the anchor and the Fisher from a Keras weights store."""
        load_state(self, store, {"anchor": self.anchor, "fisher": self.fisher})

    def _obj_type(self):
        # Keras's saving walks it like a loss: an object with state and no
        # saveable children.
        return "Loss"

    # Copies and pickles copy the object, not a saved model (KerasSaveable).
    __reduce__ = object.__reduce__


def load_state(owner, store, variables):
    """Assigns `variables` (name to variable) from a Keras weights store.

    A store with no entries leaves them as they are: weights saved without
    this memory (`load_weights` into a model with a memory attached), or
    a file written when the arrays travelled in the config.

    Raises:
        ValueError: naming `owner` and the entry, if one is missing or has
            another shape.
    """
    if len(store) == 0:
        return
    for name, variable in variables.items():
        try:
            value = np.asarray(store[name])
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"The saved state of {type(owner).__name__} has no `{name}`: "
                "the file was not written with this memory."
            ) from error
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"The saved `{name}` of {type(owner).__name__} has shape "
                f"{value.shape}; the memory expects {tuple(variable.shape)}."
            )
        variable.assign(value)
