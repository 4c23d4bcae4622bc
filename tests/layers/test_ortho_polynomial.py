import keras
import numpy as np
import pytest

from keras_memgeom.layers import OrthoPolynomial

pytestmark = pytest.mark.usefixtures("full_precision")

to_numpy = keras.ops.convert_to_numpy

# The documented domain maps and numpy's evaluation of each basis.
REFERENCE = {
    "chebyshev": (np.tanh, np.polynomial.chebyshev.chebval),
    "legendre": (np.tanh, np.polynomial.legendre.legval),
    "hermite": (lambda x: x, np.polynomial.hermite.hermval),
    "laguerre": (lambda x: np.logaddexp(0, x), np.polynomial.laguerre.lagval),
}


@pytest.mark.parametrize("basis", sorted(REFERENCE))
def test_matches_numpy_per_unit(basis):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    layer = OrthoPolynomial(degree=4, basis=basis)
    layer.build(x.shape)
    coefficients = rng.normal(size=(3, 5)).astype("float32")
    layer.set_weights([coefficients])
    domain_map, evaluate = REFERENCE[basis]
    expected = np.stack(
        [
            evaluate(domain_map(x[:, j].astype("float64")), coefficients[j])
            for j in range(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(
        to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("basis", sorted(REFERENCE))
def test_starts_as_the_domain_map(basis):
    x = np.linspace(-2, 2, 9, dtype="float32")[:, None]
    domain_map, _ = REFERENCE[basis]
    np.testing.assert_allclose(
        to_numpy(OrthoPolynomial(degree=3, basis=basis)(x)),
        domain_map(x),
        atol=1e-5,
    )


def test_trains_on_small_regression_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(256, 1)).astype("float32")
    y = np.sin(2 * x) + 0.3 * x**2
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(8),
            OrthoPolynomial(degree=5, basis="chebyshev"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(0.02), "mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=40, batch_size=64, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.3 * before
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="basis"):
        OrthoPolynomial(3, basis="fourier")
    with pytest.raises(ValueError, match="degree"):
        OrthoPolynomial(0)
