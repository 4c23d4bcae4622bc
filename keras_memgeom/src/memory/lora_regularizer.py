"""A memory of a weight that LoRA froze, as a regularizer of its factors."""

import keras
from keras import ops

# A LoRA layer's frozen weight and the names of its two factors.
_FACTOR_NAMES = {
    "_kernel": ("lora_kernel_a", "lora_kernel_b"),
    "_embeddings": ("lora_embeddings_a", "lora_embeddings_b"),
}


def lora_factors(layer):
    """A LoRA layer's frozen weight, its factors and their scale.

    After `layer.enable_lora(rank)` a `Dense`, `EinsumDense` or `Embedding`
    computes with `W + lora_alpha / lora_rank * A @ B`, where `W` (the
    kernel, or the embeddings) is frozen and only `A` and `B` train.

    Args:
        layer: a Keras layer with LoRA enabled.

    Returns:
        `(weight, a, b, scale)`: the frozen variable `W`, the factor
        variables `A` and `B`, and the float `lora_alpha / lora_rank`.

    Raises:
        ValueError: naming the layer, if LoRA is not enabled on it, it is
            quantized, or its factors are not those of a Keras `Dense`,
            `EinsumDense` or `Embedding`.

    Example:

    ```python
    import keras

    from keras_memgeom.src.memory.lora_regularizer import lora_factors

    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.enable_lora(2, lora_alpha=4)
    weight, a, b, scale = lora_factors(layer)
    print(weight.path, a.shape, b.shape)  # dense/kernel (4, 2) (2, 3)
    print(scale)  # lora_alpha / rank = 2.0
    ```
    """
    if not getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"The layer {layer.name!r} has no LoRA factors: call "
            "`layer.enable_lora(rank)` first."
        )
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            f"The layer {layer.name!r} is quantized "
            f"({layer.quantization_mode}): a memory of its frozen weight "
            "needs the float weight."
        )
    for frozen, (a, b) in _FACTOR_NAMES.items():
        if hasattr(layer, frozen) and hasattr(layer, a):
            return (
                getattr(layer, frozen),
                getattr(layer, a),
                getattr(layer, b),
                layer.lora_alpha / layer.lora_rank,
            )
    raise ValueError(
        f"The layer {layer.name!r} ({type(layer).__name__}) has LoRA factors "
        "other than those of a Keras Dense, EinsumDense or Embedding."
    )


def effective_weight(layer, a=None):
    """The weight a LoRA layer computes with: `W + alpha / rank * A @ B`.

    Args:
        layer: a Keras layer with LoRA enabled.
        a: the value of the factor `A` to use, or `None` for its current
            value (a regularizer of `A` passes the value it is called on).

    Returns:
        A float32 tensor of the frozen weight's shape; its gradient flows
        to `a` (or `A`) and `B`.

    Raises:
        ValueError: naming the layer, if LoRA is not enabled on it, it is
            quantized, or it is not a Keras `Dense`, `EinsumDense` or
            `Embedding`.

    Example:

    ```python
    import keras
    import numpy as np

    from keras_memgeom.memory import effective_weight

    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.enable_lora(2)
    # LoRA starts with B = 0: the effective weight is the frozen kernel.
    weight = keras.ops.convert_to_numpy(effective_weight(layer))
    print(np.allclose(weight, keras.ops.convert_to_numpy(layer.kernel)))  # True
    ```
    """
    weight, factor_a, factor_b, scale = lora_factors(layer)
    a = factor_a.value if a is None else ops.convert_to_tensor(a)
    delta = ops.matmul(ops.cast(a, "float32"), factor_b.value)
    return ops.add(
        ops.cast(weight.value, "float32"), ops.multiply(delta, scale)
    )


def lora_layers(model):
    """Dict from the id of each weight `enable_lora` froze to its layer.

    Layers set non-trainable are left out (their factors do not train), and
    so are quantized ones (their frozen weight is not a float weight a
    memory remembers).
    """
    layers = {}
    for layer in model._flatten_layers(include_self=False):
        if not (getattr(layer, "lora_enabled", False) and layer.trainable):
            continue
        try:
            layers[id(lora_factors(layer)[0])] = layer
        except ValueError:
            continue  # a memory of it matches nothing: `match` names it
    return layers


def pretrained_variables(model):
    """The variables a memory of `model` from before `enable_lora` remembers.

    They are the trainable variables with each LoRA layer's factors
    replaced by the weight they adapt, in the order the model had them
    before `enable_lora` (the order of `model.variables`).
    """
    frozen = lora_layers(model)
    factors = {
        id(factor)
        for layer in frozen.values()
        for factor in lora_factors(layer)[1:3]
    }
    trainable = {id(v) for v in model.trainable_variables}
    return [
        v
        for v in model.variables
        if (id(v) in trainable and id(v) not in factors) or id(v) in frozen
    ]


def current_value(variable, frozen):
    """The value `variable` computes with: its own, or its effective weight.

    `frozen` is `lora_layers(model)`: a weight LoRA froze counts at its
    layer's `W + s A B`.
    """
    layer = frozen.get(id(variable))
    return variable.value if layer is None else effective_weight(layer)


@keras.saving.register_keras_serializable(package="keras_memgeom")
class LoraRegularizer(keras.regularizers.Regularizer):
    """A frozen weight's memory, set on its LoRA factor `A`, read at `W + sAB`.

    A memory of a pretrained model (estimated before `enable_lora`)
    remembers the weight `W` that LoRA then freezes. While LoRA fine-tunes,
    the layer computes with `W + s A @ B` (`s = lora_alpha / lora_rank`),
    so the memory's penalty is evaluated there: its gradient flows to `A`
    and `B`, and the fine-tuning keeps what the pretrained weights knew.
    `memory`, the weight's `FisherRegularizer` or `KroneckerRegularizer`,
    computes the penalty; this regularizer only gives it the effective
    weight. `attach` and `compile(memories=...)` of the package's models
    set it on `A` for every remembered weight that LoRA froze.

    It reads its layer's variables, so a layer config cannot rebuild it:
    the package's models save the memory itself with the model and set it
    again on loading.

    Args:
        layer: the LoRA-enabled `Dense`, `EinsumDense` or `Embedding`.
        memory: the frozen weight's memory penalty: a `FisherRegularizer`,
            or a `KroneckerRegularizer` that reads the layer's bias (not a
            paired half).
        base: the factor `A`'s own regularizer, or `None`, added.

    Returns:
        Calling it on a value of `A` returns the scalar penalty.

    Raises:
        ValueError: naming the layer, if LoRA is not enabled on it, it is
            quantized, or it is not a Keras `Dense`, `EinsumDense` or
            `Embedding`; if `memory` is not a memory penalty or its shape
            is not the frozen weight's (both are named).

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
    layer.build((None, 2))
    layer.enable_lora(1, b_initializer="ones")
    memory = keras_memgeom.FisherRegularizer(
        anchor=np.zeros((2, 1)), fisher=np.ones((2, 1)), scale=0.5
    )
    regularizer = keras_memgeom.LoraRegularizer(layer, memory)
    # W + s A B = [[1], [2]]: 0.5 * (1 + 4) = 2.5
    print(float(regularizer(np.array([[1.0], [2.0]], "float32"))))  # 2.5
    ```
    """

    def __init__(self, layer, memory, base=None):
        weight = lora_factors(layer)[0]
        if not callable(getattr(memory, "memory_penalty", None)):
            raise ValueError(
                "`memory` takes a FisherRegularizer or KroneckerRegularizer; "
                f"got {type(memory).__name__}."
            )
        shape = getattr(memory, "anchor", weight).shape
        if tuple(shape) != tuple(weight.shape):
            raise ValueError(
                f"The memory of {weight.path!r} has shape {tuple(shape)}; "
                f"the weight has shape {tuple(weight.shape)}."
            )
        self.layer = layer
        self.memory = memory
        self.base = keras.regularizers.get(base)

    @property
    def variables(self):
        """The state the penalty reads: the memory's."""
        return self.memory.variables

    def __call__(self, x):
        value = self.memory_penalty(x)
        if self.base is not None:
            value = ops.add(value, self.base(x))
        return value

    def memory_penalty(self, x):
        """The memory's penalty at `W + s x B`, without `base`."""
        return self.memory.memory_penalty(effective_weight(self.layer, x))

    def get_config(self):
        return {
            "layer": self.layer.name,
            "memory": keras.regularizers.serialize(self.memory),
            "base": keras.regularizers.serialize(self.base)
            if self.base is not None
            else None,
        }

    @classmethod
    def from_config(cls, config):
        raise ValueError(
            "A LoraRegularizer reads the variables of its layer "
            f"{config.get('layer')!r}, so it cannot be rebuilt from a "
            "config. Build the model as `keras_memgeom.Model` (which saves "
            "its memories with it and sets them again on loading), or "
            "estimate the memory after `enable_lora`."
        )
