"""The chain of permutable hidden units of a model.

One walk over the model serves every symmetry tool (count, reorder,
distance, align): it extracts, in order, each weight layer's kernel, bias
and mask together with the unit-wise layers that follow it, and
`permute_units` is the one place where a unit permutation is applied.
"""

import dataclasses

import keras
import numpy as np

from keras_memgeom.src.layers.ortho_polynomial import OrthoPolynomial
from keras_memgeom.src.layers.polynomial_dense import PolynomialDense
from keras_memgeom.src.utils.clone_model import clone_model

# Layers with a kernel shaped (..., inputs, units) and an optional bias and
# (inputs, units) mask: Dense and its pre-pruned subclass, Conv2D and its
# pre-pruned subclass, PolynomialDense.
_WEIGHT_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv2D,
    PolynomialDense,
)
# Layers whose weights are indexed by unit along their first axis.
_UNIT_WISE_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    OrthoPolynomial,
)
# Weightless layers that commute with a permutation of the units: they act
# on each unit (channel) separately, or flatten channels-last maps, which
# `permute_units` handles by permuting the channel within every position.
_PASS_THROUGH_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)


@dataclasses.dataclass
class UnitLayer:
    """A weight layer of the chain with NumPy copies of its weights.

    Attributes:
        layer: the Keras layer.
        kernel: `(..., inputs, units)` array.
        bias: `(units,)` array or `None`.
        mask: `(inputs, units)` 0/1 array or `None`.
        followers: `[(layer, arrays)]` for the unit-wise layers (normalization,
            polynomial activations) between this layer and the next; their
            arrays are indexed by unit along axis 0.
    """

    layer: keras.layers.Layer
    kernel: np.ndarray
    bias: np.ndarray = None
    mask: np.ndarray = None
    followers: list = dataclasses.field(default_factory=list)

    @property
    def units(self):
        return self.kernel.shape[-1]

    def effective_kernel(self):
        """The kernel as the layer uses it, `kernel * mask`."""
        return self.kernel if self.mask is None else self.kernel * self.mask

    def connectivity(self):
        """The `(inputs, units)` mask, all ones for an unmasked layer."""
        if self.mask is None:
            return np.ones(self.kernel.shape[-2:], dtype="float32")
        return self.mask


def unit_chain(model):
    """Extract the chain of weight layers of a model, checking support.

    Args:
        model: a Sequential model, or a functional model whose layers form
            a single chain.

    Returns:
        A list of `UnitLayer`, input to output. Every entry but the last
        has permutable (hidden) units.

    Raises:
        ValueError: naming the layer, for a layer that is not a Dense /
            Conv2D / PolynomialDense layer, a unit-wise layer on the last
            axis (BatchNormalization, LayerNormalization, OrthoPolynomial)
            or an elementwise / pooling / Flatten layer; for a functional
            model that is not a chain; or for a model without weight layers.
    """
    _check_is_chain(model)
    chain = []
    for layer in model.layers:
        if isinstance(layer, _WEIGHT_LAYERS):
            _check_weight_layer(layer)
            # PolynomialDense has no bias (phi_0 = 1 plays its part).
            bias = getattr(layer, "bias", None)
            mask = getattr(layer, "mask", None)
            chain.append(
                UnitLayer(
                    layer=layer,
                    kernel=_numpy(layer.kernel),
                    bias=None if bias is None else _numpy(bias),
                    mask=None if mask is None else _numpy(mask),
                )
            )
        elif isinstance(layer, _UNIT_WISE_LAYERS):
            _check_unit_wise_layer(layer)
            # Before the first weight layer it acts on the inputs, which are
            # never permuted.
            if chain:
                chain[-1].followers.append((layer, layer.get_weights()))
        elif not isinstance(layer, _PASS_THROUGH_LAYERS):
            raise _unsupported(layer, "this layer type is not supported")
    if not chain:
        raise ValueError(
            f"Model {model.name!r} has no Dense, Conv2D or PolynomialDense "
            "layer: there are no units to permute."
        )
    return chain


def write_chain(chain):
    """Assign the chain's (permuted) arrays back to the Keras layers."""
    for unit_layer in chain:
        layer = unit_layer.layer
        layer.kernel.assign(unit_layer.kernel)
        if unit_layer.bias is not None:
            layer.bias.assign(unit_layer.bias)
        if unit_layer.mask is not None:
            layer.mask.assign(unit_layer.mask)
        for follower, arrays in unit_layer.followers:
            follower.set_weights(arrays)


def permute_units(chain, index, permutation):
    """Permute the units of `chain[index]`, keeping the function unchanged.

    New unit `j` is old unit `permutation[j]`: the layer's kernel columns,
    bias and mask columns, its unit-wise followers (BatchNormalization
    statistics, LayerNormalization gamma / beta, polynomial coefficients)
    and the next layer's kernel and mask rows move together. A permuted
    distinct-column mask still has distinct columns.

    Args:
        chain: a list from `unit_chain`, modified in place.
        index: a hidden layer, `0 <= index < len(chain) - 1`.
        permutation: integer array, a permutation of `range(units)`.
    """
    unit_layer, following = chain[index], chain[index + 1]
    unit_layer.kernel = unit_layer.kernel[..., permutation]
    if unit_layer.bias is not None:
        unit_layer.bias = unit_layer.bias[permutation]
    if unit_layer.mask is not None:
        unit_layer.mask = unit_layer.mask[:, permutation]
    for _, arrays in unit_layer.followers:
        arrays[:] = [_take_units(a, permutation, axis=0) for a in arrays]
    following.kernel = _take_units(following.kernel, permutation, axis=-2)
    if following.mask is not None:
        following.mask = _take_units(following.mask, permutation, axis=0)


def unit_features(chain, index):
    """Every parameter attached to each unit of `chain[index]`, one row each.

    The row of unit `j` holds its incoming weights (masked), its bias, its
    unit-wise followers' parameters and its outgoing weights into the next
    layer: what weight matching compares.

    Returns:
        A `(units, features)` array.
    """
    unit_layer, following = chain[index], chain[index + 1]
    n = unit_layer.units
    parts = [_units_first(unit_layer.effective_kernel(), n, axis=-1)]
    if unit_layer.bias is not None:
        parts.append(unit_layer.bias[:, None])
    for _, arrays in unit_layer.followers:
        parts.extend(_units_first(a, n, axis=0) for a in arrays)
    parts.append(_units_first(following.effective_kernel(), n, axis=-2))
    return np.concatenate(parts, axis=1)


def unit_connectivity(chain, index):
    """Which connections each unit of `chain[index]` has, one row each.

    The row of unit `j` is its mask column followed by its mask row in the
    next layer (all ones where a layer is unmasked): two units are
    interchangeable only if their rows are equal.

    Returns:
        A `(units, inputs + next_units * positions)` 0/1 array.
    """
    unit_layer, following = chain[index], chain[index + 1]
    n = unit_layer.units
    return np.concatenate(
        [
            _units_first(unit_layer.connectivity(), n, axis=-1),
            _units_first(following.connectivity(), n, axis=-2),
        ],
        axis=1,
    )


def incoming_weights(unit_layer):
    """Each unit's incoming (masked) weights, `(units, fan_in)`."""
    return _units_first(
        unit_layer.effective_kernel(), unit_layer.units, axis=-1
    )


def check_same_architecture(chain_a, chain_b):
    """Raise a clear error unless two chains have matching kernel shapes."""
    if len(chain_a) != len(chain_b):
        raise ValueError(
            f"The models have {len(chain_a)} and {len(chain_b)} weight "
            "layers; they must share one architecture."
        )
    for a, b in zip(chain_a, chain_b):
        if a.kernel.shape != b.kernel.shape:
            raise ValueError(
                f"Layer {a.layer.name!r} has kernel shape {a.kernel.shape} but "
                f"its counterpart {b.layer.name!r} has {b.kernel.shape}; the "
                "models must share one architecture."
            )


def copy_model(model):
    """A clone of `model` with the same weights."""
    clone = clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _split_units(array, n, axis):
    """Split `axis` into (positions, n units): Flatten repeats the units."""
    axis %= array.ndim
    size = array.shape[axis]
    if size % n:
        raise ValueError(
            f"An axis of size {size} cannot carry {n} units; the layers "
            "between two weight layers must keep the units (channels) last."
        )
    shape = array.shape[:axis] + (size // n, n) + array.shape[axis + 1 :]
    return array.reshape(shape), axis + 1


def _take_units(array, permutation, axis):
    split, unit_axis = _split_units(array, len(permutation), axis)
    return np.take(split, permutation, axis=unit_axis).reshape(array.shape)


def _units_first(array, n, axis):
    split, unit_axis = _split_units(array, n, axis)
    return np.moveaxis(split, unit_axis, 0).reshape(n, -1)


def _numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


def _check_is_chain(model):
    if isinstance(model, keras.Sequential):
        return
    layers = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; only single chains are supported."
        )
    previous = model.inputs[0]
    for layer in layers:
        try:
            fed_by_previous = layer.input is previous
        except (AttributeError, ValueError):  # a layer called several times
            fed_by_previous = False
        if not fed_by_previous:
            raise _unsupported(
                layer, "it is not fed by the layer before it (not a chain)"
            )
        previous = layer.output


def _check_weight_layer(layer):
    if isinstance(layer, keras.layers.Conv2D) and (
        layer.groups != 1 or layer.data_format != "channels_last"
    ):
        raise _unsupported(
            layer, "only channels_last Conv2D with groups=1 is supported"
        )
    if getattr(layer, "lora_enabled", False):
        raise _unsupported(layer, "LoRA-enabled layers are not supported")


def _check_unit_wise_layer(layer):
    axis = getattr(layer, "axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    rank = len(layer.input.shape)
    if [a % rank for a in axes] != [rank - 1]:
        raise _unsupported(
            layer, f"it must act on the last axis only, not on axis {axis}"
        )


def _unsupported(layer, reason):
    return ValueError(
        "keras_memgeom.symmetry supports chains of Dense / Conv2D / "
        "PolynomialDense layers with elementwise activations, pooling, "
        "Flatten and BatchNormalization / LayerNormalization between them; "
        f"layer {layer.name!r} ({type(layer).__name__}): {reason}."
    )
