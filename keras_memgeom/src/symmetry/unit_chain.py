"""A model's weight layers as NumPy arrays, linked through their units.

The walk is `hidden_units`; this module holds what the symmetry tools
(count, reorder, distance, align) and the merges share: each weight
layer's kernel, bias and mask with the per-unit layers after it and the
weight layers that read it, and `permute_units`, the one place where a
unit permutation is applied.
"""

import dataclasses

import keras
import numpy as np

from keras_memgeom.src.symmetry.hidden_units import units_of
from keras_memgeom.src.symmetry.hidden_units import weight_layers
from keras_memgeom.src.utils.clone_model import clone_model


@dataclasses.dataclass
class UnitLayer:
    """A weight layer of the chain with NumPy copies of its weights.

    Attributes:
        layer: the Keras layer.
        kernel: `(..., inputs, units)` array.
        bias: `(units,)` array or `None`.
        mask: `(inputs, units)` 0/1 array or `None`.
        followers: `[(layer, arrays)]` for the per-unit layers (normalization,
            polynomial activations) between this layer and its readers;
            their arrays are indexed by unit along axis 0.
        readers: indices in the chain of the weight layers that read this
            layer's units; empty when its units are not hidden.
    """

    layer: keras.layers.Layer
    kernel: np.ndarray
    bias: np.ndarray = None
    mask: np.ndarray = None
    followers: list = dataclasses.field(default_factory=list)
    readers: list = dataclasses.field(default_factory=list)

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
    """Extract the weight layers of a model and how their units connect.

    The walk is `keras_memgeom.symmetry.hidden_units`: a layer's units are
    hidden (permutable) when weight layers read them and they never reach
    a model output.

    Args:
        model: a Sequential or functional model.

    Returns:
        A list of `UnitLayer`, input to output (see `hidden_indices`).

    Raises:
        ValueError: naming the layer, for a weight layer whose units cannot
            be permuted because a layer mixes them (a skip connection, a
            reshape, normalization across other axes, an unsupported
            layer), for an unsupported weight layer; or for a model
            without weight layers.
    """
    owners = weight_layers(model)
    if not owners:
        raise ValueError(
            f"Model {model.name!r} has no Dense, convolution, EinsumDense or "
            "PolynomialDense layer: there are no units to permute."
        )
    position = {id(layer): i for i, layer in enumerate(owners)}
    chain = []
    for layer in owners:
        # PolynomialDense has no bias (phi_0 = 1 plays its part).
        bias = getattr(layer, "bias", None)
        mask = getattr(layer, "mask", None)
        unit_layer = UnitLayer(
            layer=layer,
            kernel=_numpy(layer.kernel),
            bias=None if bias is None else _numpy(bias),
            mask=None if mask is None else _numpy(mask),
        )
        units = units_of(model, layer)
        if units.mixing:
            units.check_permutable()
        if not units.is_output:
            unit_layer.followers = [
                (follower, follower.get_weights())
                for follower in units.followers
            ]
            unit_layer.readers = [
                position[id(reader.layer)] for reader in units.readers
            ]
        chain.append(unit_layer)
    return chain


def hidden_indices(chain):
    """The indices of the chain's layers with hidden (permutable) units."""
    return [i for i, unit_layer in enumerate(chain) if unit_layer.readers]


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
    bias and mask columns, its per-unit followers (BatchNormalization
    statistics, LayerNormalization gamma / beta, polynomial coefficients)
    and its readers' kernel and mask rows move together. A permuted
    distinct-column mask still has distinct columns.

    Args:
        chain: a list from `unit_chain`, modified in place.
        index: a hidden layer, one of `hidden_indices(chain)`.
        permutation: integer array, a permutation of `range(units)`.
    """
    unit_layer = chain[index]
    unit_layer.kernel = unit_layer.kernel[..., permutation]
    if unit_layer.bias is not None:
        unit_layer.bias = unit_layer.bias[permutation]
    if unit_layer.mask is not None:
        unit_layer.mask = unit_layer.mask[:, permutation]
    for _, arrays in unit_layer.followers:
        arrays[:] = [_take_units(a, permutation, axis=0) for a in arrays]
    for reader in unit_layer.readers:
        following = chain[reader]
        following.kernel = _take_units(following.kernel, permutation, axis=-2)
        if following.mask is not None:
            following.mask = _take_units(following.mask, permutation, axis=0)


def unit_features(chain, index):
    """Every parameter attached to each unit of `chain[index]`, one row each.

    The row of unit `j` holds its incoming weights (masked), its bias, its
    per-unit followers' parameters and its outgoing weights into its
    readers: what weight matching compares.

    Returns:
        A `(units, features)` array.
    """
    unit_layer = chain[index]
    n = unit_layer.units
    parts = [_units_first(unit_layer.effective_kernel(), n, axis=-1)]
    if unit_layer.bias is not None:
        parts.append(unit_layer.bias[:, None])
    for _, arrays in unit_layer.followers:
        parts.extend(_units_first(a, n, axis=0) for a in arrays)
    parts.extend(
        _units_first(chain[reader].effective_kernel(), n, axis=-2)
        for reader in unit_layer.readers
    )
    return np.concatenate(parts, axis=1)


def unit_connectivity(chain, index):
    """Which connections each unit of `chain[index]` has, one row each.

    The row of unit `j` is its mask column followed by its mask rows in its
    readers (all ones where a layer is unmasked): two units are
    interchangeable only if their rows are equal.

    Returns:
        A `(units, inputs + reader_units * positions)` 0/1 array.
    """
    unit_layer = chain[index]
    n = unit_layer.units
    parts = [_units_first(unit_layer.connectivity(), n, axis=-1)]
    parts.extend(
        _units_first(chain[reader].connectivity(), n, axis=-2)
        for reader in unit_layer.readers
    )
    return np.concatenate(parts, axis=1)


def incoming_weights(unit_layer):
    """Each unit's incoming (masked) weights, `(units, fan_in)`."""
    return _units_first(
        unit_layer.effective_kernel(), unit_layer.units, axis=-1
    )


def check_same_architecture(chain_a, chain_b):
    """Raise a clear error unless two chains have matching kernel shapes
    and connections."""
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
        if a.readers != b.readers:
            raise ValueError(
                f"The units of layer {a.layer.name!r} and of its counterpart "
                f"{b.layer.name!r} are read by different layers; the models "
                "must share one architecture."
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
