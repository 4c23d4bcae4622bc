"""Dense layer with a fixed, permutation-breaking connectivity mask."""

import keras
from keras import ops

from keras_memgeom.src.layers.connectivity_mask import MaskedKernelMixin
from keras_memgeom.src.layers.connectivity_mask import add_connectivity_mask
from keras_memgeom.src.layers.connectivity_mask import widened_units
from keras_memgeom.src.layers.distinct_column_mask import validate_zero_rate
from keras_memgeom.src.utils.checks import check_positive_int


@keras.saving.register_keras_serializable(package="keras_memgeom")
class PrePrunedDense(MaskedKernelMixin, keras.layers.Dense):
    """Dense layer whose kernel is used as `W * B` with a fixed binary mask.

    `B` has pairwise-distinct columns (`distinct_column_mask`), so no two
    units are interchangeable and the `units!` permutation-equivalent optima
    of a plain Dense layer are gone (Glukhov 2024, section 6.2.1). Masked
    entries are zero from initialization on and receive exactly zero gradient.
    The mask is a non-trainable weight: it is saved and restored with the model.

    Args:
        units: int, the number of units (before widening).
        zero_rate: float in (0, 1), the fraction of masked connections.
        widen: bool. If `True`, use `ceil(units / (1 - zero_rate))` units so
            that the number of live connections matches a Dense of `units`.
        seed: int or `None`, the seed of the mask.
        **kwargs: any `keras.layers.Dense` argument (activation, use_bias,
            initializers, ...).

    Raises:
        ValueError: if `zero_rate` is not a number in (0, 1) or `units` is
            not a positive integer, or at build time if
            the layer has too few inputs for that many distinct columns.

    Input shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`; most often 2-D,
        `(batch_size, input_dim)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`, where `units` is the
        widened number if `widen=True`.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    layer = keras_memgeom.layers.PrePrunedDense(
        32, zero_rate=0.5, widen=True, activation="relu", seed=0
    )
    print(layer(np.zeros((2, 16))).shape)  # (2, 64)
    ```
    """

    def __init__(self, units, zero_rate=0.5, widen=False, seed=None, **kwargs):
        validate_zero_rate(zero_rate)
        units = check_positive_int("units", units)
        self.requested_units = units
        self.zero_rate = zero_rate
        self.widen = widen
        self.seed = seed
        if widen:
            units = widened_units(units, zero_rate)
        super().__init__(units, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self.mask = add_connectivity_mask(
            self, self.kernel, self.zero_rate, self.seed
        )

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, self.kernel * self.mask)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.requested_units,
            zero_rate=self.zero_rate,
            widen=self.widen,
            seed=self.seed,
        )
        return config
