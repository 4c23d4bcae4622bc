"""The frontal lobe's information penalty: its differentiable Fisher trace.

The trace is differentiated by double backpropagation: the per-example
gradients come from one backward pass per output cotangent (the `DenseTaps`
rule: `||x_b||^2 ||g_b||^2` per Dense unit, im2col for Conv2D), and that
pass is itself differentiated by the training step.
"""

import keras
import numpy as np
from keras import ops

from keras_memgeom import backend
from keras_memgeom.src.memory import dense_taps
from keras_memgeom.src.memory.dense_taps import DenseTaps
from keras_memgeom.src.memory.likelihood import likelihood_from_loss


def fisher_trace(frontal_lobe, model, x, y, sample_weight=None):
    """The frontal lobe's Fisher trace on a batch (`FrontalLobe.fisher_trace`).

    Args:
        frontal_lobe: the `FrontalLobe`.
        model: the model, compiled with a log-likelihood loss.
        x: a batch of inputs.
        y: the batch's labels (used by `"empirical"`).
        sample_weight: optional per-example weights `(batch,)`.

    Returns:
        A scalar tensor.
    """
    taps, masks = _prepare(frontal_lobe, model, x)
    likelihood = likelihood_from_loss(getattr(model, "loss", None))
    batch = ops.shape(x)[0]

    def forward(tap_values):
        with taps.active(tap_values) as inputs:
            outputs = model(x, training=False)
        return outputs, list(inputs)

    dtype = taps.layers[0].kernel.dtype
    outputs, inputs, pullback = backend.differentiable_linearize(
        forward, taps.zeros(batch, dtype)
    )
    if frontal_lobe.estimator == "exact":
        cotangents = likelihood.fisher_factors(outputs)
    else:
        labels = likelihood.prepare_labels(y, outputs)
        cotangents = likelihood.score(outputs, labels)[None]
    # The loss is `c * (-log p)`: its curvature is `c` times the Fisher.
    cotangents = cotangents * float(
        np.sqrt(likelihood.loss_scale(outputs.shape[-1]))
    )
    per_example = 0.0
    grads = pullback(cotangents)
    for layer, shape, (kernel_mask, bias_mask), layer_input, grad in zip(
        taps.layers, taps._output_shapes, masks, inputs, grads
    ):
        if kernel_mask is None and bias_mask is None:
            continue
        if isinstance(layer, keras.layers.Dense):
            squares = ops.sum(ops.square(grad), axis=0)
            if kernel_mask is not None:
                reach = ops.matmul(ops.square(layer_input), kernel_mask)
                per_example = per_example + ops.sum(reach * squares, axis=-1)
            if bias_mask is not None:
                per_example = per_example + ops.matmul(squares, bias_mask)
            continue
        grad = ops.reshape(
            grad, (grad.shape[0], -1, shape[0] * shape[1], shape[2])
        )
        if kernel_mask is not None:
            patches = dense_taps.patches(layer, layer_input, shape)
            kernel = ops.einsum("bpi,kbpo->kbio", patches, grad)
            squares = ops.sum(ops.square(kernel), axis=0)
            per_example = per_example + ops.sum(
                squares * ops.reshape(kernel_mask, squares.shape[1:]),
                axis=(1, 2),
            )
        if bias_mask is not None:
            squares = ops.sum(ops.square(ops.sum(grad, axis=2)), axis=0)
            per_example = per_example + ops.matmul(squares, bias_mask)
    if sample_weight is not None:
        per_example = per_example * ops.reshape(
            ops.cast(sample_weight, dtype), (-1,)
        )
    return ops.mean(per_example)


def _prepare(frontal_lobe, model, x):
    """The taps and the mask tensors per tapped layer of `model` (cached).

    The masks are copied to the device once, not at every step, and are
    made outside any trace, so every traced step can reuse them.
    """
    if frontal_lobe._cache is not None and frontal_lobe._cache[0] is model:
        return frontal_lobe._cache[1:]
    masks = frontal_lobe.masks(model)
    taps = DenseTaps(model, conv2d=True).probe(x)
    tapped = {id(v) for v in taps.variables}
    for variable in model.trainable_variables:
        if variable.path in masks and id(variable) not in tapped:
            raise ValueError(
                f"The frontal lobe holds {variable.path!r}, but its layer "
                "is not called exactly once per forward pass, so its "
                "per-example gradients cannot be formed from the tapped "
                "backward pass."
            )
    dtype = taps.layers[0].kernel.dtype

    def on_device(path):
        return (
            None
            if path not in masks
            else backend.device_constant(masks[path], dtype)
        )

    layer_masks = [
        (
            on_device(layer.kernel.path),
            on_device(layer.bias.path) if layer.use_bias else None,
        )
        for layer in taps.layers
    ]
    frontal_lobe._cache = (model, taps, layer_masks)
    return frontal_lobe._cache[1:]
