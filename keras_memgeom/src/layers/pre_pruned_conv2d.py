"""Conv2D layer with a fixed, permutation-breaking channel mask."""

import keras

from keras_memgeom.src.layers.connectivity_mask import MaskedKernelMixin
from keras_memgeom.src.layers.connectivity_mask import add_connectivity_mask
from keras_memgeom.src.layers.connectivity_mask import widened_units
from keras_memgeom.src.layers.distinct_column_mask import validate_zero_rate
from keras_memgeom.src.utils.checks import check_positive_int


@keras.saving.register_keras_serializable(package="keras_memgeom")
class PrePrunedConv2D(MaskedKernelMixin, keras.layers.Conv2D):
    """Conv2D layer whose input-channel x filter connectivity is masked.

    The mask `B` is `(input_channels, filters)` with pairwise-distinct
    columns and multiplies every spatial tap of the kernel: filter `j` sees
    input channel `i` only where `B[i, j] = 1`. As in `PrePrunedDense`, the
    masked kernel entries stay exactly zero and the mask is a saved,
    non-trainable weight.

    Args:
        filters: int, the number of filters (before widening).
        kernel_size: int or tuple of 2 ints.
        zero_rate: float in (0, 1), the fraction of masked channel pairs.
        widen: bool. If `True`, use `ceil(filters / (1 - zero_rate))`
            filters.
        seed: int or `None`, the seed of the mask.
        **kwargs: any `keras.layers.Conv2D` argument except `groups`.

    Raises:
        ValueError: if `zero_rate` is not a number in (0, 1), if `filters`
            is not a positive integer, if `groups != 1`, or at
            build time if there are too few input channels for that many
            distinct columns.

    Input shape:
        4-D tensor with shape `(batch_size, height, width, channels)` (the
        default `data_format="channels_last"`), or
        `(batch_size, channels, height, width)` with `"channels_first"`.

    Output shape:
        4-D tensor with shape `(batch_size, new_height, new_width, filters)`, or
        `(batch_size, filters, new_height, new_width)` with `"channels_first"`,
        as for `keras.layers.Conv2D`; `filters` is the widened number if
        `widen=True`.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    layer = keras_memgeom.layers.PrePrunedConv2D(
        8, 3, zero_rate=0.5, padding="same", seed=0
    )
    print(layer(np.zeros((1, 6, 6, 4))).shape)  # (1, 6, 6, 8)
    ```
    """

    def __init__(
        self,
        filters,
        kernel_size,
        zero_rate=0.5,
        widen=False,
        seed=None,
        **kwargs,
    ):
        validate_zero_rate(zero_rate)
        filters = check_positive_int("filters", filters)
        if kwargs.get("groups", 1) != 1:
            raise ValueError(
                "PrePrunedConv2D masks the full channel connectivity; "
                f"`groups` must be 1, got {kwargs['groups']}."
            )
        self.requested_filters = filters
        self.zero_rate = zero_rate
        self.widen = widen
        self.seed = seed
        if widen:
            filters = widened_units(filters, zero_rate)
        super().__init__(filters, kernel_size, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self.mask = add_connectivity_mask(
            self, self.kernel, self.zero_rate, self.seed
        )

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * self.mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.requested_filters,
            zero_rate=self.zero_rate,
            widen=self.widen,
            seed=self.seed,
        )
        return config
