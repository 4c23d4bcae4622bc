import keras
import numpy as np
import pytest

from keras_memgeom.layers import polynomial_basis

pytestmark = pytest.mark.usefixtures("full_precision")

DEGREE = 7
# Each basis on (a sample of) its domain, with its numpy.polynomial
# Vandermonde matrix: column k is phi_k(x).
CASES = {
    "chebyshev": (np.linspace(-1, 1, 101), np.polynomial.chebyshev.chebvander),
    "legendre": (np.linspace(-1, 1, 101), np.polynomial.legendre.legvander),
    "hermite": (np.linspace(-3, 3, 101), np.polynomial.hermite.hermvander),
    "laguerre": (np.linspace(0, 12, 101), np.polynomial.laguerre.lagvander),
}


@pytest.mark.parametrize("basis", sorted(CASES))
def test_matches_numpy_polynomial(basis):
    x, vander = CASES[basis]
    phi = keras.ops.convert_to_numpy(
        polynomial_basis(x.astype("float32"), DEGREE, basis)
    )
    expected = vander(x.astype("float32").astype("float64"), DEGREE)
    assert phi.shape == (101, DEGREE + 1)
    # 1e-5 relative to each polynomial's size on the domain (float32).
    scale = np.abs(expected).max(axis=0)
    np.testing.assert_array_less(np.abs(phi - expected) / scale, 1e-5)


def test_shape_and_degree_zero():
    x = np.zeros((2, 3), dtype="float32")
    assert tuple(polynomial_basis(x, 4, "legendre").shape) == (2, 3, 5)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(polynomial_basis(x, 0, "hermite")),
        np.ones((2, 3, 1)),
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="basis 'bessel'"):
        polynomial_basis(np.zeros(2), 2, "bessel")
    with pytest.raises(ValueError, match="degree"):
        polynomial_basis(np.zeros(2), -1, "chebyshev")
