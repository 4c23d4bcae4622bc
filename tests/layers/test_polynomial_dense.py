import keras
import numpy as np
import pytest

from keras_memgeom.layers import PolynomialDense

pytestmark = pytest.mark.usefixtures("full_precision")

to_numpy = keras.ops.convert_to_numpy


def test_output_is_sum_over_inputs_and_basis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    layer = PolynomialDense(3, degree=4, basis="legendre")
    layer.build(x.shape)
    coefficients = rng.normal(size=(5, 4, 3)).astype("float32")  # c[k, i, j]
    layer.set_weights([coefficients])
    # y_j = sum_i sum_k c_ijk P_k(tanh x_i), with numpy's Legendre values.
    phi = np.polynomial.legendre.legvander(np.tanh(x.astype("float64")), 4)
    expected = np.einsum("bik,kij->bj", phi, coefficients)
    np.testing.assert_allclose(
        to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5
    )


def test_pre_pruned_connections_stay_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 4)).astype("float32")
    layer = PolynomialDense(4, degree=3, zero_rate=0.5, seed=0)
    model = keras.Sequential([keras.Input((6,)), layer])
    mask = to_numpy(layer.mask)
    assert mask.shape == (6, 4)
    assert len({tuple(column) for column in mask.T}) == 4
    start = rng.normal(size=(4, 6, 4)).astype("float32")
    layer.kernel.assign(start)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    masked = np.broadcast_to(mask == 0, start.shape)
    np.testing.assert_array_equal(to_numpy(layer.kernel)[masked], start[masked])
    # A masked input does not reach the units it is cut from.
    changed = x.copy()
    changed[:, 0] += 1.0
    difference = np.abs(to_numpy(layer(changed)) - to_numpy(layer(x))).max(
        axis=0
    )
    np.testing.assert_array_equal(difference[mask[0] == 0], 0.0)


@pytest.mark.parametrize("basis", ["chebyshev", "hermite"])
def test_trains_on_small_regression_and_round_trips(basis, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(256, 4)).astype("float32")
    y = (np.sin(2 * x[:, :1]) * x[:, 1:2] + x[:, 2:3]).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            PolynomialDense(6, degree=4, basis=basis, zero_rate=0.3, seed=0),
            keras.layers.LayerNormalization(),
            PolynomialDense(1, degree=4, basis=basis),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.3 * before
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="zero_rate"):
        PolynomialDense(2, 3, zero_rate=0.0)
    with pytest.raises(ValueError, match="basis"):
        PolynomialDense(2, 3, basis="spline")
    with pytest.raises(
        ValueError, match="`zero_rate` must be a number; got '0.5'"
    ):
        PolynomialDense(2, 3, zero_rate="0.5")
    for units in (0, -3, 2.5):
        with pytest.raises(ValueError, match="`units` must be"):
            PolynomialDense(units, 3)
