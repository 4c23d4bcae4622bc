"""Structurally invalid memories are refused, naming what is wrong."""

import keras
import numpy as np
import pytest

from keras_memgeom import FisherMemory
from keras_memgeom.memory import KroneckerRegularizer
from keras_memgeom.src.memory.kronecker import kronecker_quadratic

A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
G = np.array([[1.0, 0.2], [0.2, 3.0]])


def _memory(a=A, g=G):
    return FisherMemory(
        {"k": np.ones((2, 2)), "b": np.zeros(2)},
        {},
        num_examples=5,
        kronecker={"k": ("b", a, g)},
    )


def _layer():
    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    return layer


def _regularizer(layer, a=A, g=G, kernel=None, bias=np.zeros(2)):
    kernel = np.zeros((2, 2)) if kernel is None else kernel
    scale = keras.Variable(1.0, trainable=False)
    return KroneckerRegularizer(
        [(kernel, bias, a, g, 1.0)], layer.bias, scale, like=layer.kernel
    )


NOT_PSD = [
    ("a", -A, "negative definite"),
    ("a", np.diag([1.0, -1.0, 2.0]), "indefinite"),
    ("g", np.array([[1.0, 2.0], [2.0, 1.0]]), "indefinite"),
]


@pytest.mark.parametrize("name, factor, kind", NOT_PSD)
def test_a_memory_refuses_factors_that_are_not_psd(name, factor, kind):
    # Under such a factor the penalty goes negative: a direction exists.
    a, g = (factor, G) if name == "a" else (A, factor)
    values, vectors = np.linalg.eigh(factor)
    other = G if name == "a" else A
    direction = (
        np.outer(vectors[:, 0], np.ones(len(other)))
        if name == "a"
        else np.outer(np.ones(len(other)), vectors[:, 0])
    )
    assert kronecker_quadratic(a, g, direction) < 0
    with pytest.raises(
        ValueError, match=f"factor {name} of k is not positive semi-definite"
    ):
        _memory(a, g)


def test_rounding_below_zero_is_tolerated():
    # A singular factor as float32 sums leave it: eigenvalues a hair below 0.
    v = np.random.default_rng(0).normal(size=3)
    a = np.outer(v, v) - 1e-7 * (v @ v) * np.eye(3)
    assert np.linalg.eigvalsh(a)[0] < 0
    memory = _memory(a, G)
    np.testing.assert_array_equal(memory.kronecker["k"].a, a)


@pytest.mark.parametrize("name, factor, kind", NOT_PSD)
def test_a_kronecker_regularizer_refuses_factors_that_are_not_psd(
    name, factor, kind
):
    layer = _layer()
    a, g = (factor, G) if name == "a" else (A, factor)
    with pytest.raises(
        ValueError,
        match=f"factor {name} of '{layer.kernel.path}' .*not positive semi",
    ):
        _regularizer(layer, a, g)


@pytest.mark.parametrize("name", ["a", "g"])
def test_a_kronecker_regularizer_refuses_nan_factors(name):
    layer = _layer()
    a, g = A.copy(), G.copy()
    (a if name == "a" else g)[0, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=f"factor {name} of '{layer.kernel.path}' .*NaN or infinite",
    ):
        _regularizer(layer, a, g)


def test_a_kronecker_regularizer_names_wrong_sized_factors():
    layer = _layer()
    path = layer.kernel.path
    with pytest.raises(
        ValueError,
        match=rf"of '{path}' \(term 0\) must be \(3, 3\) and \(2, 2\) "
        r"\(or their diagonals, \(3,\) and \(2,\)\); the factor a is \(2, 2\)",
    ):
        _regularizer(layer, a=np.eye(2))
    with pytest.raises(
        ValueError, match=rf"'{path}': the anchor kernel must be a \(2, 2\)"
    ):
        _regularizer(layer, kernel=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bias anchor must have shape"):
        _regularizer(layer, bias=np.zeros(3))
    with pytest.raises(ValueError, match="lacks a bias anchor"):
        _regularizer(layer, bias=None)


def test_a_valid_kronecker_regularizer_is_the_kronecker_quadratic(rng):
    layer = _layer()
    kernel, bias = rng.normal(size=(2, 2)), rng.normal(size=2)
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    regularizer = _regularizer(layer)
    delta = np.concatenate([kernel, bias[None]])
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(regularizer(layer.kernel))),
        kronecker_quadratic(A, G, delta),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "a, match",
    [
        (
            np.array([1.0, -0.5, 2.0]),
            "diagonal Kronecker factor a of .* negative",
        ),
        (np.array([1.0, np.nan, 2.0]), "factor a of .* holds NaN"),
        (np.ones(4), r"the factor a is \(4,\)"),
    ],
)
def test_a_diagonal_factor_is_refused_naming_its_fault(a, match):
    with pytest.raises(ValueError, match=match):
        _memory(a=a)
    with pytest.raises(ValueError, match=match):
        _regularizer(_layer(), a=a)
