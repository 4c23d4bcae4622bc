import keras
import numpy as np
import pytest

from keras_memgeom.pruning import fold_mask
from keras_memgeom.pruning import pre_prune

pytestmark = pytest.mark.usefixtures("full_precision")

to_numpy = keras.ops.convert_to_numpy


def test_fold_mask_gives_plain_layers_and_same_outputs(tmp_path):
    inputs = keras.Input((6, 6, 5))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(3)(x)
    pruned = pre_prune(keras.Model(inputs, outputs), zero_rate=0.5, seed=0)
    # Nonzero masked entries: folding must apply the mask, not copy the kernel.
    for layer in pruned.layers:
        if hasattr(layer, "mask"):
            layer.kernel.assign(np.ones(layer.kernel.shape, "float32"))

    folded = fold_mask(pruned)

    assert [type(layer).__name__ for layer in folded.layers] == [
        "InputLayer",
        "Conv2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    for source, target in zip(pruned.layers, folded.layers):
        if hasattr(source, "mask"):
            expected = to_numpy(source.kernel) * to_numpy(source.mask)
            np.testing.assert_array_equal(to_numpy(target.kernel), expected)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 5)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(folded(x, training=False)),
        to_numpy(pruned(x, training=False)),
        atol=1e-5,
    )
    path = tmp_path / "folded.keras"
    folded.save(path)
    config = keras.saving.load_model(path).get_config()
    assert "PrePruned" not in str(config)
