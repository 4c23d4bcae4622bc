"""Merge by the Kronecker-factored (K-FAC) quadratics of the models."""

import numpy as np
from keras import ops

from keras_memgeom.src.memory.kronecker import kernel_matrix
from keras_memgeom.src.memory.kronecker import kronecker_sum_minimizer
from keras_memgeom.src.memory.kronecker import matrix_kernel
from keras_memgeom.src.memory.kronecker import merge_anchor
from keras_memgeom.src.merging.merge_fisher import merge_fisher


def merge_kfac(models, curvatures, weights, prior_precision):
    """The minimizer of the models' summed Kronecker-factored quadratics.

    Each Kronecker-covered layer's kernel and bias `W` minimize
    `sum_k w_k n_k vec(W - W_k)^T (A_k (x) G_k) vec(W - W_k)`: for two
    unmasked layers in closed form (`merge_anchor`), otherwise by conjugate
    gradients on the Kronecker sum. Other variables are merged as by
    `merge_fisher`.

    Args:
        models: aligned Keras models of one architecture.
        curvatures: per model, `(diagonal, blocks)` as
            `memory_curvature(..., "kfac")` returns.
        weights: one weight per model, non-negative, summing to 1.
        prior_precision: `alpha > 0`, for the variables no block covers.

    Returns:
        A new Keras model (uncompiled).

    Raises:
        ValueError: when the models' blocks (with their biases, masks and
            kernel axes) are not on the same layers.
    """
    blocks = [b for _, b in curvatures]
    layouts = [
        {
            i: (
                b.bias,
                None if b.mask is None else np.asarray(b.mask).tobytes(),
                b.axes,
            )
            for i, b in k.items()
        }
        for k in blocks
    ]
    if any(layout != layouts[0] for layout in layouts[1:]):
        raise ValueError(
            "method='kfac' needs the memories' Kronecker blocks (with their "
            "biases, masks and kernel axes) on the same layers of every "
            "model."
        )
    merged = merge_fisher(
        models, [d for d, _ in curvatures], weights, prior_precision
    )
    variables = merged.trainable_variables
    for i, block in blocks[0].items():
        bias = block.bias

        def stacked(model):
            kernel = kernel_matrix(
                ops.convert_to_numpy(model.trainable_variables[i]), block
            ).astype("float64")
            if bias is None:
                return kernel
            return np.concatenate(
                [
                    kernel,
                    ops.convert_to_numpy(
                        model.trainable_variables[bias]
                    ).reshape(1, -1),
                ],
                axis=0,
            )

        terms = [
            (stacked(m), w, b[i].a, b[i].g)
            for m, w, b in zip(models, weights, blocks)
        ]
        if len(terms) == 2 and block.mask is None:
            # `merge_anchor` keeps the newer anchor where neither quadratic
            # constrains the weights; weighing both orders keeps the average.
            first, second = terms
            solution = weights[1] * merge_anchor(first, second) + weights[
                0
            ] * merge_anchor(second, first)
        else:
            start = sum(w * anchor for anchor, w, _, _ in terms)
            solution = kronecker_sum_minimizer(terms, start, block.mask)
        if bias is not None:
            variables[bias].assign(
                solution[-1]
                .reshape(variables[bias].shape)
                .astype(variables[bias].dtype)
            )
            solution = solution[:-1]
        variables[i].assign(
            matrix_kernel(solution, block, variables[i].shape).astype(
                variables[i].dtype
            )
        )
    return merged
