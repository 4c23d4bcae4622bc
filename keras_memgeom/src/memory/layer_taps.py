"""Per-example gradients of common Keras layers from one backward pass.

A zero "tap" added to a layer's pre-activation output has, as gradient,
the per-example output gradient `g_b` of that layer (for the backward pass
of `sum_b <u_b, f(x_b)>`). Each rule below turns the layer's recorded
input and its tap gradients into the batch sums of squared per-example
gradients of its variables, exactly, without a per-example backward pass:

- Dense and Conv2D (plain or pre-pruned): `dense_taps`.
- Dense on `(batch, ..., in)` and EinsumDense (so MultiHeadAttention): the
  per-example kernel gradient is the layer's einsum with the batch axis
  kept, `einsum("b...i,b...o->bio")` for a Dense.
- Conv1D: a Conv2D of height 1 (im2col).
- DepthwiseConv2D: every input channel is correlated with its own output
  gradients, `dK[i, j, c, m] = sum_p patch[p, i, j, c] g[p, c, m]`. Its
  K-FAC is one block per channel (grouped factors).
- Conv2D with `groups > 1`: the same per group of channels, a Conv2D from
  the group's patches to its outputs; K-FAC a block per group.
- SeparableConv2D: a DepthwiseConv2D followed by a 1x1 convolution, with a
  tap on each; its K-FAC has a block for each step.
- Embedding: the gradient of row `v` is the sum of the output gradients at
  the positions holding token `v`. Its K-FAC input factor is diagonal:
  the second moment of one-hot inputs is the diagonal of the tokens'
  frequencies.
- keras-hub's PositionEmbedding: row `t`'s gradient is the output
  gradient at position `t`; K-FAC as an Embedding whose token is the
  position.
- LayerNormalization, BatchNormalization (inference) and RMS
  normalizations (Keras's and keras-hub's decoders'): `dgamma = sum g *
  x_hat` and `dbeta = sum g` over the non-feature axes of each example.

The convolution rules sum their squared per-example kernel gradients with
`squared_products`, by whichever exact formula costs less at the layer's
shapes. Moving statistics and other non-trainable variables are never
tapped.
"""

import contextlib
import string
import types

import keras
from keras import ops

from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense
from keras_memgeom.src.memory import dense_taps
from keras_memgeom.src.memory.squared_products import squared_products
from keras_memgeom.src.memory.squared_products import squared_products_elements


def _plain(layer):
    return (
        layer.trainable
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
    )


def _sum_squares(per_example):
    """`sum_k sum_b per_example[k, b]^2`."""
    return ops.sum(ops.square(per_example), axis=(0, 1))


def _channels_last_conv(layer):
    return layer.data_format == "channels_last" and layer.padding in (
        "valid",
        "same",
    )


def _by_group(patches, taps, groups):
    """`(n, kh * kw * channels)` patches as `(n, groups, kh * kw * in)`.

    A group's row is its `in = channels / groups` channels at every tap,
    ordered like its slice of the kernel `(kh, kw, in, ...)`.
    """
    row = patches.shape[-1] // groups
    patches = ops.reshape(patches, (-1, taps, groups, row // taps))
    return ops.reshape(ops.swapaxes(patches, 1, 2), (-1, groups, row))


def _grouped_squares(patches, g, kernel_shape, groups):
    """Squared per-example kernel gradients of a grouped convolution, summed.

    Every group is a group of `squared_products`, its channels' patch
    mapped to its `units / groups` outputs. A depthwise kernel `(kh, kw,
    channels, multiplier)` is laid out as the grouped kernel `(kh, kw, 1,
    channels * multiplier)`, a group per channel.
    """
    taps = kernel_shape[0] * kernel_shape[1]
    # The batch is dynamic under `tf.function`; the positions stay static.
    batch, positions = ops.shape(patches)[0], patches.shape[1]
    patches = _by_group(
        ops.reshape(patches, (-1, patches.shape[-1])), taps, groups
    )
    patches = ops.reshape(patches, (batch, positions, *patches.shape[1:]))
    units = g.shape[-1] // groups
    g = ops.reshape(g, (g.shape[0], batch, positions, groups, units))
    squares = squared_products(patches, g)
    squares = ops.reshape(squares, (groups, taps, -1, units))
    return ops.reshape(ops.transpose(squares, (1, 2, 0, 3)), kernel_shape)


def _positions(output_shape):
    """The output positions of a channels-last convolution, per example."""
    return _size(output_shape[:-1])


class _Rule:
    """How one layer type is tapped; subclasses fill in the math.

    `taps(layer, input_shape, output_shape)` gives the per-example shapes
    of the layer's taps; `call` runs the layer with the taps added and
    returns its outputs and what `squared` (and `factors`) read back.
    """

    kfac = False

    def fits(self, layer, input_shape, output_shape):
        return True

    def takes(self, extra_args, kwargs):
        """Whether `call` reproduces a call with these other arguments.

        A rule's `call` sees the inputs only; `training` and `mask` change
        nothing in what the rules compute (normalization is tapped at
        inference).
        """
        return not extra_args and set(kwargs) <= {"training", "mask"}

    def variables(self, layer):
        out = [layer.kernel]
        if layer.use_bias:
            out.append(layer.bias)
        return out

    def kfac_blocks(self, layer, input_shape):
        """`[(kernel, bias or None, axes or None), ...]`: what a K-FAC rule's
        factors cover.

        One triple per Kronecker block, aligned with what `factors`
        returns; together they cover every variable of `variables`. `axes`
        permutes a kernel's axes into the `(fan_in, units)` matrix order
        (`KroneckerBlock.axes`).
        """
        return [(layer.kernel, getattr(layer, "bias", None), None)]

    def taps(self, layer, input_shape, output_shape):
        return [output_shape]

    def per_example_size(self, layer, input_shape, output_shape, cotangents):
        """Elements per example `squared` holds for `cotangents` of them."""
        return 0


class _DenseConv2D(_Rule):
    """Dense on `(batch, in)` and Conv2D: `dense_taps`."""

    kfac = True

    def fits(self, layer, input_shape, output_shape):
        if type(layer) in (keras.layers.Dense, PrePrunedDense):
            return len(input_shape) == 2
        return (
            layer.groups == 1
            and _channels_last_conv(layer)
            and len(input_shape) == 4
        )

    def call(self, layer, inputs, taps):
        return dense_taps.tapped_call(layer, inputs, taps[0]), inputs

    def squared(self, layer, x, grads, shapes):
        return dense_taps.squared_gradients(layer, x, grads[0], shapes[0])

    def factors(self, layer, x, grads, shapes, counted):
        return [
            dense_taps.kronecker_factors(layer, x, grads[0], shapes[0], counted)
        ]

    def per_example_size(self, layer, input_shape, output_shape, cotangents):
        if isinstance(layer, keras.layers.Dense):
            return 0
        fan_in = _size(layer.kernel.shape[:-1])
        return squared_products_elements(
            _positions(output_shape), 1, fan_in, layer.filters, cotangents
        )


class _Einsum(_Rule):
    """EinsumDense, and Dense on inputs with more than two axes.

    The equation is made explicit (no `...`); its input's first axis is the
    batch axis, which the output keeps first and the kernel does not hold.
    """

    def _equation(self, layer, rank):
        if isinstance(layer, keras.layers.Dense):
            return None
        equation = layer.equation.replace(" ", "")
        spec, out = equation.split("->")
        x, kernel = spec.split(",")
        if "..." in x:
            free = [c for c in string.ascii_letters if c not in equation]
            fill = "".join(free[: rank - (len(x) - 3)])
            x = x.replace("...", fill)
            out = out.replace("...", fill)
        if "..." in kernel or len(x) != rank or not x or out[:1] != x[0]:
            return None
        if x[0] in kernel or not set(kernel) <= set(x) | set(out):
            return None
        return x, kernel, out

    def fits(self, layer, input_shape, output_shape):
        if isinstance(layer, keras.layers.Dense):
            return len(input_shape) > 2
        return self._equation(layer, len(input_shape)) is not None

    def variables(self, layer):
        out = [layer.kernel]
        if getattr(layer, "bias", None) is not None:
            out.append(layer.bias)
        return out

    def call(self, layer, inputs, taps):
        if isinstance(layer, keras.layers.Dense):
            z = ops.matmul(inputs, dense_taps.masked_kernel(layer))
        else:
            z = ops.einsum(layer.equation, inputs, layer.kernel)
        return dense_taps.tapped_output(layer, z, taps[0]), inputs

    def _letters(self, layer, x):
        if isinstance(layer, keras.layers.Dense):
            rank = len(x.shape)
            fill = string.ascii_lowercase[: rank - 1]
            return fill + "y", "yz", fill + "z"
        return self._equation(layer, len(x.shape))

    def squared(self, layer, x, grads, shapes):
        g = grads[0]
        spec, kernel, out = self._letters(layer, x)
        k = next(c for c in string.ascii_letters if c not in spec + out)
        per_example = ops.einsum(f"{spec},{k}{out}->{k}{spec[0]}{kernel}", x, g)
        result = [dense_taps._masked(layer, _sum_squares(per_example))]
        bias = getattr(layer, "bias", None)
        if bias is not None:
            if isinstance(layer, keras.layers.Dense):
                kept = out[-1]
            else:
                kept = "".join(c for c in out if c in layer.bias_axes)
            per_example = ops.einsum(f"{k}{out}->{k}{out[0]}{kept}", g)
            result.append(ops.reshape(_sum_squares(per_example), bias.shape))
        return result

    def per_example_size(self, layer, input_shape, output_shape, cotangents):
        return cotangents * _size(layer.kernel.shape)

    def matrix_layout(self, layer, rank):
        """`(positions, axes)` of a matmul, or `None` for another einsum.

        A matmul of the input's last axes `S` into the output's last axes
        `U`, `P S, kernel -> P U`, the kernel holding the letters of `S`
        and `U` in any order (a bias on all of `U` or none), is a Dense
        applied at every position of `P`: K-FAC treats its kernel as the
        `(fan_in, units)` matrix `transpose(kernel, axes)`, `fan_in` the
        size of `S` and `units` that of `U`. So are all four projections
        of `MultiHeadAttention`: `abc,cde->abde` (query, key, value; `U`
        the heads and their dimension) and `abcd,cde->abe` (output); and
        Gemma's `btd,ndh->btnh`, whose kernel is stored heads first
        (`axes` `(1, 0, 2)`).

        Returns:
            `positions`, the number of position axes (batch included), and
            `axes`, `None` where the kernel's own order is the matrix's.
        """
        if isinstance(layer, keras.layers.Dense):
            return rank - 1, None
        spec, kernel, out = self._equation(layer, rank)
        contracted = "".join(c for c in spec if c in kernel and c not in out)
        produced = "".join(c for c in out if c in kernel and c not in spec)
        if (
            not contracted
            or not produced
            or len(contracted) + len(produced) != len(kernel)
            or not spec.endswith(contracted)
        ):
            return None
        prefix = spec[: len(spec) - len(contracted)]
        if out != prefix + produced:
            return None
        bias = getattr(layer, "bias", None)
        if bias is not None and layer.bias_axes != produced:
            return None
        axes = tuple(kernel.index(c) for c in contracted + produced)
        return len(prefix), None if axes == tuple(range(len(kernel))) else axes

    def kfac_blocks(self, layer, input_shape):
        _, axes = self.matrix_layout(layer, len(input_shape))
        return [(layer.kernel, getattr(layer, "bias", None), axes)]

    def factors(self, layer, x, grads, shapes, counted):
        prefix, _ = self.matrix_layout(layer, len(x.shape))
        positions = tuple(x.shape[1:prefix])
        x = ops.reshape(x, (-1, *positions, _size(x.shape[prefix:])))
        g = grads[0]  # `(K,) + output`, the output's first axes positions
        g = ops.reshape(
            g, (g.shape[0], -1, *positions, _size(g.shape[1 + prefix :]))
        )
        return [
            dense_taps.position_factors(
                x, g, counted, getattr(layer, "bias", None) is not None
            )
        ]


class _Conv1D(_Rule):
    """Conv1D: a Conv2D of height 1, so im2col over one axis."""

    kfac = True

    def fits(self, layer, input_shape, output_shape):
        return (
            layer.groups == 1
            and _channels_last_conv(layer)
            and len(input_shape) == 3
        )

    def call(self, layer, inputs, taps):
        z = layer.convolution_op(inputs, layer.kernel)
        return dense_taps.tapped_output(layer, z, taps[0]), inputs

    def _patches(self, layer, x, shape):
        geometry = types.SimpleNamespace(
            kernel_size=(1, layer.kernel_size[0]),
            strides=(1, layer.strides[0]),
            dilation_rate=(1, layer.dilation_rate[0]),
            padding=layer.padding,
        )
        return dense_taps.patches(geometry, x[:, None], (1, shape[0]))

    def squared(self, layer, x, grads, shapes):
        g = grads[0]
        patches = self._patches(layer, x, shapes[0])[:, :, None]
        kernel = squared_products(patches, g[:, :, :, None])
        out = [ops.reshape(kernel, layer.kernel.shape)]
        if layer.use_bias:
            out.append(_sum_squares(ops.sum(g, axis=2)))
        return out

    def factors(self, layer, x, grads, shapes, counted):
        return [
            dense_taps.position_factors(
                self._patches(layer, x, shapes[0]),
                grads[0],
                counted,
                layer.use_bias,
            )
        ]

    def per_example_size(self, layer, input_shape, output_shape, cotangents):
        fan_in = _size(layer.kernel.shape[:-1])
        return squared_products_elements(
            _positions(output_shape), 1, fan_in, layer.filters, cotangents
        )


def _grouped_factors(layer, groups, use_bias, x, g, shape, counted):
    """Grouped K-FAC factors of a grouped convolution, a block per group.

    Args:
        layer: the convolution, for its geometry.
        groups: its groups (a depthwise kernel's: its input channels).
        use_bias: whether a bias adds to the convolution's output.
        x: the layer's input.
        g: the gradients of the convolution's output, `(K, batch, height,
            width, units)`.
        shape: that output's shape per example.
        counted: see `dense_taps.position_factors`.

    Returns:
        `(A, G, count)`: `A` `(groups, rows, rows)`, `rows` the `kh * kw *
        channels / groups` of a group's patch (+1 with a bias), `G`
        `(groups, units / groups, units / groups)`, summed over the
        counted positions, and their number.
    """
    taps = layer.kernel_size[0] * layer.kernel_size[1]
    x = dense_taps.patches(layer, x, shape)
    counted = dense_taps.counted_positions(
        counted, ops.reshape(ops.ones_like(x[..., 0]), (-1, *shape[:2]))
    )
    x = _by_group(ops.reshape(x, (-1, x.shape[-1])), taps, groups)
    if use_bias:
        x = ops.concatenate([x, ops.ones_like(x[:, :, :1])], axis=2)
    # `counted` is 0 or 1: one factor of it weighs both moments.
    x = x * counted[:, :, None]
    units = g.shape[-1] // groups
    g = ops.reshape(g, (g.shape[0], -1, groups, units))
    g = ops.reshape(g * counted[None, :, :, None], (-1, groups, units))
    return (
        ops.einsum("ngp,ngq->gpq", x, x),
        ops.einsum("ngj,ngk->gjk", g, g),
        ops.sum(counted),
    )


class _GroupedConv2D(_Rule):
    """Conv2D with `groups > 1`: each group correlates its own channels.

    A group maps its `kh * kw * channels / groups` patch to its `filters /
    groups` outputs, so its per-example kernel gradient is that of a
    Conv2D. K-FAC gives each group its own block (K-FAC-expand): `A_g` the
    second moment of group `g`'s patches (with a 1 for the bias), `G_g` of
    its outputs' gradients; grouped factors (`kronecker`), exact on each
    group's block for one example at one position.
    """

    kfac = True

    def fits(self, layer, input_shape, output_shape):
        return (
            layer.groups > 1
            and _channels_last_conv(layer)
            and len(input_shape) == 4
        )

    def groups(self, layer):
        return layer.groups

    def convolve(self, layer, inputs):
        return layer.convolution_op(inputs, layer.kernel)

    def call(self, layer, inputs, taps):
        z = self.convolve(layer, inputs)
        return dense_taps.tapped_output(layer, z, taps[0]), inputs

    def squared(self, layer, x, grads, shapes):
        g = grads[0]
        patches = dense_taps.patches(layer, x, shapes[0])
        out = [
            _grouped_squares(patches, g, layer.kernel.shape, self.groups(layer))
        ]
        if layer.use_bias:
            out.append(_sum_squares(ops.sum(g, axis=(2, 3))))
        return out

    def factors(self, layer, x, grads, shapes, counted):
        return [
            _grouped_factors(
                layer,
                self.groups(layer),
                layer.use_bias,
                x,
                grads[0],
                shapes[0],
                counted,
            )
        ]

    def per_example_size(self, layer, input_shape, output_shape, cotangents):
        return _grouped_elements(
            layer.kernel,
            self.groups(layer),
            output_shape[-1],
            output_shape,
            cotangents,
        )


class _Depthwise(_GroupedConv2D):
    """DepthwiseConv2D: a grouped convolution with a group per channel.

    Its kernel `(kh, kw, channels, multiplier)` is laid out as the grouped
    kernel `(kh, kw, 1, channels * multiplier)`.
    """

    def fits(self, layer, input_shape, output_shape):
        return _channels_last_conv(layer) and len(input_shape) == 4

    def groups(self, layer):
        return layer.kernel.shape[2]

    def convolve(self, layer, inputs):
        return _depthwise_conv(layer, inputs, layer.kernel)


def _depthwise_conv(layer, inputs, kernel):
    """The depthwise convolution of `layer`'s geometry with `kernel`."""
    return ops.depthwise_conv(
        inputs,
        kernel,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


class _Separable(_Rule):
    """SeparableConv2D: a tapped depthwise step, then a tapped 1x1 step.

    K-FAC gives each step its own block: the depthwise kernel grouped
    factors, a block per channel as for a DepthwiseConv2D without bias;
    the 1x1 step (pointwise kernel and bias) those of a Dense at every
    output position on the depthwise step's output. The blocks leave out
    the correlation between the two steps.
    """

    kfac = True

    def fits(self, layer, input_shape, output_shape):
        return _channels_last_conv(layer) and len(input_shape) == 4

    def variables(self, layer):
        out = [layer.depthwise_kernel, layer.pointwise_kernel]
        if layer.use_bias:
            out.append(layer.bias)
        return out

    def taps(self, layer, input_shape, output_shape):
        inner = (*output_shape[:2], input_shape[-1] * layer.depth_multiplier)
        return [inner, output_shape]

    def call(self, layer, inputs, taps):
        inner = _depthwise_conv(layer, inputs, layer.depthwise_kernel)
        inner = ops.add(inner, taps[0])
        pointwise = layer.pointwise_kernel
        z = ops.matmul(inner, ops.reshape(pointwise, pointwise.shape[2:]))
        outputs = dense_taps.tapped_output(layer, z, taps[1])
        return outputs, (inputs, inner)

    def kfac_blocks(self, layer, input_shape):
        return [
            (layer.depthwise_kernel, None, None),
            (
                layer.pointwise_kernel,
                layer.bias if layer.use_bias else None,
                None,
            ),
        ]

    def squared(self, layer, saved, grads, shapes):
        inner = saved[1]
        batch, positions = ops.shape(inner)[0], _positions(inner.shape[1:])
        inner = ops.reshape(inner, (batch, positions, 1, inner.shape[-1]))
        g = grads[1]
        g = ops.reshape(g, (g.shape[0], batch, positions, 1, g.shape[-1]))
        pointwise = squared_products(inner, g)
        patches = dense_taps.patches(layer, saved[0], shapes[0])
        channels = layer.depthwise_kernel.shape[2]
        out = [
            _grouped_squares(
                patches, grads[0], layer.depthwise_kernel.shape, channels
            ),
            ops.reshape(pointwise, layer.pointwise_kernel.shape),
        ]
        if layer.use_bias:
            out.append(_sum_squares(ops.sum(g, axis=(2, 3))))
        return out

    def factors(self, layer, saved, grads, shapes, counted):
        depthwise = _grouped_factors(
            layer,
            layer.depthwise_kernel.shape[2],
            False,
            saved[0],
            grads[0],
            shapes[0],
            counted,
        )
        pointwise = dense_taps.position_factors(
            saved[1], grads[1], counted, layer.use_bias
        )
        return [depthwise, pointwise]

    def per_example_size(self, layer, input_shape, output_shape, cotangents):
        fan_in, units = layer.pointwise_kernel.shape[2:]
        pointwise = squared_products_elements(
            _positions(output_shape), 1, fan_in, units, cotangents
        )
        channels = input_shape[-1]
        depthwise = _grouped_elements(
            layer.depthwise_kernel,
            channels,
            channels * layer.depth_multiplier,
            output_shape,
            cotangents,
        )
        return depthwise + pointwise


class _Embedding(_Rule):
    """Embedding: a row's gradient sums the output gradients at its token.

    For the positions `S_v` of token `v` in one example, the row gradient is
    `G_v = sum_{t in S_v} g_t`. Every position `t` of `S_v` knows `G_v` (a
    sum over the positions holding the same token) and adds `G_v^2 / |S_v|`
    to row `v`, so the rows receive `sum_b G_bv^2` without a `(batch,
    vocabulary)` tensor.

    K-FAC treats it as a Dense on one-hot inputs at every position: `A`,
    the mean of `e_v e_v^T` over the counted positions, is the diagonal
    of token frequencies (held as its diagonal, `O(vocabulary)`), and `G`
    the second moment of the output gradients. Exact for one example with
    one token, as for a Dense.
    """

    kfac = True

    def fits(self, layer, input_shape, output_shape):
        # A `ReversibleEmbedding` called in reverse is a matmul to logits.
        return output_shape == (*input_shape[1:], layer.output_dim)

    def takes(self, extra_args, kwargs):
        return (
            not extra_args
            and set(kwargs) <= {"training", "mask", "reverse"}
            and kwargs.get("reverse", False) is False
        )

    def variables(self, layer):
        return [layer.embeddings]

    def kfac_blocks(self, layer, input_shape):
        return [(layer.embeddings, None, None)]

    def factors(self, layer, tokens, grads, shapes, counted):
        g = grads[0]  # `(K, batch, *positions, dim)`
        counted = dense_taps.counted_positions(
            counted, ops.ones_like(tokens, dtype=g.dtype)
        )
        a_sum = ops.segment_sum(
            counted[:, 0],
            ops.reshape(tokens, (-1,)),
            num_segments=layer.input_dim,
        )
        g = ops.reshape(g, (g.shape[0], -1, g.shape[-1])) * counted[None]
        g = ops.reshape(g, (-1, g.shape[-1]))
        return [(a_sum, ops.matmul(ops.transpose(g), g), ops.sum(counted))]

    def call(self, layer, inputs, taps):
        tokens = inputs
        if keras.backend.standardize_dtype(tokens.dtype) not in (
            "int32",
            "int64",
        ):
            tokens = ops.cast(tokens, "int32")
        z = ops.take(layer.embeddings, tokens, axis=0)
        return ops.add(z, taps[0]), tokens

    def squared(self, layer, tokens, grads, shapes):
        g = grads[0]
        batch, dim = ops.shape(tokens)[0], g.shape[-1]
        tokens = ops.reshape(tokens, (batch, -1))
        g = ops.reshape(g, (g.shape[0], batch, -1, dim))
        same = ops.cast(
            ops.equal(tokens[:, :, None], tokens[:, None, :]), g.dtype
        )
        rows = ops.einsum("bts,kbsd->kbtd", same, g)
        share = (
            ops.sum(ops.square(rows), axis=0) / ops.sum(same, axis=2)[..., None]
        )
        return [
            ops.segment_sum(
                ops.reshape(share, (-1, dim)),
                ops.reshape(tokens, (-1,)),
                num_segments=layer.input_dim,
            )
        ]


class _PositionEmbedding(_Rule):
    """keras-hub's PositionEmbedding: row `t` is added at position `t`.

    Its output is `position_embeddings[:seq]` broadcast over the batch, so
    an example's gradient of row `t` is its output gradient at position `t`.
    K-FAC treats it as an `Embedding` whose token is the position: `A` is
    the diagonal of how often each position is counted, `G` the second
    moment of the output gradients.
    """

    kfac = True

    def fits(self, layer, input_shape, output_shape):
        return (
            len(input_shape) == 3
            and output_shape == tuple(input_shape[1:])
            and output_shape[0] is not None
            and output_shape[0] <= layer.sequence_length
        )

    def takes(self, extra_args, kwargs):
        # TokenAndPositionEmbedding passes the defaults by name; a start
        # index or custom positions (cached decoding) read other rows.
        return (
            not extra_args
            and set(kwargs) <= {"start_index", "positions", "training"}
            and _is_zero(kwargs.get("start_index", 0))
            and kwargs.get("positions") is None
        )

    def variables(self, layer):
        return [layer.position_embeddings]

    def kfac_blocks(self, layer, input_shape):
        return [(layer.position_embeddings, None, None)]

    def call(self, layer, inputs, taps):
        # Nothing to keep: the rows depend on the output gradients alone.
        return ops.add(type(layer).call(layer, inputs), taps[0]), ()

    def _rows(self, layer, per_position):
        """`per_position` `(seq, ...)` padded with zero rows to the table's."""
        missing = layer.sequence_length - per_position.shape[0]
        pad = [(0, missing)] + [(0, 0)] * (len(per_position.shape) - 1)
        return ops.pad(per_position, pad)

    def squared(self, layer, saved, grads, shapes):
        return [self._rows(layer, _sum_squares(grads[0]))]

    def factors(self, layer, saved, grads, shapes, counted):
        g = grads[0]  # `(K, batch, seq, dim)`
        batch, seq = ops.shape(g)[1], g.shape[2]
        counted = dense_taps.counted_positions(
            counted, ops.ones((batch, seq), dtype=g.dtype)
        )
        a_sum = ops.sum(ops.reshape(counted, (batch, seq)), axis=0)
        g = ops.reshape(g, (g.shape[0], -1, g.shape[-1])) * counted[None]
        g = ops.reshape(g, (-1, g.shape[-1]))
        return [
            (
                self._rows(layer, a_sum),
                ops.matmul(ops.transpose(g), g),
                ops.sum(counted),
            )
        ]


def _is_zero(value):
    return isinstance(value, int) and value == 0


class _Normalization(_Rule):
    """A normalization, channels last: `x_hat * scale + offset`.

    `x_hat` is free of the scale and the offset (inference statistics for
    BatchNormalization), so per example `dscale = sum g * x_hat` and
    `doffset = sum g` over the axes the scale does not span. Subclasses
    say which axes they normalize, which variables they have and how they
    compute `x_hat`.
    """

    def fits(self, layer, input_shape, output_shape):
        rank = len(input_shape)
        axes = self.axes(layer, rank)
        return axes == list(range(rank - len(axes), rank))

    def variables(self, layer):
        return [v for v in self.scale_and_offset(layer) if v is not None]

    def call(self, layer, inputs, taps):
        outputs = type(layer).call(layer, inputs)
        x_hat = self.normalized(layer, ops.cast(inputs, "float32"))
        return ops.add(outputs, taps[0]), x_hat

    def squared(self, layer, x_hat, grads, shapes):
        g = grads[0]
        scale, offset = self.scale_and_offset(layer)
        features = _size(self.variables(layer)[0].shape)
        batch = ops.shape(x_hat)[0]
        g = ops.reshape(g, (g.shape[0], batch, -1, features))
        out = []
        if scale is not None:
            x_hat = ops.reshape(x_hat, (batch, -1, features))
            per_example = ops.sum(g * ops.cast(x_hat, g.dtype), axis=2)
            out.append(ops.reshape(_sum_squares(per_example), scale.shape))
        if offset is not None:
            per_example = ops.sum(g, axis=2)
            out.append(ops.reshape(_sum_squares(per_example), offset.shape))
        return out


def _sorted_axes(axis, rank):
    axis = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(a % rank for a in axis)


class _LayerNormalization(_Normalization):
    """LayerNormalization; with `rms_scaling`, `x / sqrt(var + eps) * gamma`."""

    def axes(self, layer, rank):
        return _sorted_axes(layer.axis, rank)

    def scale_and_offset(self, layer):
        scale = layer.gamma if layer.scale or layer.rms_scaling else None
        offset = layer.beta if layer.center and not layer.rms_scaling else None
        return scale, offset

    def normalized(self, layer, x):
        axes = self.axes(layer, len(x.shape))
        mean, variance = ops.moments(x, axes=axes, keepdims=True)
        if layer.rms_scaling:
            # Keras scales by the variance, not the mean square.
            return x * ops.rsqrt(variance + layer.epsilon)
        return (x - mean) * ops.rsqrt(variance + layer.epsilon)


class _BatchNormalization(_Normalization):
    """BatchNormalization at inference: the moving statistics normalize."""

    def fits(self, layer, input_shape, output_shape):
        return (
            super().fits(layer, input_shape, output_shape)
            and not layer.renorm
            and not layer.synchronized
        )

    def axes(self, layer, rank):
        return _sorted_axes(layer.axis, rank)

    def scale_and_offset(self, layer):
        return (
            layer.gamma if layer.scale else None,
            layer.beta if layer.center else None,
        )

    def call(self, layer, inputs, taps):
        outputs = type(layer).call(layer, inputs, training=False)
        x_hat = self.normalized(layer, ops.cast(inputs, "float32"))
        return ops.add(outputs, taps[0]), x_hat

    def normalized(self, layer, x):
        mean, variance = layer.moving_mean, layer.moving_variance
        return (x - mean) * ops.rsqrt(variance + layer.epsilon)


class _RMSNormalization(_Normalization):
    """RMS normalizations: `x / sqrt(mean(x^2) + eps)` times their `scale`.

    Keras's RMSNormalization, and keras-hub's of Llama-, Mistral-, Qwen- and
    Phi-3-style decoders (the last axis); Gemma's multiplies by `1 +
    scale`, whose derivative in `scale` is the same `x_hat`.
    """

    def axes(self, layer, rank):
        return _sorted_axes(getattr(layer, "axis", -1), rank)

    def scale_and_offset(self, layer):
        return layer.scale, None

    def normalized(self, layer, x):
        epsilon = layer.epsilon
        if epsilon is None:
            epsilon = keras.backend.epsilon()
        axes = self.axes(layer, len(x.shape))
        mean_square = ops.mean(ops.square(x), axis=axes, keepdims=True)
        return x * ops.rsqrt(mean_square + epsilon)


_RULES = {
    keras.layers.Dense: (_DenseConv2D(), _Einsum()),
    PrePrunedDense: (_DenseConv2D(), _Einsum()),
    keras.layers.Conv2D: (_DenseConv2D(), _GroupedConv2D()),
    PrePrunedConv2D: (_DenseConv2D(),),
    keras.layers.EinsumDense: (_Einsum(),),
    keras.layers.Conv1D: (_Conv1D(),),
    keras.layers.DepthwiseConv2D: (_Depthwise(),),
    keras.layers.SeparableConv2D: (_Separable(),),
    keras.layers.Embedding: (_Embedding(),),
    keras.layers.ReversibleEmbedding: (_Embedding(),),
    keras.layers.LayerNormalization: (_LayerNormalization(),),
    keras.layers.BatchNormalization: (_BatchNormalization(),),
    keras.layers.RMSNormalization: (_RMSNormalization(),),
}


# keras-hub's layers, named, not imported: keras-hub is optional. Its
# ReversibleEmbedding computes as Keras's (it only sets on its forward
# output the mask Keras's `Layer.__call__` sets anyway). Its decoders' RMS
# normalizations compute `x / sqrt(mean(x^2) + epsilon)` over the last
# axis, times `scale` (Gemma's `1 + scale`).
_HUB_RMS_NORMALIZATIONS = (
    "models.gemma.rms_normalization.RMSNormalization",
    "models.llama.llama_layernorm.LlamaLayerNorm",
    "models.mistral.mistral_layer_norm.MistralLayerNormalization",
    "models.phi3.phi3_layernorm.Phi3LayerNorm",
    "models.qwen.qwen_layernorm.QwenLayerNorm",
)
_HUB_RULES = {
    "keras_hub.src.layers.modeling.reversible_embedding.ReversibleEmbedding": (
        _RULES[keras.layers.ReversibleEmbedding]
    ),
    "keras_hub.src.layers.modeling.position_embedding.PositionEmbedding": (
        _PositionEmbedding(),
    ),
    **{
        f"keras_hub.src.{name}": (_RMSNormalization(),)
        for name in _HUB_RMS_NORMALIZATIONS
    },
}


def _rules_of(layer):
    kind = type(layer)
    if kind in _RULES:
        return _RULES[kind]
    return _HUB_RULES.get(f"{kind.__module__}.{kind.__qualname__}", ())


def _grouped_elements(kernel, groups, outputs, output_shape, cotangents):
    """`squared_products_elements` of a grouped (or depthwise) kernel.

    `outputs` is the number of its output channels, `output_shape` holds
    its output positions.
    """
    return squared_products_elements(
        _positions(output_shape),
        groups,
        _size(kernel.shape) // outputs,
        outputs // groups,
        cotangents,
    )


def _size(shape):
    size = 1
    for d in shape:
        size *= int(d)
    return size


class LayerTaps:
    """Taps on every layer of a model that a per-example rule covers.

    Generalizes `dense_taps.DenseTaps` to the rules listed in this module.
    A rule fits a layer of exactly that type (subclasses may compute
    differently), trainable, without LoRA or quantization, called once per
    forward pass on inputs of the rank the rule reads; `probe` finds those
    layers, the others are left to the generic vectorized path.

    Args:
        model: a built Keras model.
    """

    def __init__(self, model):
        self.model = model
        self.layers = []
        self._rules = []
        self._shapes = []
        self._io_shapes = []
        self.activation_size = 0

    def probe(self, x):
        """Runs the model once on `x` and keeps the layers a rule fits.

        Also counts the elements of every layer's outputs per example
        (`activation_size`), which the backward passes hold.
        """
        layers = list(self.model._flatten_layers(include_self=False))
        calls = {id(layer): [] for layer in layers}

        def recording(layer):
            original = type(layer).call.__get__(layer)

            def call(*args, **kwargs):
                outputs = original(*args, **kwargs)
                inputs = args[0] if args else None
                calls[id(layer)].append(
                    (
                        tuple(getattr(inputs, "shape", ()) or ())[1:],
                        keras.tree.flatten(outputs),
                        (args[1:], kwargs),
                    )
                )
                return outputs

            return call

        with dense_taps._patched(layers, recording):
            self.model(x, training=False)
        self.layers, self._rules, self._shapes = [], [], []
        self._io_shapes = []
        self.activation_size = sum(
            _size(t.shape[1:])
            for layer in layers
            for _, outputs, _ in calls[id(layer)]
            for t in outputs
            if hasattr(t, "shape") and len(t.shape) > 0
        )
        for layer in layers:
            rules = _rules_of(layer)
            if not rules or not _plain(layer) or len(calls[id(layer)]) != 1:
                continue
            input_shape, outputs, arguments = calls[id(layer)][0]
            if len(outputs) != 1:
                continue
            input_shape = (None, *input_shape)
            output_shape = tuple(outputs[0].shape[1:])
            rule = next(
                (
                    r
                    for r in rules
                    if r.takes(*arguments)
                    and r.fits(layer, input_shape, output_shape)
                ),
                None,
            )
            if rule is None:
                continue
            self.layers.append(layer)
            self._io_shapes.append((input_shape, output_shape))
            self._rules.append(rule)
            self._shapes.append(rule.taps(layer, input_shape, output_shape))
        return self

    @property
    def variables(self):
        """The variables whose squared gradients the taps give."""
        return [
            v
            for layer, rule in zip(self.layers, self._rules)
            for v in rule.variables(layer)
        ]

    @property
    def kfac_layers(self):
        """The tapped layers that get Kronecker factors, in tap order."""
        return [
            layer
            for layer, rule, shapes in zip(
                self.layers, self._rules, self._shapes
            )
            if self._kfac(layer, rule, shapes)
        ]

    def _kfac(self, layer, rule, shapes):
        if isinstance(rule, _Einsum):
            rank = len(self._io_shapes[self.layers.index(layer)][0])
            return rule.matrix_layout(layer, rank) is not None
        return rule.kfac

    def per_example_elements(self, cotangents):
        """Elements per example the tapped backward of `cotangents` holds."""
        taps = sum(_size(s) for shapes in self._shapes for s in shapes)
        return cotangents * taps + sum(
            rule.per_example_size(layer, *io_shapes, cotangents)
            for layer, rule, io_shapes in zip(
                self.layers, self._rules, self._io_shapes
            )
        )

    def zeros(self, batch_size, dtype):
        return [
            ops.zeros((batch_size, *shape), dtype=dtype)
            for shapes in self._shapes
            for shape in shapes
        ]

    def _grouped(self, flat):
        out, start = [], 0
        for shapes in self._shapes:
            out.append(flat[start : start + len(shapes)])
            start += len(shapes)
        return out

    def _per_layer(self, saved, output_grads):
        """`(layer, rule, saved, grads, output shapes)` of every layer."""
        return zip(
            self.layers,
            self._rules,
            saved,
            self._grouped(output_grads),
            self._shapes,
        )

    @contextlib.contextmanager
    def active(self, taps):
        """Adds `taps` to the tapped layers and records what rules read."""
        saved = [None] * len(self.layers)
        position = {id(layer): i for i, layer in enumerate(self.layers)}
        grouped = self._grouped(taps)

        def tapped(layer):
            i = position[id(layer)]

            def call(inputs, *args, **kwargs):
                outputs, saved[i] = self._rules[i].call(
                    layer, inputs, grouped[i]
                )
                return outputs

            return call

        with dense_taps._patched(self.layers, tapped):
            yield saved

    @property
    def kfac_blocks(self):
        """`(layer, kernel, bias or None, axes or None)` of every block.

        In `kfac_layers` order, a layer's blocks as its rule lists them;
        aligned with what `kronecker_factors` returns.
        """
        blocks = []
        for layer in self.kfac_layers:
            i = self.layers.index(layer)
            for kernel, bias, axes in self._rules[i].kfac_blocks(
                layer, self._io_shapes[i][0]
            ):
                blocks.append((layer, kernel, bias, axes))
        return blocks

    def squared_gradients(self, saved, output_grads, kfac=()):
        """Per-variable batch sums of squared per-example gradients.

        Args:
            saved: what `active` recorded.
            output_grads: the tap gradients, stacked over `K` cotangents,
                `(K, batch) + tap shape` each.
            kfac: layers with Kronecker factors: their variables, all
                covered by the factors, get `None` (their sums are not
                needed).

        Returns:
            A list aligned with `variables`.
        """
        kfac = {id(layer) for layer in kfac}
        out = []
        for layer, rule, s, grads, shapes in self._per_layer(
            saved, output_grads
        ):
            if id(layer) in kfac:
                out.extend([None] * len(rule.variables(layer)))
            else:
                out.extend(rule.squared(layer, s, grads, shapes))
        return out

    def kronecker_factors(self, saved, output_grads, counted):
        """Batch sums of the K-FAC terms of every `kfac_layers` one.

        Args:
            saved: what `active` recorded.
            output_grads: the tap gradients, as for `squared_gradients`.
            counted: 1 for each output unit (example or position) the
                loss counts with a positive weight, else 0; see
                `dense_taps.position_factors`.

        Returns:
            A list of `(A, G, count)` aligned with `kfac_blocks`: sums over
            the counted positions and their number.
        """
        kfac = {id(layer) for layer in self.kfac_layers}
        return [
            block
            for layer, rule, s, grads, shapes in self._per_layer(
                saved, output_grads
            )
            if id(layer) in kfac
            for block in rule.factors(layer, s, grads, shapes, counted)
        ]
