"""Memories of models fine-tuned with Keras's LoRA (`enable_lora`)."""

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from tests.memory.test_layer_taps import _reference

pytestmark = pytest.mark.usefixtures("full_precision")


def _backbone():
    """Embedding, EinsumDense and Dense: the pretrained model."""
    tokens = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(6, 4, name="embed")(tokens)
    h = keras.layers.EinsumDense("abc,cd->abd", (4, 5), name="mix")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras_memgeom.Model(tokens, keras.layers.Dense(3, name="out")(h))
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _enable_lora(model, rng):
    """LoRA of rank 2 on every layer, its factors moved off their start."""
    for name in ("embed", "mix", "out"):
        model.get_layer(name).enable_lora(2)
    # LoRA starts with B = 0; move it so every factor has a gradient.
    for v in model.trainable_variables:
        v.assign(v + 0.3 * rng.normal(size=v.shape).astype("float32"))
    return model


def _lora_model(rng):
    return _enable_lora(_backbone(), rng)


def _data(rng, n):
    return rng.integers(0, 6, size=(n, 4)).astype("int32"), rng.integers(
        0, 3, n
    )


def test_a_memory_remembers_the_lora_factors_exactly(rng):
    model = _lora_model(rng)
    x, y = _data(rng, 5)
    memory = FisherMemory.estimate(model, (x, y), batch_size=3)
    # Only what trains: the factors (and the biases), not the frozen weights.
    assert sorted(memory.paths) == sorted(
        v.path for v in model.trainable_variables
    )
    assert "mix/lora_kernel_a" in memory.paths
    assert "mix/kernel" not in memory.paths
    for path, value in _reference(model, x, y, "exact", 1).items():
        assert np.abs(value).max() > 0, path
        np.testing.assert_allclose(
            memory.fisher[path], value, rtol=2e-5, atol=1e-9, err_msg=path
        )


def test_the_lora_memory_penalizes_the_factors(rng):
    model = _lora_model(rng)
    x, y = _data(rng, 16)
    memory = FisherMemory.estimate(model, (x, y), batch_size=4)
    anchor = {v.path: memory.anchor[v.path] for v in model.trainable_variables}
    model.set_weights([w + 0.2 for w in model.get_weights()])
    # The penalty is the diagonal quadratic in the factors themselves.
    expected = (
        0.5
        * 3.0
        * memory.num_examples
        / 16
        * sum(
            float(
                np.sum(
                    memory.fisher[v.path]
                    * (keras.ops.convert_to_numpy(v) - anchor[v.path]) ** 2
                )
            )
            for v in model.trainable_variables
        )
    )
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        regularizers=[memory],
        strength=3.0,
        num_train_examples=16,
    )
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["memory_penalty"], expected, rtol=1e-5)


def test_a_memory_of_a_weight_lora_froze_is_refused(rng):
    x, y = _data(rng, 8)
    model = _backbone()
    backbone = FisherMemory.estimate(model, (x, y))
    _enable_lora(model, rng)
    # The frozen weights cannot move: a penalty on them would do nothing.
    with pytest.raises(ValueError, match="'embed/embeddings'.*enable_lora"):
        model.compile(
            "sgd",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            regularizers=[backbone],
            num_train_examples=8,
        )
    with pytest.raises(ValueError, match="enable_lora.*lora_kernel_a"):
        keras_memgeom.attach(model, backbone, num_train_examples=8)
