"""Per-example Dense and Conv2D gradients from one batched backward pass."""

import contextlib

import keras
from keras import ops

from keras_memgeom.src.layers.connectivity_mask import MaskedKernelMixin
from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense
from keras_memgeom.src.memory.squared_products import squared_products


def _tap_rank(layer, conv2d):
    """The input rank the tap rule fits the layer at, or `None`."""
    if (
        not layer.trainable
        or getattr(layer, "lora_enabled", False)
        or getattr(layer, "quantization_mode", None) is not None
    ):
        return None
    if type(layer) in (keras.layers.Dense, PrePrunedDense):
        return 2
    if (
        conv2d
        and type(layer) in (keras.layers.Conv2D, PrePrunedConv2D)
        and layer.data_format == "channels_last"
        and layer.groups == 1
        and layer.padding in ("valid", "same")
    ):
        return 4
    return None


def patches(layer, x, output_shape):
    """`(batch, positions, kh * kw * in)` input patches of a Conv2D (im2col).

    The last axis is ordered like the kernel `(kh, kw, in, out)`, so the
    per-example kernel gradient is `patches^T g` over positions.

    Args:
        layer: a channels-last `keras.layers.Conv2D` (or `PrePrunedConv2D`)
            with `"valid"` or `"same"` padding.
        x: the layer's input, `(batch, height, width, in)`.
        output_shape: the layer's output `(height, width, ...)` per example.

    Returns:
        A tensor `(batch, out_height * out_width, kh * kw * in)`.

    Example:

    ```python
    import keras
    import numpy as np

    from keras_memgeom.src.memory.dense_taps import patches

    layer = keras.layers.Conv2D(4, 3)
    x = np.zeros((2, 5, 5, 3), "float32")
    print(patches(layer, x, (3, 3)).shape)  # (2, 9, 27)
    ```
    """
    (kh, kw), (sh, sw), (dh, dw) = (
        layer.kernel_size,
        layer.strides,
        layer.dilation_rate,
    )
    out_h, out_w = output_shape[:2]
    if layer.padding == "same":
        pads = []
        for size, out, k, s, d in zip(
            x.shape[1:3], (out_h, out_w), (kh, kw), (sh, sw), (dh, dw)
        ):
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        x = ops.pad(x, [(0, 0), *pads, (0, 0)])
    columns = [
        x[
            :,
            i * dh : i * dh + sh * (out_h - 1) + 1 : sh,
            j * dw : j * dw + sw * (out_w - 1) + 1 : sw,
            :,
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    stacked = ops.stack(columns, axis=3)
    return ops.reshape(stacked, (-1, out_h * out_w, kh * kw * x.shape[-1]))


class DenseTaps:
    """Zero "taps" added to the outputs of the model's Dense and Conv2D layers.

    The gradient of `sum_b <u_b, f(x_b)>` with respect to a tap on a Dense
    layer's pre-activation is the per-example output gradient `g_b`, and the
    per-example kernel gradient is `x_b g_b^T` for the layer input `x_b`. So
    the squared per-example gradients sum to `(x^2)^T (g^2)` for the kernel
    and `sum_b g_b^2` for the bias: one backward pass, no per-example copy.

    A Conv2D is a Dense layer applied to every input patch: its per-example
    kernel gradient is `sum_p patch_bp g_bp^T` over output positions `p`
    (im2col), squared for all examples at once by the cheaper exact formula
    of `squared_products`. This replaces the vectorized per-example
    backward pass of the convolution, which TensorFlow runs as a loop over
    examples.

    The rule holds for a Dense layer called once per forward pass on 2-D
    inputs and a channels-last, ungrouped Conv2D called once on 4-D inputs;
    `probe` finds those layers, the others are left to the generic
    vectorized path.

    Args:
        model: a built Keras model.
        conv2d: whether Conv2D layers are tapped too (callers that handle
            only 2-D layer inputs leave it off).
    """

    def __init__(self, model, conv2d=False):
        self.model = model
        self.conv2d = conv2d
        self.layers = []
        self._output_shapes = []
        self._taps = None
        self._inputs = None

    def probe(self, x):
        """Runs the model once on `x` and keeps the layers the rule fits."""
        candidates = [
            layer
            for layer in self.model._flatten_layers(include_self=False)
            if _tap_rank(layer, self.conv2d) is not None
        ]
        calls = {id(layer): [] for layer in candidates}

        def recording(layer):
            original = type(layer).call.__get__(layer)

            def call(inputs, training=None):
                outputs = original(inputs)
                calls[id(layer)].append(
                    (len(inputs.shape), tuple(outputs.shape[1:]))
                )
                return outputs

            return call

        with _patched(candidates, recording):
            self.model(x, training=False)
        self.layers, self._output_shapes = [], []
        for layer in candidates:
            if len(calls[id(layer)]) == 1 and calls[id(layer)][0][
                0
            ] == _tap_rank(layer, self.conv2d):
                self.layers.append(layer)
                self._output_shapes.append(calls[id(layer)][0][1])
        return self

    @property
    def variables(self):
        """The variables whose squared gradients the taps give."""
        out = []
        for layer in self.layers:
            out.append(layer.kernel)
            if layer.use_bias:
                out.append(layer.bias)
        return out

    def zeros(self, batch_size, dtype):
        return [
            ops.zeros((batch_size, *shape), dtype=dtype)
            for shape in self._output_shapes
        ]

    @contextlib.contextmanager
    def active(self, taps):
        """Adds `taps` to the Dense outputs and records the layer inputs."""
        self._inputs = [None] * len(self.layers)
        position = {id(layer): i for i, layer in enumerate(self.layers)}

        def tapped(layer):
            i = position[id(layer)]

            def call(inputs, training=None):
                self._inputs[i] = inputs
                return tapped_call(layer, inputs, taps[i])

            return call

        with _patched(self.layers, tapped):
            yield self._inputs

    def squared_gradients(self, inputs, output_grads):
        """Per-variable sums over the batch of squared per-example gradients.

        Args:
            inputs: the recorded layer inputs, `(batch, in)` (Dense) or
                `(batch, height, width, in)` (Conv2D) each.
            output_grads: the tap gradients, stacked over `K` cotangents,
                `(K,) + output shape` each.

        Returns:
            A list aligned with `variables`.
        """
        out = []
        for layer, x, g, shape in zip(
            self.layers, inputs, output_grads, self._output_shapes
        ):
            out.extend(squared_gradients(layer, x, g, shape))
        return out


def tapped_call(layer, inputs, tap):
    """A Dense or Conv2D layer's call with `tap` added to its pre-activation."""
    if isinstance(layer, keras.layers.Dense):
        z = ops.matmul(inputs, masked_kernel(layer))
    else:  # a pre-pruned Conv2D masks inside `convolution_op`
        z = layer.convolution_op(inputs, layer.kernel)
    return tapped_output(layer, z, tap)


def tapped_output(layer, z, tap):
    """A layer's output from its product `z`: bias, then `tap`, activation.

    Args:
        layer: a layer with a `bias` (or `None`) and an `activation` (or
            `None`), channels last.
        z: the layer's input times its kernel.
        tap: the zero tap added to the pre-activation.

    Returns:
        `activation(z + bias + tap)`.
    """
    if getattr(layer, "bias", None) is not None:
        z = ops.add(z, layer.bias)  # channels last: broadcasts
    z = ops.add(z, tap)
    return z if layer.activation is None else layer.activation(z)


def squared_gradients(layer, x, g, shape):
    """Batch sums of a Dense or Conv2D layer's squared per-example gradients.

    Args:
        layer: the layer.
        x: its input, `(batch, in)` (Dense) or `(batch, height, width, in)`.
        g: its tap gradients, `(K, batch) + shape`.
        shape: its output shape without the batch axis.

    Returns:
        `[kernel]` or `[kernel, bias]`.
    """
    if isinstance(layer, keras.layers.Dense):
        g2 = ops.sum(ops.square(g), axis=0)
        out = [_masked(layer, ops.matmul(ops.transpose(ops.square(x)), g2))]
        if layer.use_bias:
            out.append(ops.sum(g2, axis=0))
        return out
    g = ops.reshape(g, (g.shape[0], -1, shape[0] * shape[1], 1, shape[2]))
    kernel = squared_products(patches(layer, x, shape)[:, :, None], g)
    out = [_masked(layer, ops.reshape(kernel, layer.kernel.shape))]
    if layer.use_bias:
        out.append(ops.sum(ops.square(ops.sum(g, axis=(2, 3))), axis=(0, 1)))
    return out


def kronecker_factors(layer, x, g, shape, counted):
    """Batch sums of a Dense or Conv2D layer's K-FAC terms, `(A, G, count)`.

    `x` and `g` as for `squared_gradients`; a Conv2D's positions are its
    output's `(height, width)`. `counted` and the sums as for
    `position_factors`.
    """
    if not isinstance(layer, keras.layers.Dense):
        x = patches(layer, x, shape)
        x = ops.reshape(x, (-1, *shape[:2], x.shape[-1]))
    return position_factors(x, g, counted, layer.use_bias)


def position_factors(x, g, counted, use_bias):
    """K-FAC sums of a layer applied alike at every position of its input.

    K-FAC-expand (Grosse & Martens 2016; Eschenhagen et al. 2023): every
    counted position of every example is one input of the layer. `A`
    divided by `count` (the mean of `a a^T` over counted positions) and
    `G` by the units the loss averages over (examples, or tokens) make
    `A (x) G` the per-unit Fisher, exact for one example at one place.

    Args:
        x: the inputs, `(batch, *positions, fan_in)`.
        g: the output gradients, `(K, batch, *positions, units)`.
        counted: 1 for each output unit the loss counts with a positive
            weight, 0 for a masked or zero-weight one: `(batch,)`, or
            `(batch, *output_positions)` for per-token outputs. A layer
            whose positions are the output's (applied at every token)
            counts each position as the output does; any other layer counts
            all the positions of every example with a counted unit. The
            others enter neither factor: a padded position's inputs are
            not the data's.
        use_bias: whether a 1 is appended to every input (for the bias).

    Returns:
        `(A, G, count)`: `A` the sum of `a a^T` (`(fan_in [+ 1],) * 2`) and
        `G` of `g g^T` (`(units, units)`) over the counted positions of the
        batch (`G` over the `K` cotangents too), and the number of those
        positions.
    """
    counted = counted_positions(counted, ops.ones_like(x[..., 0]))
    x = ops.reshape(x, (-1, x.shape[-1]))
    if use_bias:
        x = ops.concatenate([x, ops.ones_like(x[:, :1])], axis=1)
    # `counted` is 0 or 1: one factor of it weighs `a a^T` and `g g^T`.
    x = x * counted
    g = ops.reshape(g, (g.shape[0], -1, g.shape[-1])) * counted[None]
    g = ops.reshape(g, (-1, g.shape[-1]))
    a_sum = ops.matmul(ops.transpose(x), x)
    g_sum = ops.matmul(ops.transpose(g), g)
    return a_sum, g_sum, ops.sum(counted)


def counted_positions(counted, ones):
    """Which input positions K-FAC counts: 0/1, one row per position.

    Args:
        counted: as for `position_factors`.
        ones: ones of the layer's input positions, `(batch, *positions)`,
            in the factors' dtype.

    Returns:
        `(batch * positions, 1)`: 1 where the position is counted.
    """
    positions = tuple(ones.shape[1:])
    counted = ops.cast(counted, ones.dtype)
    if tuple(counted.shape[1:]) != positions:
        if len(counted.shape) > 1:
            counted = ops.max(counted, axis=tuple(range(1, len(counted.shape))))
        counted = ops.reshape(counted, (-1, *[1] * len(positions)))
        counted = counted * ones
    return ops.reshape(counted, (-1, 1))


def masked_kernel(layer):
    """The kernel a layer computes with: `kernel * mask` if pre-pruned."""
    return _masked(layer, layer.kernel)


def _masked(layer, kernel):
    # Masked entries of a pre-pruned layer get exactly zero gradient.
    if isinstance(layer, MaskedKernelMixin):
        return ops.multiply(kernel, ops.cast(layer.mask, kernel.dtype))
    return kernel


@contextlib.contextmanager
def _patched(layers, make_call):
    for layer in layers:
        object.__setattr__(layer, "call", make_call(layer))
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
