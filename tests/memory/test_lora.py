"""Memories of models fine-tuned with Keras's LoRA (`enable_lora`).

Two cases: a memory estimated after `enable_lora` remembers the factors
themselves; a memory of the pretrained model (estimated before) remembers
the weights LoRA froze and is read at `W + lora_alpha / lora_rank * A @ B`.
"""

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.memory import LoraRegularizer
from keras_memgeom.src.memory.kronecker import dense_factor
from tests.memory.helpers import training_gradient
from tests.memory.test_layer_taps import _reference
from tests.memory.test_saving import _random_memory

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


def _enable_lora(model, rng, lora_alpha=None):
    """LoRA of rank 2 on every layer, its factors moved off their start."""
    for name in ("embed", "mix", "out"):
        model.get_layer(name).enable_lora(2, lora_alpha=lora_alpha)
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


# A memory of the pretrained model, read at the LoRA layers' effective weight.

_LORA = {"embed": "embeddings", "mix": "kernel", "out": "kernel"}


def _numpy(model):
    """Every weight of `model` by path, in float64."""
    return {
        v.path: keras.ops.convert_to_numpy(v).astype("float64")
        for v in model.weights
    }


def _effective(model):
    """By path, the values the layers compute with: `W + s A B` for LoRA."""
    values = _numpy(model)
    for layer, weight in _LORA.items():
        lora = model.get_layer(layer)
        a = values[f"{layer}/lora_{weight}_a"]
        b = values[f"{layer}/lora_{weight}_b"]
        values[f"{layer}/{weight}"] = values[f"{layer}/{weight}"] + (
            lora.lora_alpha / lora.lora_rank
        ) * (a @ b)
    return values


def _quadratic(memory, values, scale):
    """`scale * (sum F d^2 + sum_blocks vec(D)^T (A kron G) vec(D))` by hand.

    Returns the value and its gradient with respect to `values`, by path.
    `D` is a block's kernel as a `(fan_in, units)` matrix with its bias as a
    last row, less the anchors; `vec` reads it row by row.
    """
    anchor, total, gradient, covered = memory.anchor, 0.0, {}, set()
    for kernel, block in memory.kronecker.items():
        units = block.g.shape[0]
        rows = [(values[kernel] - anchor[kernel]).reshape(-1, units)]
        if block.bias is not None:
            rows.append((values[block.bias] - anchor[block.bias])[None])
        d = np.concatenate(rows).ravel()
        # An embedding's `a` is held as its diagonal.
        metric = np.kron(dense_factor(block.a), block.g).astype("float64")
        total += scale * d @ metric @ d
        grad = (scale * (metric + metric.T) @ d).reshape(-1, units)
        gradient[kernel] = grad[: rows[0].shape[0]].reshape(
            values[kernel].shape
        )
        if block.bias is not None:
            gradient[block.bias] = grad[-1]
        covered |= {kernel, block.bias}
    for path in set(memory.paths) - covered:
        diff = values[path] - anchor[path]
        total += scale * np.sum(memory.fisher[path] * diff**2)
        gradient[path] = 2 * scale * memory.fisher[path] * diff
    return total, gradient


def _factor_gradients(model, gradient):
    """The chain rule from `W + s A B` to `A` and `B`; zero on frozen `W`."""
    values = _numpy(model)
    for layer, weight in _LORA.items():
        lora = model.get_layer(layer)
        scale = lora.lora_alpha / lora.lora_rank
        g = gradient.pop(f"{layer}/{weight}")
        a = values[f"{layer}/lora_{weight}_a"]
        b = values[f"{layer}/lora_{weight}_b"]
        gradient[f"{layer}/lora_{weight}_a"] = scale * g @ b.T
        gradient[f"{layer}/lora_{weight}_b"] = scale * a.T @ g
    return gradient


def _fine_tuning(rng, structure, lora_alpha=3):
    """A pretrained model's memory and the model, LoRA on, every weight moved.

    The frozen weights move too, so they differ from the memory's anchors.
    """
    x, y = _data(rng, 16)
    model = _backbone()
    memory = FisherMemory.estimate(
        model, (x, y), structure=structure, rank=None
    )
    _enable_lora(model, rng, lora_alpha)
    for weight in model.non_trainable_weights:
        weight.assign(weight + 0.2 * rng.normal(size=weight.shape))
    return model, memory, x, y


def _compile(model, memory, strength, optimizer="sgd"):
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        memories=[memory] if memory is not None else None,
        strength=strength,
        num_train_examples=16,
    )


@pytest.mark.parametrize("structure", ["diagonal", "kfac"])
@pytest.mark.parametrize("delta", ["lora", "zero"])
def test_the_penalty_is_the_memory_at_the_effective_weight(
    rng, structure, delta
):
    model, memory, _, _ = _fine_tuning(rng, structure)
    if delta == "zero":
        # `A @ B = 0`: the layers compute with their frozen weights.
        for layer, weight in _LORA.items():
            b = getattr(model.get_layer(layer), f"lora_{weight}_b")
            b.assign(np.zeros(b.shape))
    values = _effective(model)
    if delta == "zero":
        np.testing.assert_array_equal(
            values["mix/kernel"], _numpy(model)["mix/kernel"]
        )
    expected, _ = _quadratic(
        memory, values, 0.5 * 3.0 * memory.num_examples / 16
    )
    assert expected > 0
    _compile(model, memory, 3.0)
    assert isinstance(
        model.get_layer("mix").lora_kernel_a.regularizer, LoraRegularizer
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.memory_penalty()), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=16, strength=3.0)
        ),
        expected,
        rtol=1e-5,
    )


@pytest.mark.parametrize("structure", ["diagonal", "kfac"])
def test_the_penalty_trains_the_factors_by_the_chain_rule(rng, structure):
    model, memory, x, y = _fine_tuning(rng, structure)
    strength = 20.0
    scale = 0.5 * strength * memory.num_examples / len(x)
    _, gradient = _quadratic(memory, _effective(model), scale)
    gradient = _factor_gradients(model, gradient)
    # What one full-batch step of `fit` takes, less the loss's own share.
    _compile(model, memory, strength, keras.optimizers.SGD(1.0))
    with_memory = training_gradient(model, x, y)
    _compile(model, None, strength, keras.optimizers.SGD(1.0))
    without = training_gradient(model, x, y)
    expected = np.concatenate(
        [gradient.get(v.path, np.zeros(v.shape)).ravel() for v in model.weights]
    )
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(
        with_memory - without, expected, rtol=2e-4, atol=2e-5
    )


def test_fine_tuning_with_the_memory_keeps_the_pretrained_task(rng):
    x = rng.normal(size=(128, 6)).astype("float32")
    old, new = (x[:, 0] > 0).astype("int32"), (x[:, 1] > 0).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def pretrained():
        keras.utils.set_random_seed(1)
        model = keras_memgeom.Sequential(
            [
                keras.Input((6,), name="features"),
                keras.layers.Dense(16, activation="tanh", name="hidden"),
                keras.layers.Dense(2, name="out"),
            ],
            name="net",
        )
        model.compile(keras.optimizers.Adam(0.05), loss)
        model.fit(x, old, epochs=40, batch_size=128, verbose=0)
        return model

    memory = FisherMemory.estimate(pretrained(), (x, old))
    old_loss = {}
    for name, memories in (("with", [memory]), ("without", None)):
        model = pretrained()
        for layer in model.layers:
            layer.enable_lora(2)
        model.compile(
            keras.optimizers.Adam(0.05), loss, memories=memories, strength=5.0
        )
        model.fit(x, new, epochs=40, batch_size=128, verbose=0)
        logits = model.predict(x, verbose=0)
        old_loss[name] = float(loss(old, logits))
    assert old_loss["with"] < 0.7 * old_loss["without"], old_loss


@pytest.mark.parametrize("structure", ["diagonal", "kfac"])
def test_the_penalty_survives_save_and_load(tmp_path, rng, structure):
    model, memory, x, y = _fine_tuning(rng, structure)
    _compile(model, memory, 3.0)
    expected, _ = _quadratic(
        memory, _effective(model), 0.5 * 3.0 * memory.num_examples / 16
    )
    model.save(tmp_path / "lora.keras")
    loaded = keras.saving.load_model(tmp_path / "lora.keras")
    # Keras saves `W + s A B` as the weight and restarts the factors at 0,
    # so the layers compute with the same weights and the penalty is kept.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.memory_penalty()), expected, rtol=1e-5
    )
    for layer, weight in _LORA.items():
        factor = getattr(loaded.get_layer(layer), f"lora_{weight}_a")
        assert isinstance(factor.regularizer, LoraRegularizer), layer
    loaded.fit(x, y, epochs=1, batch_size=len(x), verbose=0)


def test_a_plain_model_refuses_a_memory_of_a_weight_lora_froze(rng):
    x, y = _data(rng, 8)
    tokens = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(6, 4, name="embed")(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(tokens, keras.layers.Dense(3, name="out")(h))
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    memory = FisherMemory.estimate(model, (x, y))
    model.get_layer("out").enable_lora(2)
    with pytest.raises(
        ValueError, match="'out/kernel'.*'out'.*keras_memgeom.Model"
    ):
        keras_memgeom.attach(model, memory, num_train_examples=8)
    # Nothing was attached.
    assert all(v.regularizer is None for v in model.trainable_variables)


def test_the_regularizer_config_names_its_layer_and_is_not_rebuilt(rng):
    model, memory, _, _ = _fine_tuning(rng, "diagonal")
    _compile(model, memory, 1.0)
    regularizer = model.get_layer("mix").lora_kernel_a.regularizer
    config = keras.regularizers.serialize(regularizer)
    assert config["config"]["layer"] == "mix"
    with pytest.raises(ValueError, match="'mix'.*keras_memgeom.Model"):
        keras.regularizers.deserialize(config)


def test_a_quantized_lora_layer_keeps_its_memory_of_the_factors():
    # Its frozen weight is int8, not a weight a memory of floats remembers:
    # a memory of the trainable variables after `enable_lora` still matches.
    model = keras_memgeom.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, name="hidden"),
            keras.layers.Dense(3, name="out"),
        ],
        name="net",
    )
    model.get_layer("hidden").quantize("int8")
    model.get_layer("hidden").enable_lora(2)
    trainable = model.trainable_variables
    memory = FisherMemory(
        {v.path: keras.ops.convert_to_numpy(v) for v in trainable},
        {v.path: np.ones(v.shape) for v in trainable},
        num_examples=16,
    )
    assert "net/hidden/lora_kernel_a" in memory.paths
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        memories=[memory],
        num_train_examples=16,
    )
    regularizer = model.get_layer("hidden").lora_kernel_a.regularizer
    assert not isinstance(regularizer, LoraRegularizer)
    assert float(keras.ops.convert_to_numpy(model.memory_penalty())) == 0.0


def test_attach_keeps_the_factors_own_regularizer_and_detach_restores_it(rng):
    x = rng.normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    l2 = keras.regularizers.L2(0.1)
    model = keras_memgeom.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=l2)],
        name="net",
    )
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    memory = FisherMemory.estimate(model, (x, y))
    layer = model.layers[0]
    layer.enable_lora(1, lora_alpha=2, b_initializer="ones")
    keras_memgeom.attach(model, memory, num_train_examples=16, strength=2.0)
    regularizer = layer.lora_kernel_a.regularizer
    assert isinstance(regularizer, LoraRegularizer)
    assert regularizer.base is l2
    values = _numpy(model)
    a, b = values["net/dense/lora_kernel_a"], values["net/dense/lora_kernel_b"]
    # Only the kernel moved (by 2 A B); the bias is at its anchor.
    diff = values["net/dense/kernel"] + 2.0 * a @ b
    diff -= memory.anchor["net/dense/kernel"]
    expected = (
        0.5
        * 2.0
        * memory.num_examples
        / 16
        * np.sum(memory.fisher["net/dense/kernel"] * diff**2)
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.memory_penalty()), expected, rtol=1e-5
    )
    # The factor's own L2 stays with the factor, apart from the memory.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(regularizer(a.astype("float32"))),
        expected + 0.1 * np.sum(a**2),
        rtol=1e-5,
    )
    keras_memgeom.detach(model)
    assert layer.lora_kernel_a.regularizer is l2


def test_a_memory_of_weights_the_model_no_longer_trains_is_refused(rng):
    x = rng.normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    model = keras_memgeom.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, name="hidden"),
            keras.layers.Dense(3, name="out"),
        ],
        name="net",
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("sgd", loss)
    memory = FisherMemory.estimate(model, (x, y))
    model.get_layer("hidden").trainable = False
    model.get_layer("out").enable_lora(2)
    with pytest.raises(
        ValueError, match="'net/hidden/kernel'.*does not train them"
    ):
        model.compile("sgd", loss, memories=[memory], num_train_examples=16)


def test_a_keras_hub_backbone_fine_tuned_with_lora_keeps_its_memory(rng):
    pytest.importorskip("keras_hub")
    from tests.memory.test_keras_hub import _bert

    classifier = _bert()
    backbone = classifier.backbone
    model = keras_memgeom.Model(classifier.inputs, classifier.outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # `backbone.enable_lora` freezes every other weight of the backbone: a
    # memory of all the pretrained weights names them.
    everything = _random_memory(rng, model, num_examples=10)
    targets = [
        layer
        for layer in backbone._flatten_layers(include_self=False)
        if layer.name in backbone.default_lora_layer_names()
    ]
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = layer in targets
    memory = _random_memory(rng, model, num_examples=10)
    backbone.enable_lora(2)
    with pytest.raises(
        ValueError, match="token_embedding/embeddings.*does not train them"
    ):
        model.compile("sgd", loss, memories=[everything], num_train_examples=10)
    # The memory estimated with the backbone frozen as LoRA leaves it:
    # query and value, read at their effective weights, and the head.
    for v in model.weights:
        v.assign(v + 0.1 * rng.normal(size=v.shape).astype(v.dtype))
    values = _numpy(model)
    for layer in targets:
        values[layer._kernel.path] = values[layer._kernel.path] + (
            layer.lora_alpha / layer.lora_rank
        ) * np.matmul(
            values[layer.lora_kernel_a.path], values[layer.lora_kernel_b.path]
        )
    expected = (
        0.5
        * 3.0
        * sum(
            np.sum(memory.fisher[p] * (values[p] - memory.anchor[p]) ** 2)
            for p in memory.paths
        )
    )
    model.compile(
        "sgd", loss, memories=[memory], strength=3.0, num_train_examples=10
    )
    for layer in targets:
        assert isinstance(layer.lora_kernel_a.regularizer, LoraRegularizer)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.memory_penalty()), expected, rtol=1e-5
    )
