"""The memory penalties' quadratic forms and their custom gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_memgeom import backend
from keras_memgeom.src.memory.kronecker import dense_factor
from keras_memgeom.src.memory.kronecker import truncate_factor

pytestmark = pytest.mark.usefixtures("full_precision")


def _value_and_gradient(fn, x):
    """`fn(x)` and its gradient by the backend's own autodiff."""
    name = keras.backend.backend()
    if name == "jax":
        import jax

        return jax.value_and_grad(fn)(x)
    if name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return value, tape.gradient(value, x)
    import torch

    x = x.detach().requires_grad_()
    value = fn(x)
    return value, torch.autograd.grad(value, x)[0]


def _psd(rng, size):
    root = rng.normal(size=(size, size))
    return (root * 0.7 ** np.arange(size)) @ root.T / size


def _as_tensors(factor):
    if isinstance(factor, tuple):
        return tuple(
            ops.convert_to_tensor(np.asarray(part, "float32"))
            for part in factor
        )
    return ops.convert_to_tensor(factor.astype("float32"))


@pytest.mark.parametrize(
    "rank_a,rank_g",
    [(None, None), (3, 2), (3, None), (None, 1), ("diagonal", 2)],
)
def test_kronecker_quadratic_and_its_gradient_are_the_dense_forms(
    rng, rank_a, rank_g
):
    if rank_a == "diagonal":  # held as its diagonal, an Embedding's `a`
        a = np.diag(_psd(rng, 7)).copy()
    else:
        a = truncate_factor(_psd(rng, 7), rank=rank_a)
    g = truncate_factor(_psd(rng, 5), rank=rank_g)
    dense_a, dense_g = dense_factor(a), dense_factor(g)
    delta = rng.normal(size=(7, 5))
    diff = ops.convert_to_tensor(delta.astype("float32"))
    factors = _as_tensors(a), _as_tensors(g)
    # A scale before the gradient checks that the upstream one is applied.
    value, gradient = _value_and_gradient(
        lambda d: 3.0 * backend.kronecker_quadratic(d, *factors), diff
    )
    # Plain autodiff through the products, with the factors formed.
    reference = [
        ops.convert_to_tensor(f.astype("float32")) for f in (dense_a, dense_g)
    ]
    expected_value, expected_gradient = _value_and_gradient(
        lambda d: 3.0 * ops.sum(d * (reference[0] @ d @ reference[1])), diff
    )
    closed_form = np.sum(delta * (dense_a @ delta @ dense_g))
    value, expected_value = (
        float(ops.convert_to_numpy(v)) for v in (value, expected_value)
    )
    np.testing.assert_allclose(value, 3.0 * closed_form, rtol=1e-5)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(gradient),
        ops.convert_to_numpy(expected_gradient),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(gradient),
        6.0 * dense_a @ delta @ dense_g,
        rtol=1e-4,
        atol=1e-5,
    )


def test_memory_quadratic_gradient_is_autodiff_of_the_sum(rng):
    value, anchor = rng.normal(size=(2, 4, 3))
    fisher = rng.uniform(size=(4, 3))
    anchor_t, fisher_t = (
        ops.convert_to_tensor(x.astype("float32")) for x in (anchor, fisher)
    )
    start = ops.convert_to_tensor(value.astype("float32"))
    got = _value_and_gradient(
        lambda v: 2.0 * backend.memory_quadratic(v, anchor_t, fisher_t), start
    )
    expected = _value_and_gradient(
        lambda v: 2.0 * ops.sum(fisher_t * ops.square(v - anchor_t)), start
    )
    for a, b in zip(got, expected):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5
        )
    np.testing.assert_allclose(
        ops.convert_to_numpy(got[1]), 4.0 * fisher * (value - anchor), rtol=1e-5
    )
