"""Per-example Dense gradients without materializing them."""

import contextlib

import keras
from keras import ops


def _is_plain_dense(layer):
    return (
        type(layer) is keras.layers.Dense
        and layer.trainable
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
    )


class DenseTaps:
    """Zero "taps" added to the outputs of the model's Dense layers.

    The gradient of `sum_b <u_b, f(x_b)>` with respect to a tap on a Dense
    layer's pre-activation is the per-example output gradient `g_b`, and the
    per-example kernel gradient is `x_b g_b^T` for the layer input `x_b`. So
    the squared per-example gradients sum to `(x^2)^T (g^2)` for the kernel
    and `sum_b g_b^2` for the bias: one backward pass, no per-example copy.

    The rule holds for a Dense layer called once per forward pass on 2-D
    inputs; `probe` finds those layers, the others are left to the generic
    vectorized path.

    Args:
        model: a built Keras model.
    """

    def __init__(self, model):
        self.model = model
        self.layers = []
        self._taps = None
        self._inputs = None

    def probe(self, x):
        """Runs the model once on `x` and keeps the Dense layers the rule fits."""
        candidates = [
            layer for layer in self.model._flatten_layers(include_self=False) if _is_plain_dense(layer)
        ]
        calls = {id(layer): [] for layer in candidates}

        def recording(layer):
            original = type(layer).call.__get__(layer)

            def call(inputs, training=None):
                calls[id(layer)].append(len(inputs.shape))
                return original(inputs)

            return call

        with _patched(candidates, recording):
            self.model(x, training=False)
        self.layers = [layer for layer in candidates if calls[id(layer)] == [2]]
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
        return [ops.zeros((batch_size, layer.units), dtype=dtype) for layer in self.layers]

    @contextlib.contextmanager
    def active(self, taps):
        """Adds `taps` to the Dense outputs and records the layer inputs."""
        self._inputs = [None] * len(self.layers)
        position = {id(layer): i for i, layer in enumerate(self.layers)}

        def tapped(layer):
            i = position[id(layer)]

            def call(inputs, training=None):
                self._inputs[i] = inputs
                z = ops.matmul(inputs, layer.kernel)
                if layer.use_bias:
                    z = ops.add(z, layer.bias)
                return layer.activation(ops.add(z, taps[i]))

            return call

        with _patched(self.layers, tapped):
            yield self._inputs

    def squared_gradients(self, inputs, output_grads):
        """Per-variable sums over the batch of squared per-example gradients.

        Args:
            inputs: the recorded layer inputs, `(batch, in)` each.
            output_grads: the tap gradients, stacked over `K` cotangents,
                `(K, batch, units)` each.

        Returns:
            A list aligned with `variables`.
        """
        out = []
        for layer, x, g in zip(self.layers, inputs, output_grads):
            g2 = ops.sum(ops.square(g), axis=0)
            out.append(ops.matmul(ops.transpose(ops.square(x)), g2))
            if layer.use_bias:
                out.append(ops.sum(g2, axis=0))
        return out


@contextlib.contextmanager
def _patched(layers, make_call):
    for layer in layers:
        object.__setattr__(layer, "call", make_call(layer))
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
