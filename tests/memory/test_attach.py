import json

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom import FisherRegularizer
from keras_memgeom import attach
from keras_memgeom import detach
from keras_memgeom.src.memory.attach import attached_regularizers
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")


def _mlp():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit_once(model, x, y):
    before = [np.array(w) for w in model.get_weights()]
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)
    return [np.array(w) - b for w, b in zip(model.get_weights(), before)]


def test_attach_after_fit_changes_the_next_update(rng):
    x, y = classification_data(rng, num_examples=64)
    model = _mlp()
    model.fit(x, y, epochs=2, verbose=0)  # traces and caches the train function
    memory = FisherMemory.estimate(model, (x, y))
    # Move away from the anchor so the penalty has a gradient.
    model.set_weights([w + 0.5 for w in model.get_weights()])
    start = model.get_weights()
    plain = _fit_once(model, x, y)
    model.set_weights(start)
    attach(model, memory, num_train_examples=len(x), strength=50.0)
    penalized = _fit_once(model, x, y)
    # SGD: the difference of the updates is -lr * the penalty's gradient.
    scale = 50.0 * 0.5 * memory.num_examples / len(x)
    for v, w, du_plain, du_pen in zip(
        model.trainable_variables, start, plain, penalized
    ):
        expected = (
            -0.1
            * 2
            * scale
            * memory.fisher[v.path]
            * (w - memory.anchor[v.path])
        )
        np.testing.assert_allclose(
            du_pen - du_plain, expected, rtol=1e-3, atol=1e-6
        )
    detach(model)
    model.set_weights(start)
    np.testing.assert_allclose(
        _fit_once(model, x, y)[0], plain[0], rtol=1e-4, atol=1e-7
    )


def test_attach_keeps_existing_regularizers_and_detach_restores_them(rng):
    x, y = classification_data(rng, num_examples=32)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(
                3, kernel_regularizer=keras.regularizers.L2(0.1)
            ),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    memory = FisherMemory.estimate(model, (x, y))
    kernel = model.layers[0].kernel
    l2 = kernel.regularizer
    model.set_weights([w + 1.0 for w in model.get_weights()])
    attach(model, memory, num_train_examples=32)
    assert isinstance(kernel.regularizer, FisherRegularizer)
    both = float(keras.ops.convert_to_numpy(kernel.regularizer(kernel.value)))
    alone = float(keras.ops.convert_to_numpy(l2(kernel.value)))
    assert both > alone > 0
    detach(model)
    assert kernel.regularizer is l2 and model.layers[0].kernel_regularizer is l2


def test_several_memories_sum_their_penalties(rng):
    x, y = classification_data(rng, num_examples=40)
    model = _mlp()
    memories = []
    for _ in range(3):
        model.set_weights(
            [
                w + rng.normal(size=w.shape).astype("float32") * 0.3
                for w in model.get_weights()
            ]
        )
        memories.append(FisherMemory.estimate(model, (x, y)))
    model.set_weights([w + 0.2 for w in model.get_weights()])
    expected = sum(
        float(
            keras.ops.convert_to_numpy(
                m.penalty(model, num_train_examples=40, strength=4.0)
            )
        )
        for m in memories
    )
    attach(model, memories, num_train_examples=40, strength=4.0)
    got = sum(float(keras.ops.convert_to_numpy(l)) for l in model.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_attached_penalty_survives_save_and_load(tmp_path, rng):
    x, y = classification_data(rng, num_examples=40)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y))
    model.set_weights([w + 0.3 for w in model.get_weights()])
    attach(model, memory, num_train_examples=40, strength=10.0)
    expected = float(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=40, strength=10.0)
        )
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    got = sum(float(keras.ops.convert_to_numpy(l)) for l in loaded.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_regularizer_config_holds_shapes_and_the_store_holds_arrays():
    reg = FisherRegularizer(
        np.arange(6.0).reshape(2, 3), np.ones((2, 3)), scale=0.5, offset=1.0
    )
    config = keras.regularizers.serialize(reg)
    assert "data" not in json.dumps(config)
    again = keras.regularizers.deserialize(config)
    store = {}
    reg.save_own_variables(store)
    again.load_own_variables(store)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(again.anchor), np.arange(6.0).reshape(2, 3)
    )
    value = np.zeros((2, 3), "float32")
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(again(value))),
        0.5 * (np.sum(np.arange(6.0) ** 2) + 1.0),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="anchor"):
        again.load_own_variables({"anchor": np.zeros(4), "fisher": np.zeros(4)})
    with pytest.raises(ValueError, match="fisher"):
        again.load_own_variables({"anchor": np.zeros((2, 3))})
    # Files of earlier versions carry the arrays in the config.
    old = FisherRegularizer.from_config(
        {
            "anchor": {"shape": [2], "data": "AACAPwAAAEA="},  # [1, 2]
            "fisher": {"shape": [2], "data": "AACAPwAAgD8="},  # [1, 1]
            "scale": 2.0,
            "offset": 0.0,
            "base": None,
        }
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(old(np.zeros(2, "float32")))),
        2.0 * (1.0 + 4.0),
    )
    # Weights saved without a memory leave the attached one as it is.
    again.load_own_variables({})
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(again.fisher), np.ones((2, 3))
    )
    with pytest.raises(ValueError, match="shape"):
        FisherRegularizer(np.zeros(2), np.zeros(3))


def test_attach_refuses_a_memory_of_another_model(rng):
    x, y = classification_data(rng, num_examples=10)
    memory = FisherMemory.estimate(_mlp(), (x, y))
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="does not fit"):
        keras_memgeom.attach(other, memory, num_train_examples=10)


@pytest.mark.parametrize(
    "strength",
    [float("nan"), float("inf"), -1.0, "abc", None],
    ids=["nan", "inf", "negative", "str", "none"],
)
def test_attach_refuses_a_bad_strength(rng, strength):
    x, y = classification_data(rng, num_examples=10)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y))
    with pytest.raises(ValueError, match="strength"):
        attach(model, memory, num_train_examples=10, strength=strength)
    assert not model.losses


@pytest.mark.parametrize("num_train_examples", [0, 1.9, -3, None])
def test_attach_refuses_a_bad_number_of_examples(rng, num_train_examples):
    x, y = classification_data(rng, num_examples=10)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y))
    with pytest.raises(ValueError, match="num_train_examples"):
        attach(model, memory, num_train_examples=num_train_examples)


def test_attach_refuses_what_is_not_a_memory(rng):
    model = _mlp()
    with pytest.raises(ValueError, match="FisherMemory"):
        attach(model, [keras.regularizers.L2(0.1)], num_train_examples=10)


def test_memory_arrays_are_shared_read_only_views(rng):
    x, y = classification_data(rng, num_examples=10)
    memory = FisherMemory.estimate(_mlp(), (x, y))
    path = memory.paths[0]
    # Reading a memory costs no copy, so attach and merge stay linear.
    assert memory.fisher[path] is memory.fisher[path]
    with pytest.raises(ValueError, match="read-only"):
        memory.anchor[path][...] = 0.0


def test_attached_memory_is_device_state(rng):
    x, y = classification_data(rng, num_examples=10)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y))
    attach(model, memory, num_train_examples=10)
    for _, regularizer in attached_regularizers(model):
        assert (
            isinstance(regularizer.anchor, keras.Variable)
            and not regularizer.anchor.trainable
        )
        assert (
            isinstance(regularizer.fisher, keras.Variable)
            and not regularizer.fisher.trainable
        )


def test_a_memory_of_another_architecture_is_refused_naming_the_difference(
    rng,
):
    x, y = classification_data(rng, num_examples=10)
    memory = FisherMemory.estimate(_mlp(), (x, y))
    kernel, bias = memory.paths[:2]
    # As many variables of the same shapes, but a bias where a scale was.
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, use_bias=False)(inputs)
    hidden = keras.layers.LayerNormalization(center=False)(hidden)
    other = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    assert [tuple(v.shape) for v in other.trainable_variables] == [
        memory.anchor[p].shape for p in memory.paths
    ]
    with pytest.raises(
        ValueError,
        match=rf"by order\): the memory's '{bias}' would be the model's "
        r"'layer_normalization/gamma', another kind of variable",
    ):
        keras_memgeom.attach(other, memory, num_train_examples=10)
    # Fewer variables: the ones missing on either side are named.
    smaller = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    with pytest.raises(
        ValueError,
        match=rf"variable '{kernel}' \(and .*\) is not among the model's "
        r"trainable variables, and the memory has 4 variables where the "
        r"model has 2 \(the model's '.*/kernel', '.*/bias' are not in the "
        r"memory\)",
    ):
        keras_memgeom.attach(smaller, memory, num_train_examples=10)


def test_a_rebuilt_model_is_matched_by_order_and_the_pairs_are_listed(rng):
    x, y = classification_data(rng, num_examples=10)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y))
    rebuilt = _mlp()
    pairs = [
        f"'{a}' -> '{b.path}'"
        for a, b in zip(memory.paths, rebuilt.trainable_variables)
    ]
    with pytest.warns(UserWarning, match="by order and shape") as record:
        keras_memgeom.attach(rebuilt, memory, num_train_examples=10)
    assert all(pair in str(record[0].message) for pair in pairs)
