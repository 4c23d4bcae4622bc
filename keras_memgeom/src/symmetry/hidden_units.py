"""Which layers of a model own hidden units, and which layers read them.

This is the one walk over a model's graph that every unit-wise tool uses
(symmetry, merging, per-unit masks): it follows a weight layer's output
through the layers that keep each unit separate (elementwise activations,
dropout, pooling, normalization with per-unit parameters, Flatten) to the
weight layers that read the units, and records any layer after which the
identity of a unit is lost. Only public Keras APIs are used: the model's
layers (operations), and each layer's symbolic `input` and `output`.
"""

import dataclasses
import math

import keras

from keras_memgeom.src.layers.ortho_polynomial import OrthoPolynomial
from keras_memgeom.src.layers.polynomial_dense import PolynomialDense

# Layers whose kernel is `(..., inputs, units)`: they own `units` hidden
# units and read their input's last (channels) axis. Pre-pruned layers are
# subclasses of Dense and Conv2D.
_WEIGHT_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.EinsumDense,
    PolynomialDense,
)
# Layers with parameters indexed by unit along their first axis.
_PER_UNIT_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    OrthoPolynomial,
)
# Weightless layers that commute with a permutation of the units: they act
# on each unit (channel) separately.
_UNIT_WISE_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)


@dataclasses.dataclass(frozen=True)
class Reader:
    """A weight layer that reads hidden units.

    Attributes:
        layer: the reading weight layer.
        repeats: how many times each unit appears along the reader's input
            axis (`1`, or the number of positions a channels-last Flatten
            spreads each channel over: input `p * units + j` is unit `j` at
            position `p`).

    Example:

    ```python
    import keras

    import keras_memgeom

    model = keras.Sequential(
        [
            keras.Input((3, 3, 2)),
            keras.layers.Conv2D(4, 1),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    units = keras_memgeom.symmetry.units_of(model, model.layers[0])
    print(units.readers[0].repeats)  # 9: each channel at 3 x 3 positions
    ```
    """

    layer: keras.layers.Layer
    repeats: int = 1


@dataclasses.dataclass(frozen=True)
class HiddenUnits:
    """The units of one weight layer and the layers they reach.

    Attributes:
        layer: the weight layer that owns the units (its kernel's last axis).
        units: int, how many units it owns.
        readers: tuple of `Reader`, the weight layers that read the units.
        followers: tuple of the layers between the owner and its readers
            with parameters indexed by unit along their first axis
            (BatchNormalization, LayerNormalization, OrthoPolynomial).
        mixing: tuple of the layers that read the units but after which a
            unit's identity is lost (Add, Reshape, normalization across
            other axes, unsupported layers, ...).
        reasons: tuple of str, why each layer of `mixing` mixes the units.
        is_output: whether the units reach a model output.

    Example:

    ```python
    import keras

    import keras_memgeom

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    outputs = keras.layers.Add(name="skip")([inputs, hidden])
    model = keras.Model(inputs, outputs)

    units = keras_memgeom.symmetry.units_of(model, model.get_layer("hidden"))
    print(units.permutable, [layer.name for layer in units.mixing])
    # False ['skip']
    ```
    """

    layer: keras.layers.Layer
    units: int
    readers: tuple = ()
    followers: tuple = ()
    mixing: tuple = ()
    reasons: tuple = ()
    is_output: bool = False

    @property
    def permutable(self):
        """Whether permuting the units (and their readers) keeps the model's
        function: they are read, never mixed and never output."""
        return bool(self.readers) and not self.mixing and not self.is_output

    def check_permutable(self):
        """Raises a ValueError naming the layer that blocks a permutation.

        Raises:
            ValueError: naming the first mixing layer, or the owner when
                its units reach a model output or are never read.
        """
        owner = f"layer {self.layer.name!r} ({type(self.layer).__name__})"
        if self.mixing:
            blocker = self.mixing[0]
            raise ValueError(
                f"The units of {owner} cannot be permuted: layer "
                f"{blocker.name!r} ({type(blocker).__name__}) reads them and "
                f"{self.reasons[0]}."
            )
        if self.is_output or not self.readers:
            raise ValueError(
                f"The units of {owner} are not hidden: they reach the "
                "model's output unchanged."
            )


def weight_layers(model):
    """The layers of `model` that own units, input to output.

    Args:
        model: a built Sequential or functional Keras model.

    Returns:
        A list of the Dense, Conv1D / Conv2D / Conv3D (channels-last,
        `groups=1`), Dense-like EinsumDense and PolynomialDense layers
        (pre-pruned ones included), in the model's topological order.

    Raises:
        ValueError: for a model that is not Sequential or functional, and,
            naming the layer, for a weight layer whose configuration does
            not own units along its kernel's last axis (channels-first or
            grouped convolution, LoRA, an EinsumDense that is not a Dense
            in disguise) or the layer reading a layer called more than
            once.

    Example:

    ```python
    import keras

    import keras_memgeom

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    layers = keras_memgeom.symmetry.weight_layers(model)
    print([layer.name for layer in layers])  # ['dense', 'dense_1']
    ```
    """
    owners = []
    for operation in _operations(model):
        if not isinstance(operation, _WEIGHT_LAYERS):
            continue
        problem = _owner_problem(operation)
        if problem is not None:
            raise _refused(operation, problem)
        owners.append(operation)
    return owners


def units_of(model, layer):
    """The hidden units of one weight layer and the layers they reach.

    The layer's output is followed through the layers that act on each
    unit separately (elementwise activations, dropout, pooling,
    normalization on the last axis, channels-last Flatten) to the weight
    layers that read the units; any other layer on the way mixes them.

    Args:
        model: a built Sequential or functional Keras model.
        layer: a weight layer of `model` (see `weight_layers`).

    Returns:
        A `HiddenUnits`.

    Raises:
        ValueError: naming the layer, when it is not a layer of `model` or
            does not own units (see `weight_layers`), or when a layer of
            the model is called more than once (the layer reading it is
            named).

    Example:

    ```python
    import keras

    import keras_memgeom

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2)(x)
    model = keras.Model(inputs, outputs)

    units = keras_memgeom.symmetry.units_of(model, model.layers[1])
    print(units.units, units.readers[0].repeats)  # 4 16
    ```
    """
    operations = _operations(model)
    if not any(operation is layer for operation in operations):
        raise ValueError(
            f"Layer {getattr(layer, 'name', layer)!r} is not a layer of model "
            f"{model.name!r}."
        )
    problem = (
        _owner_problem(layer)
        if isinstance(layer, _WEIGHT_LAYERS)
        else "it has no kernel with units on its last axis"
    )
    if problem is not None:
        raise _refused(layer, problem)
    consumers = _consumers(model, operations)
    outputs = [operations[-1].output] if _is_chain(model) else model.outputs
    outputs = keras.tree.flatten(outputs)
    found = {"readers": [], "followers": [], "mixing": [], "reasons": []}
    is_output = False
    frontier, seen = [(layer, 1)], set()
    while frontier:
        source, repeats = frontier.pop(0)
        if any(source.output is tensor for tensor in outputs):
            is_output = True
        for consumer in consumers.get(id(source.output), []):
            # A layer reached along two paths (e.g. an Add) counts once.
            if id(consumer) in seen:
                continue
            seen.add(id(consumer))
            kind, detail = _classify(consumer, repeats)
            if kind == "reader":
                found["readers"].append(Reader(consumer, repeats))
            elif kind == "mixing":
                found["mixing"].append(consumer)
                found["reasons"].append(detail)
            else:
                if kind == "follower":
                    found["followers"].append(consumer)
                frontier.append((consumer, detail))
    return HiddenUnits(
        layer=layer,
        units=int(layer.kernel.shape[-1]),
        is_output=is_output,
        **{key: tuple(value) for key, value in found.items()},
    )


def hidden_units(model):
    """The units of every weight layer that does not feed a model output.

    Args:
        model: a built Sequential or functional Keras model.

    Returns:
        A list of `HiddenUnits`, input to output, one per weight layer
        whose units are not a model output (check `permutable`, or call
        `check_permutable`, before permuting them).

    Raises:
        ValueError: as `weight_layers`.

    Example:

    ```python
    import keras

    import keras_memgeom

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    (hidden,) = keras_memgeom.symmetry.hidden_units(model)
    print(hidden.units, [r.layer.name for r in hidden.readers])
    ```
    """
    records = [units_of(model, layer) for layer in weight_layers(model)]
    return [record for record in records if not record.is_output]


def _operations(model):
    """The model's layers and operations, input to output, each called once."""
    if isinstance(model, keras.Sequential):
        operations = list(model.layers)
    elif isinstance(model, keras.Model) and hasattr(model, "operations"):
        operations = list(model.operations)
    else:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} "
            f"({type(model).__name__}) is neither Sequential nor functional: "
            "its layers' connections are unknown."
        )
    operations = [
        op for op in operations if not isinstance(op, keras.layers.InputLayer)
    ]
    if _is_chain(model):
        return operations
    # A layer called several times shows only its first call's tensors:
    # another call's output is then read without being any layer's output.
    known = {id(t) for t in keras.tree.flatten(model.inputs)}
    known |= {id(op.output) for op in operations}
    for operation in operations:
        if any(id(t) not in known for t in keras.tree.flatten(operation.input)):
            raise ValueError(
                f"Layer {operation.name!r} ({type(operation).__name__}) reads "
                "the output of a layer called more than once; the hidden "
                "units of a model with shared layers are ambiguous."
            )
    return operations


def _is_chain(model):
    # A Sequential's layers read one another in order, whatever calls a
    # reload or a rebuild added to them (their first call's tensors then
    # come from different builds).
    return isinstance(model, keras.Sequential)


def _consumers(model, operations):
    """Maps `id(tensor)` to the operations that take that tensor as input."""
    if _is_chain(model):
        return {
            id(source.output): [reader]
            for source, reader in zip(operations, operations[1:])
        }
    consumers = {}
    for operation in operations:
        for tensor in keras.tree.flatten(operation.input):
            consumers.setdefault(id(tensor), []).append(operation)
    return consumers


def _classify(layer, repeats):
    """What `layer` does to the units it reads.

    Returns:
        `("reader", None)`, `("follower", repeats)`, `("unit_wise",
        repeats)` (the units go on, `repeats` times each) or `("mixing",
        reason)`.
    """
    if isinstance(layer, _WEIGHT_LAYERS):
        problem = _owner_problem(layer)
        if problem is None:
            return "reader", None
        return "mixing", problem
    if isinstance(layer, _PER_UNIT_LAYERS):
        if isinstance(layer, OrthoPolynomial):
            return "follower", repeats
        axis = layer.axis
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        rank = len(layer.input.shape)
        if [a % rank for a in axes] != [rank - 1]:
            return (
                "mixing",
                f"it must act on the last axis only, not on axis {axis}",
            )
        return "follower", repeats
    if isinstance(layer, _UNIT_WISE_LAYERS):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return "mixing", "it must be channels_last"
        return "unit_wise", repeats
    if isinstance(layer, keras.layers.Flatten):
        if layer.data_format != "channels_last":
            return "mixing", "it must be channels_last"
        positions = layer.input.shape[1:-1]
        if any(size is None for size in positions):
            return "mixing", "its input's positions must have a known size"
        return "unit_wise", repeats * math.prod(positions)
    if not isinstance(layer, keras.layers.Layer):
        return "mixing", "it is an operation that may mix the units"
    return "mixing", "this layer type may mix the units"


def _owner_problem(layer):
    """Why a weight layer does not own units on its kernel's last axis."""
    if getattr(layer, "lora_enabled", False):
        return "LoRA-enabled layers are not supported"
    if isinstance(
        layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    ) and (layer.groups != 1 or layer.data_format != "channels_last"):
        return "only channels_last convolutions with groups=1 are supported"
    if isinstance(layer, keras.layers.EinsumDense) and not _dense_like(layer):
        return (
            f"its equation {layer.equation!r} is not a Dense layer's (the "
            "input's last axis contracted into one output axis, last)"
        )
    if getattr(layer, "kernel", None) is None:
        return "it is not built"
    return None


def _dense_like(layer):
    """Whether an EinsumDense is `...i,ij->...j` up to letters, bias on j."""
    inputs, output = layer.equation.split("->")
    lhs, kernel = inputs.split(",")
    if len(kernel) != 2 or "." in kernel:
        return False
    contracted, unit = kernel
    return (
        lhs[-1] == contracted
        and output[-1] == unit
        and contracted not in output
        and unit not in lhs
        and lhs[:-1] == output[:-1]
        and layer.bias_axes in (None, unit)
    )


def _refused(layer, reason):
    return ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) does not own "
        f"permutable units: {reason}."
    )
