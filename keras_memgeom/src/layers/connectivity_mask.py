"""The fixed connectivity mask shared by every pre-pruned layer.

All pre-pruned layers keep their kernel as `(..., inputs, units)` and their
mask as `(inputs, units)`, so `kernel * mask` broadcasts on trailing axes for
Dense, Conv2D (spatial axes in front) and PolynomialDense (degree axis in
front) alike.
"""

import math

import keras

from keras_memgeom.src.layers.distinct_column_mask import distinct_column_mask


def widened_units(units, zero_rate):
    """Number of units that keeps the capacity after pre-pruning.

    Args:
        units: int, the width before pruning.
        zero_rate: float in (0, 1).

    Returns:
        `ceil(units / (1 - zero_rate))`, e.g. 64 units at zero rate 0.5
        give 128.

    Example:

    >>> widened_units(64, 0.5)
    128
    """
    # Rounded first so that float noise (e.g. 10 / 0.7 * 0.7) does not add a
    # unit.
    return math.ceil(round(units / (1.0 - zero_rate), 9))


def add_connectivity_mask(layer, kernel, zero_rate, seed):
    """Add a non-trainable distinct-column mask to a built layer.

    The masked kernel entries are zeroed right away, so the stored kernel
    equals the effective one `kernel * mask` from initialization on.

    Args:
        layer: the layer being built (owns the new weight).
        kernel: its kernel variable, shaped `(..., inputs, units)`.
        zero_rate: float in (0, 1).
        seed: int or `None`, passed to `distinct_column_mask`.

    Returns:
        The mask variable, shaped `(inputs, units)`.

    Raises:
        ValueError: naming the layer, if it has too few inputs for that
            many distinct columns.
    """
    shape = tuple(kernel.shape[-2:])
    try:
        values = distinct_column_mask(shape, zero_rate, seed)
    except ValueError as error:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {error}")
    mask = layer.add_weight(
        name="mask", shape=shape, initializer="ones", trainable=False
    )
    mask.assign(values)
    kernel.assign(kernel * mask)
    return mask


class MaskedKernelMixin:
    """What Dense and Conv2D subclasses with a mask weight have in common.

    Dense and Conv2D save a fixed list of variables (kernel, bias); the
    generic Layer scheme saves all of them, the mask included. Quantizing
    would drop the mask, so it is refused.
    """

    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def quantize(self, mode=None, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} {self.name!r} cannot be quantized; fold "
            "its mask first (keras_memgeom.pruning.fold_mask) and quantize "
            "the plain model."
        )
