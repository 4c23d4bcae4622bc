"""The units of a frontal lobe: the weights a unit owns, found by a walk.

A unit of a Dense or Conv2D layer is its incoming weights, its bias and its
outgoing weights: the input rows of the kernels of the Dense and Conv2D
layers that read the layer's output, directly or through channel-wise
layers (activations, dropout, pooling) and `Flatten`, as the package's
walk `keras_memgeom.symmetry.units_of` finds them.
"""

import keras
import numpy as np
from keras import ops

from keras_memgeom.src.layers.connectivity_mask import MaskedKernelMixin
from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense
from keras_memgeom.src.symmetry.hidden_units import units_of

_DENSE = (keras.layers.Dense, PrePrunedDense)
_CONV = (keras.layers.Conv2D, PrePrunedConv2D)


def lobe_units(model, layers, fraction, need_outgoing=False):
    """Per frontal-lobe layer: the layer and the masks of its units.

    Args:
        model: a built Keras model holding the named layers.
        layers: the names of the frontal lobe's layers.
        fraction: `None` for whole layers, or the share of each layer's
            units (the first ones) in the frontal lobe.
        need_outgoing: whether every layer must have a reader (to be
            silenced or reset).

    Returns:
        A list of dicts, one per name: `layer`, `kernel` and `bias` (masks
        of the layer's own variables, `bias` `None` without one) and
        `outgoing` (`(variable, mask)` of each reading kernel).

    Raises:
        ValueError: naming an unknown or unsuitable layer, a reader whose
            weights cannot be split by input unit, or (`need_outgoing`) a
            layer that nothing reads.
    """
    by_name = {layer.name: layer for layer in model.layers}
    lobes = []
    for name in layers:
        if name not in by_name:
            raise ValueError(
                f"Unknown layer {name!r}: the model's layers are "
                f"{sorted(by_name)}."
            )
        layer = by_name[name]
        if not _is_unit_layer(layer) or not layer.built:
            raise ValueError(
                f"Layer {name!r} is a {type(layer).__name__}: a frontal "
                "lobe is made of built Dense or channels-last Conv2D "
                "layers (plain or pre-pruned)."
            )
        size = layer.kernel.shape[-1]
        units = np.zeros(size, "float32")
        count = size if fraction is None else round(fraction * size)
        units[: max(1, count)] = 1.0
        outgoing = [
            (consumer.kernel, _connected(consumer, mask))
            for consumer, mask in _readers(model, layer, units)
        ]
        if need_outgoing and not outgoing:
            raise ValueError(
                f"No Dense or Conv2D layer reads frontal-lobe layer "
                f"{name!r}, so its units cannot be silenced or reset."
            )
        lobes.append(
            {
                "layer": layer,
                "kernel": _connected(
                    layer, np.broadcast_to(units, layer.kernel.shape)
                ),
                "bias": units if layer.use_bias else None,
                "outgoing": outgoing,
            }
        )
    return lobes


def _is_unit_layer(layer):
    if type(layer) in _DENSE:
        return True
    return (
        type(layer) in _CONV
        and layer.data_format == "channels_last"
        and layer.groups == 1
    )


def _readers(model, layer, units):
    """`(reader, kernel mask)` for each Dense or Conv2D reading `layer`.

    `units` marks the channels of `layer`'s output; the package's walk
    (`keras_memgeom.symmetry.units_of`) follows them through channel-wise
    layers and `Flatten` (channels last) to the kernels that read them.

    Raises:
        ValueError: naming a layer that reads the units but whose weights
            cannot be split by input unit.
    """
    found = units_of(model, layer)
    blocking = (
        found.mixing
        + found.followers
        + tuple(r.layer for r in found.readers if not _is_unit_layer(r.layer))
    )
    if blocking:
        other = blocking[0]
        raise ValueError(
            f"Layer {other.name!r} ({type(other).__name__}) reads the "
            f"frontal lobe of {layer.name!r}; a frontal lobe's units "
            "may be read only by Dense or Conv2D layers, directly or "
            "through Flatten, activations, dropout or pooling."
        )
    out = []
    for reader in found.readers:
        # Input units are the kernel's second-to-last axis for Dense
        # `(in, out)` and Conv2D `(kh, kw, in, out)` alike; after a Flatten
        # input `p * units + j` is unit `j` at position `p`.
        channels = np.tile(units, reader.repeats)
        mask = np.broadcast_to(channels[:, None], reader.layer.kernel.shape)
        out.append((reader.layer, np.array(mask, "float32")))
    return out


def _connected(layer, mask):
    """`mask` without the entries a pre-pruned layer keeps at zero."""
    mask = np.asarray(mask, "float32")
    if isinstance(layer, MaskedKernelMixin):
        mask = mask * ops.convert_to_numpy(layer.mask).astype("float32")
    return np.array(mask, "float32")
