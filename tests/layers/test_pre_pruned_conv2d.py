import keras
import numpy as np
import pytest

from keras_memgeom.layers import PrePrunedConv2D

pytestmark = pytest.mark.usefixtures("full_precision")

to_numpy = keras.ops.convert_to_numpy


def test_mask_acts_on_channel_connectivity():
    layer = PrePrunedConv2D(6, 3, zero_rate=0.5, seed=0, padding="same")
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype("float32")
    layer.build(x.shape)
    mask = to_numpy(layer.mask)
    assert mask.shape == (4, 6)
    assert len({tuple(column) for column in mask.T}) == 6
    kernel = to_numpy(layer.kernel)
    # Every spatial tap of a masked (input channel, filter) pair is zero.
    assert np.all(kernel[:, :, mask == 0] == 0)

    # Filter j ignores input channel i where mask[i, j] == 0: changing that
    # channel changes only the filters connected to it.
    changed = x.copy()
    changed[..., 0] += 1.0
    difference = np.abs(to_numpy(layer(changed)) - to_numpy(layer(x)))
    difference = difference.max(axis=(0, 1, 2))
    np.testing.assert_array_equal(difference[mask[0] == 0], 0.0)
    assert np.all(difference[mask[0] == 1] > 0)


def test_masked_entries_get_exactly_zero_gradient():
    layer = PrePrunedConv2D(4, 3, zero_rate=0.5, seed=0)
    model = keras.Sequential(
        [
            keras.Input((5, 5, 3)),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    start = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype("float32")
    layer.kernel.assign(start)
    mask = np.broadcast_to(to_numpy(layer.mask).astype(bool), start.shape)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5, 5, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    end = to_numpy(layer.kernel)
    np.testing.assert_array_equal(end[~mask], start[~mask])
    assert np.all(end[mask] != start[mask])


def test_widen_and_save_load_round_trip(tmp_path):
    layer = PrePrunedConv2D(4, 3, zero_rate=0.5, widen=True)
    model = keras.Sequential([keras.Input((6, 6, 5)), layer])
    assert layer.filters == 8
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].filters == 8
    np.testing.assert_array_equal(
        to_numpy(loaded.layers[0].mask), to_numpy(layer.mask)
    )
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 5)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
    )


def test_groups_rejected():
    with pytest.raises(ValueError, match="groups"):
        PrePrunedConv2D(4, 3, groups=2)


def test_bad_sizes_and_rates_are_named():
    with pytest.raises(ValueError, match="`filters` must be at least 1; got 0"):
        PrePrunedConv2D(0, 3)
    with pytest.raises(ValueError, match="`zero_rate` must be a number"):
        PrePrunedConv2D(4, 3, zero_rate="0.5")
