import keras
import numpy as np
import pytest

from keras_memgeom import layers as memgeom_layers
from keras_memgeom.pruning import pre_prune

to_numpy = keras.ops.convert_to_numpy


def _mlp():
    return keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(10, activation="tanh", use_bias=False),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _convnet():
    inputs = keras.Input((8, 8, 6))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_hidden_dense_layers_replaced_and_widened():
    pruned = pre_prune(_mlp(), zero_rate=0.5, seed=0)
    kinds = [type(layer) for layer in pruned.layers]
    assert kinds == [
        memgeom_layers.PrePrunedDense,
        keras.layers.Dropout,
        memgeom_layers.PrePrunedDense,
        keras.layers.Dense,
    ]
    assert [
        layer.units for layer in pruned.layers if hasattr(layer, "units")
    ] == [
        16,
        20,
        3,
    ]
    # The next layer's input grows with the widened layer.
    assert pruned.layers[2].kernel.shape == (16, 20)
    assert pruned.layers[3].kernel.shape == (20, 3)
    # The configuration is carried over.
    assert pruned.layers[2].use_bias is False
    assert pruned.layers[2].activation is keras.activations.tanh


def test_functional_conv_model():
    pruned = pre_prune(_convnet(), zero_rate=0.5, seed=1)
    conv = pruned.get_layer("conv")
    assert isinstance(conv, memgeom_layers.PrePrunedConv2D)
    assert conv.filters == 8 and conv.mask.shape == (6, 8)
    assert isinstance(pruned.get_layer("hidden"), memgeom_layers.PrePrunedDense)
    assert type(pruned.get_layer("head")) is keras.layers.Dense
    assert pruned.output.shape == (None, 2)


def test_no_widen_and_pruned_output():
    pruned = pre_prune(_mlp(), zero_rate=0.5, widen=False, prune_output=True)
    assert [
        layer.units for layer in pruned.layers if hasattr(layer, "units")
    ] == [
        8,
        10,
        3,
    ]
    assert isinstance(pruned.layers[-1], memgeom_layers.PrePrunedDense)


def test_seed_gives_reproducible_per_layer_masks():
    a = pre_prune(_mlp(), zero_rate=0.5, seed=5)
    b = pre_prune(_mlp(), zero_rate=0.5, seed=5)
    masks_a = [
        to_numpy(layer.mask) for layer in a.layers if hasattr(layer, "mask")
    ]
    masks_b = [
        to_numpy(layer.mask) for layer in b.layers if hasattr(layer, "mask")
    ]
    for mask_a, mask_b in zip(masks_a, masks_b):
        np.testing.assert_array_equal(mask_a, mask_b)


def test_pre_pruned_model_trains_and_round_trips(tmp_path):
    pruned = pre_prune(_mlp(), zero_rate=0.5, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 12)).astype("float32")
    y = rng.integers(0, 3, size=32)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(pruned(x, training=False)),
    )


@pytest.mark.parametrize("zero_rate", [0.0, 1.0, "0.5"])
def test_bad_zero_rate_raises(zero_rate):
    with pytest.raises(ValueError, match="zero_rate"):
        pre_prune(_mlp(), zero_rate=zero_rate)
