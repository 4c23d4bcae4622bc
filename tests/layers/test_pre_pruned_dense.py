import keras
import numpy as np
import pytest

from keras_memgeom.layers import PrePrunedDense

pytestmark = pytest.mark.usefixtures("full_precision")

to_numpy = keras.ops.convert_to_numpy


def test_output_is_dense_with_masked_kernel():
    layer = PrePrunedDense(6, zero_rate=0.5, seed=0, activation="tanh")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    layer.build(x.shape)
    kernel = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    bias = np.arange(6, dtype="float32") / 10
    mask = to_numpy(layer.mask)
    layer.set_weights([kernel, bias, mask])
    np.testing.assert_allclose(
        to_numpy(layer(x)), np.tanh(x @ (kernel * mask) + bias), atol=1e-5
    )
    assert len({tuple(column) for column in mask.T}) == 6


def test_masked_entries_zero_from_initialization():
    layer = PrePrunedDense(16, zero_rate=0.5, seed=0)
    layer.build((None, 8))
    mask = to_numpy(layer.mask)
    assert np.all(to_numpy(layer.kernel)[mask == 0] == 0)
    assert np.all(to_numpy(layer.kernel)[mask == 1] != 0)
    assert not layer.mask.trainable
    assert len(layer.trainable_weights) == 2


def test_masked_entries_get_exactly_zero_gradient():
    # Masked entries set to nonzero values must not move under SGD: their
    # gradient is exactly zero (the update is -lr * gradient).
    layer = PrePrunedDense(6, zero_rate=0.5, seed=0)
    model = keras.Sequential([keras.Input((5,)), layer, keras.layers.Dense(1)])
    start = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    layer.kernel.assign(start)
    mask = to_numpy(layer.mask).astype(bool)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    end = to_numpy(layer.kernel)
    np.testing.assert_array_equal(end[~mask], start[~mask])
    assert np.all(end[mask] != start[mask])


@pytest.mark.parametrize(
    "units, zero_rate, expected",
    [(64, 0.5, 128), (10, 0.3, 15), (10, 0.75, 40)],
)
def test_widen(units, zero_rate, expected):
    layer = PrePrunedDense(units, zero_rate=zero_rate, widen=True)
    assert layer.units == expected
    # The config holds the requested width: no double widening.
    assert PrePrunedDense.from_config(layer.get_config()).units == expected


def test_save_load_round_trip(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            PrePrunedDense(8, zero_rate=0.5),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[0], PrePrunedDense)
    np.testing.assert_array_equal(
        to_numpy(loaded.layers[0].mask), to_numpy(model.layers[0].mask)
    )
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
    )


def test_errors():
    with pytest.raises(ValueError, match="zero_rate"):
        PrePrunedDense(4, zero_rate=1.0)
    with pytest.raises(
        ValueError, match="`zero_rate` must be a number; got '0.5'"
    ):
        PrePrunedDense(4, zero_rate="0.5")
    for units in (0, -2):
        with pytest.raises(ValueError, match="`units` must be at least 1"):
            PrePrunedDense(units, widen=True)
    with pytest.raises(ValueError, match="pre_pruned_dense.*distinct"):
        PrePrunedDense(8, zero_rate=0.5, name="pre_pruned_dense").build(
            (None, 2)
        )
    layer = PrePrunedDense(4)
    layer.build((None, 4))
    with pytest.raises(NotImplementedError, match="fold"):
        layer.quantize("int8")
