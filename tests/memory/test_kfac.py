import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom import merge
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")


def _softmax_regression(bias):
    model = keras_memgeom.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, use_bias=bias)]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _probabilities(model, x):
    z = np.asarray(keras.ops.convert_to_numpy(model(x)), "float64")
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("estimator", ["exact", "empirical", "sampled"])
def test_one_example_without_bias_equals_the_dense_fisher(rng, estimator):
    x, y = classification_data(rng, num_examples=1, num_features=4)
    model = _softmax_regression(bias=False)
    memory = FisherMemory.estimate(
        model, (x, y), estimator=estimator, structure="kfac", num_samples=4
    )
    kernel = model.layers[0].kernel.path
    block = memory.kronecker[kernel]
    p = _probabilities(model, x)[0]
    a = np.outer(x[0], x[0])
    if estimator == "exact":
        g = np.diag(p) - np.outer(p, p)
    else:
        # One score per (drawn) label: the factor is its outer product.
        assert np.linalg.matrix_rank(block.g, tol=1e-6) <= (
            4 if estimator == "sampled" else 1
        )
        g = block.g
    np.testing.assert_allclose(
        np.kron(block.a, block.g), np.kron(a, g), rtol=1e-5, atol=1e-7
    )
    # Its diagonal is the diagonal memory's Fisher.
    diagonal = FisherMemory.estimate(
        model, (x, y), estimator=estimator, num_samples=4
    )
    np.testing.assert_allclose(
        memory.fisher[kernel], diagonal.fisher[kernel], rtol=1e-5, atol=1e-8
    )


def _linear_gaussian(rng, num_outputs):
    model = keras_memgeom.Sequential(
        [keras.Input((3,)), keras.layers.Dense(num_outputs)]
    )
    model.compile(keras.optimizers.SGD(0.05), "mean_squared_error")
    mixing = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.5, 0.8]])
    true = rng.normal(size=(4, num_outputs))

    def task(n, shift):
        x = (rng.normal(size=(n, 3)) + shift) @ mixing  # correlated inputs
        y = np.c_[x, np.ones(n)] @ true + 0.3 * rng.normal(
            size=(n, num_outputs)
        )
        return x.astype("float32"), y.astype("float32")

    return model, task(60, 0.0), task(40, 1.5)


def _least_squares(*tasks):
    x = np.concatenate([t[0] for t in tasks]).astype("float64")
    y = np.concatenate([t[1] for t in tasks]).astype("float64")
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    return [w[:-1].astype("float32"), w[-1].astype("float32")]


@pytest.mark.parametrize("num_outputs", [1, 4])
def test_sequential_bayes_lands_on_the_joint_fit(rng, num_outputs):
    model, task_a, task_b = _linear_gaussian(rng, num_outputs)
    model.set_weights(_least_squares(task_a))
    memory = FisherMemory.estimate(model, task_a, structure="kfac")
    # MSE over d outputs is 2/d times the unit-Gaussian NLL: G = 2/d I.
    block = memory.kronecker[model.layers[0].kernel.path]
    np.testing.assert_allclose(
        block.g, 2.0 / num_outputs * np.eye(num_outputs), atol=1e-6
    )
    x_a = np.c_[task_a[0], np.ones(len(task_a[0]))]
    np.testing.assert_allclose(block.a, x_a.T @ x_a / len(x_a), rtol=1e-5)
    model.compile(
        keras.optimizers.SGD(0.05),
        "mean_squared_error",
        memories=[memory],
        strength=1.0,
        num_train_examples=len(task_b[0]),
    )

    def full_batch_step(weights):
        model.set_weights(weights)
        model.train_on_batch(*task_b)
        return np.concatenate(
            [(w - v).ravel() for w, v in zip(model.get_weights(), weights)]
        )

    # At the joint least-squares fit, loss_B + penalty has zero gradient.
    at_joint = full_batch_step(_least_squares(task_a, task_b))
    at_a = full_batch_step(_least_squares(task_a))
    assert np.linalg.norm(at_joint) < 1e-4 * np.linalg.norm(at_a)


def test_penalty_gradient_matches_finite_differences(rng):
    x, y = classification_data(rng, num_examples=30, num_features=4)
    model = _softmax_regression(bias=True)
    memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    model.set_weights(
        [
            w + rng.normal(size=w.shape).astype("float32")
            for w in model.get_weights()
        ]
    )
    start = [w.astype("float64") for w in model.get_weights()]
    keras_memgeom.attach(model, memory, num_train_examples=30, strength=3.0)
    model.compile(
        keras.optimizers.SGD(1e-3),
        lambda y_true, y_pred: 0.0 * keras.ops.mean(y_pred),
        memories=[memory],
        strength=3.0,
        num_train_examples=30,
    )
    model.train_on_batch(x, y)
    step = [(w - s) / -1e-3 for w, s in zip(model.get_weights(), start)]

    def penalty(weights):
        model.set_weights(weights)
        return float(
            keras.ops.convert_to_numpy(
                memory.penalty(model, num_train_examples=30, strength=3.0)
            )
        )

    eps = 1e-2
    for index in range(2):
        for flat in rng.choice(start[index].size, size=3, replace=False):
            plus = [w.copy() for w in start]
            minus = [w.copy() for w in start]
            plus[index].flat[flat] += eps
            minus[index].flat[flat] -= eps
            numeric = (penalty(plus) - penalty(minus)) / (2 * eps)
            np.testing.assert_allclose(
                step[index].flat[flat], numeric, rtol=2e-3, atol=1e-5
            )


def test_merge_of_two_kfac_memories(rng):
    x, y = classification_data(rng, num_examples=50, num_features=4)
    model = _softmax_regression(bias=True)
    memories = _kfac_memories(model, [(x, y), (x + 1.0, y)], rng, step=1.0)
    merged = merge(memories)
    kernel = model.layers[0].kernel.path
    _assert_the_merged_anchor_solves_the_sum(memories, merged, kernel)
    # The merged precision is the nearest single product to the sum.
    total = sum(
        m.num_examples * _block_precision(m.kronecker[kernel]) for m in memories
    )
    approximation = merged.num_examples * _block_precision(
        merged.kronecker[kernel]
    )
    error = np.linalg.norm(approximation - total) / np.linalg.norm(total)
    assert error < 0.5
    assert merged.structure == "kfac" and merged.num_examples == 100


def test_kfac_memory_saves_loads_and_is_refused_with_a_diagonal_one(
    tmp_path, rng
):
    x, y = classification_data(rng, num_examples=20, num_features=4)
    model = _softmax_regression(bias=True)
    memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    memory.save(tmp_path / "k.memory")
    loaded = FisherMemory.load(tmp_path / "k.memory")
    kernel = model.layers[0].kernel.path
    np.testing.assert_array_equal(
        loaded.kronecker[kernel].a, memory.kronecker[kernel].a
    )
    np.testing.assert_array_equal(
        loaded.kronecker[kernel].g, memory.kronecker[kernel].g
    )
    assert loaded.kronecker[kernel].bias == model.layers[0].bias.path
    diagonal = FisherMemory.estimate(model, (x, y))
    with pytest.raises(ValueError, match="different structures"):
        merge([memory, diagonal])
    merged = merge([memory.diagonal(), diagonal])
    assert merged.structure == "diagonal"
    with pytest.raises(ValueError, match="batched"):
        FisherMemory.estimate(
            model, (x, y), structure="kfac", estimator="batched"
        )
    with pytest.raises(ValueError, match="structure"):
        FisherMemory.estimate(model, (x, y), structure="full")


def test_model_with_a_kfac_memory_survives_save_and_load(tmp_path, rng):
    x, y = classification_data(rng, num_examples=40, num_features=4)
    model = _softmax_regression(bias=True)
    memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    model.set_weights([w + 0.3 for w in model.get_weights()])
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        memories=[memory],
        strength=5.0,
        num_train_examples=40,
    )
    expected = float(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=40, strength=5.0)
        )
    )
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["memory_penalty"], expected, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.memories[0].structure == "kfac"
    logs = loaded.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["memory_penalty"], expected, rtol=1e-5)


def test_conv_kfac_on_a_one_by_one_kernel_is_the_dense_kfac_of_its_pixels(rng):
    # A 1x1 convolution on a 1x1 image is a Dense layer.
    x, y = classification_data(rng, num_examples=16, num_features=4)
    conv = keras_memgeom.Sequential(
        [
            keras.Input((1, 1, 4)),
            keras.layers.Conv2D(3, 1),
            keras.layers.Flatten(),
        ]
    )
    dense = _softmax_regression(bias=True)
    conv.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    conv.set_weights(
        [
            w.reshape(v.shape)
            for w, v in zip(dense.get_weights(), conv.get_weights())
        ]
    )
    from_conv = FisherMemory.estimate(
        conv, (x.reshape(-1, 1, 1, 4), y), structure="kfac"
    )
    from_dense = FisherMemory.estimate(dense, (x, y), structure="kfac")
    a = from_conv.kronecker[conv.layers[0].kernel.path]
    b = from_dense.kronecker[dense.layers[0].kernel.path]
    np.testing.assert_allclose(a.a, b.a, rtol=1e-5)
    np.testing.assert_allclose(a.g, b.g, rtol=1e-5, atol=1e-8)


def test_pre_pruned_layers_keep_their_mask_in_the_memory(tmp_path, rng):
    x, y = classification_data(rng, num_examples=1, num_features=6)
    model = keras_memgeom.Sequential(
        [
            keras.Input((6,)),
            keras_memgeom.layers.PrePrunedDense(
                4, zero_rate=0.5, seed=0, activation="tanh"
            ),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    layer = model.layers[0]
    mask = np.asarray(keras.ops.convert_to_numpy(layer.mask))
    memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    block = memory.kronecker[layer.kernel.path]
    np.testing.assert_array_equal(block.mask, mask)
    # One example: K-FAC is exact, masked entries carry no information.
    diagonal = FisherMemory.estimate(model, (x, y))
    np.testing.assert_allclose(
        memory.fisher[layer.kernel.path],
        diagonal.fisher[layer.kernel.path],
        rtol=1e-5,
        atol=1e-9,
    )
    assert np.all(diagonal.fisher[layer.kernel.path][mask == 0] == 0)
    # Moving a masked entry costs nothing.
    weights = model.get_weights()
    before = float(
        keras.ops.convert_to_numpy(memory.penalty(model, num_train_examples=1))
    )
    weights[0] = weights[0] + 5.0 * (1 - mask)
    model.set_weights(weights)
    after = float(
        keras.ops.convert_to_numpy(memory.penalty(model, num_train_examples=1))
    )
    np.testing.assert_allclose(after, before, atol=1e-6)
    memory.save(tmp_path / "p.memory")
    np.testing.assert_array_equal(
        FisherMemory.load(tmp_path / "p.memory")
        .kronecker[layer.kernel.path]
        .mask,
        mask,
    )


def test_a_plain_keras_model_trains_with_a_kfac_memory_and_saves_it(
    tmp_path, rng
):
    x, y = classification_data(rng, num_examples=20, num_features=4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    model.set_weights([w + 0.3 for w in model.get_weights()])
    keras_memgeom.attach(model, memory, num_train_examples=20, strength=2.0)
    expected = float(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=20, strength=2.0)
        )
    )
    np.testing.assert_allclose(
        sum(float(keras.ops.convert_to_numpy(l)) for l in model.losses),
        expected,
        rtol=1e-5,
    )
    # The block couples kernel and bias: the layer's config rebuilds both
    # halves and the weights file keeps the anchors and factors.
    model.save(tmp_path / "plain.keras")
    loaded = keras.saving.load_model(tmp_path / "plain.keras")
    np.testing.assert_allclose(
        sum(float(keras.ops.convert_to_numpy(l)) for l in loaded.losses),
        expected,
        rtol=1e-5,
    )
    keras_memgeom.detach(model)
    model.save(tmp_path / "plain.keras")


def _normalized_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.LayerNormalization(name="norm")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden))
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def test_kfac_names_the_variables_that_stay_diagonal(rng):
    x, y = classification_data(rng, num_examples=30, num_features=4)
    model = _normalized_model()
    with pytest.warns(UserWarning, match="keep a diagonal Fisher") as record:
        memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    gamma, beta = model.get_layer("norm").gamma, model.get_layer("norm").beta
    message = str(record[0].message)
    assert gamma.path in message and beta.path in message
    out = model.get_layer("out")
    assert memory.structure_of(out.kernel.path) == "kfac"
    assert memory.structure_of(out.bias.path) == "kfac"
    assert memory.structure_of(gamma.path) == "diagonal"
    # The diagonal variables hold the diagonal memory's Fisher.
    diagonal = FisherMemory.estimate(model, (x, y))
    np.testing.assert_allclose(
        memory.fisher[gamma.path], diagonal.fisher[gamma.path], rtol=1e-5
    )
    with pytest.raises(ValueError, match="no variable 'nothing'"):
        memory.structure_of("nothing")


def test_kfac_without_a_layer_to_factor_is_refused(rng):
    x, y = classification_data(rng, num_examples=30, num_features=3)
    inputs = keras.Input((3,))
    logits = keras.layers.LayerNormalization(name="only")(inputs)
    model = keras.Model(inputs, logits)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    with pytest.raises(
        ValueError, match="no.*to factor.*only/gamma.*structure='diagonal'"
    ):
        FisherMemory.estimate(model, (x, y), structure="kfac")


def _attention_classifier(model_class):
    tokens = keras.Input((5, 4))
    attention = keras.layers.MultiHeadAttention(2, 3, name="attention")
    h = keras.layers.GlobalAveragePooling1D()(attention(tokens, tokens))
    model = model_class(tokens, keras.layers.Dense(3, name="out")(h))
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _kfac_memories(model, datasets, rng, step=0.2, **kwargs):
    """A K-FAC memory of `model` on each data set, its weights moved by
    `step` times a normal draw before each."""
    memories = []
    for data in datasets:
        model.set_weights(
            [w + step * rng.normal(size=w.shape) for w in model.get_weights()]
        )
        memories.append(
            FisherMemory.estimate(model, data, structure="kfac", **kwargs)
        )
    return memories


def _block_precision(block):
    """The dense precision `A (x) G` a block stands for (a grouped block's
    block-diagonal one), over the row-major `vec` of `_block_vector`."""
    if block.g.ndim == 3:
        return _grouped_precision(block)
    a = np.diag(block.a) if block.a.ndim == 1 else block.a
    return np.kron(a, block.g)


def _block_vector(values, kernel, block):
    """`vec(D)`: `D` stacks `values[kernel]` as `(rows, units)` and the bias.

    The kernel's input axes (its axes permuted by `block.axes` first) are
    flattened into rows and its output axes into columns (as many as `G`
    has, times the groups of a grouped block).
    """
    units = (
        block.g.shape[0] * block.g.shape[-1]
        if block.g.ndim == 3
        else len(block.g)
    )
    parts = [values[kernel]]
    if block.axes is not None:
        parts = [np.transpose(values[kernel], block.axes)]
    if block.bias:
        parts.append(values[block.bias])
    return np.concatenate(
        [np.asarray(part, "float64").reshape(-1, units) for part in parts]
    ).ravel()


def _kronecker_quadratic(memory, model):
    """`sum vec(D)^T (A (x) G) vec(D)` over blocks, from the numpy weights."""
    current = {v.path: ops_numpy(v) for v in model.trainable_variables}
    delta = {p: current[p] - memory.anchor[p] for p in memory.paths}
    return sum(
        _block_vector(delta, kernel, block)
        @ _block_precision(block)
        @ _block_vector(delta, kernel, block)
        for kernel, block in memory.kronecker.items()
    )


def _assert_the_merged_anchor_solves_the_sum(memories, merged, kernel):
    """`merged`'s anchor of `kernel`'s block minimizes the exact sum of the
    memories' quadratics. A softmax's G is singular, so the normal
    equations are checked, not a solve."""
    precisions = [
        m.num_examples * _block_precision(m.kronecker[kernel]) for m in memories
    ]
    block = memories[0].kronecker[kernel]
    moment = sum(
        p @ _block_vector(m.anchor, kernel, block)
        for p, m in zip(precisions, memories)
    )
    residual = (
        sum(precisions) @ _block_vector(merged.anchor, kernel, block) - moment
    )
    assert np.linalg.norm(residual) < 1e-4 * np.linalg.norm(moment)


def ops_numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), "float64")


def test_an_attention_memory_is_kronecker_factored_and_saved(tmp_path, rng):
    x = rng.normal(size=(24, 5, 4)).astype("float32")
    y = rng.integers(0, 3, 24)
    model = _attention_classifier(keras.Model)
    memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    # All four projections and the classifier, none left diagonal.
    assert {memory.structure_of(p) for p in memory.paths} == {"kfac"}
    query = model.get_layer("attention")._query_dense
    assert memory.kronecker[query.kernel.path].g.shape == (6, 6)
    # The diagonal view keeps the variables' shapes: (heads, head_dim).
    assert memory.fisher[query.bias.path].shape == (2, 3)
    block = memory.kronecker[query.kernel.path]
    np.testing.assert_allclose(
        memory.fisher[query.bias.path].ravel(),
        block.a[-1, -1] * np.diag(block.g),
        rtol=1e-6,
    )
    model.set_weights(
        [w + 0.1 * rng.normal(size=w.shape) for w in model.get_weights()]
    )
    expected = (
        0.5
        * 2.0
        * memory.num_examples
        / 24
        * (_kronecker_quadratic(memory, model))
    )
    penalty = memory.penalty(model, num_train_examples=24, strength=2.0)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(penalty)), expected, rtol=1e-4
    )
    # Attention builds its projections itself, so their configs cannot
    # rebuild a memory: `attach` on a plain model says so.
    with pytest.raises(ValueError, match="keras_memgeom.Model"):
        keras_memgeom.attach(model, memory, num_train_examples=24, strength=2.0)
    package = _attention_classifier(keras_memgeom.Model)
    package.set_weights(model.get_weights())
    package.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        regularizers=[memory],
        strength=2.0,
        num_train_examples=24,
    )
    package.save(tmp_path / "attention.keras")
    loaded = keras.saving.load_model(tmp_path / "attention.keras")
    logs = loaded.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["memory_penalty"], expected, rtol=1e-4)
    memory.save(tmp_path / "attention.memory")
    again = FisherMemory.load(tmp_path / "attention.memory")
    np.testing.assert_array_equal(again.kronecker[query.kernel.path].g, block.g)


def test_two_attention_memories_merge_to_the_exact_anchor(rng):
    x = rng.normal(size=(24, 5, 4)).astype("float32")
    y = rng.integers(0, 3, 24)
    model = _attention_classifier(keras.Model)
    memories = _kfac_memories(model, [(x, y), (x + 1.0, y)], rng)
    merged = merge(memories)
    value = model.get_layer("attention")._value_dense
    assert merged.anchor[value.bias.path].shape == (2, 3)
    _assert_the_merged_anchor_solves_the_sum(
        memories, merged, value.kernel.path
    )


def _image_classifier(layer, channels, rng):
    """`layer` on 5x5 images of `channels`, then a Dense; 12 examples."""
    model = keras.Sequential(
        [
            keras.Input((5, 5, channels)),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.normal(size=(12, 5, 5, channels)).astype("float32")
    return model, (x, rng.integers(0, 3, 12))


def test_a_separable_convolution_memory_attaches_and_saves(tmp_path, rng):
    # Two blocks: the depthwise kernel's, one per channel, on the layer's
    # `depthwise_regularizer`; the pointwise kernel and bias's, on its
    # `pointwise_regularizer` and `bias_regularizer`.
    model, (x, y) = _image_classifier(
        keras.layers.SeparableConv2D(
            4, 3, depth_multiplier=2, activation="tanh", name="sep"
        ),
        2,
        rng,
    )
    memory = FisherMemory.estimate(model, (x, y), structure="kfac", rank=None)
    assert {memory.structure_of(p) for p in memory.paths} == {"kfac"}
    path = model.get_layer("sep").depthwise_kernel.path
    depthwise = memory.kronecker[path]
    assert depthwise.bias is None
    assert depthwise.a.shape == (2, 9, 9) and depthwise.g.shape == (2, 2, 2)
    memory.save(tmp_path / "separable.memory")
    loaded = FisherMemory.load(tmp_path / "separable.memory")
    assert loaded.kronecker[path].bias is None
    np.testing.assert_array_equal(loaded.kronecker[path].a, depthwise.a)

    # A merge with a memory of shifted data minimizes the exact sum of
    # the two block-diagonal quadratics of the depthwise kernel.
    model.set_weights(
        [w + 0.2 * rng.normal(size=w.shape) for w in model.get_weights()]
    )
    other = FisherMemory.estimate(
        model, (x + 1.0, y), structure="kfac", rank=None
    )
    merged = merge([memory, other])
    _assert_the_merged_anchor_solves_the_sum([memory, other], merged, path)
    model.set_weights(
        [w + 0.1 * rng.normal(size=w.shape) for w in model.get_weights()]
    )
    expected = (
        0.5
        * 2.0
        * memory.num_examples
        / 12
        * _kronecker_quadratic(memory, model)
    )
    keras_memgeom.attach(model, memory, num_train_examples=12, strength=2.0)
    assert sum(float(ops_numpy(l)) for l in model.losses) == pytest.approx(
        expected, rel=1e-4
    )
    model.save(tmp_path / "separable.keras")
    loaded = keras.saving.load_model(tmp_path / "separable.keras")
    assert sum(float(ops_numpy(l)) for l in loaded.losses) == pytest.approx(
        expected, rel=1e-4
    )


def test_a_grouped_convolution_memory_has_a_block_per_group(tmp_path, rng):
    # Conv2D(groups=2): a block per group, through the penalty and a plain
    # model's save.
    model, (x, y) = _image_classifier(
        keras.layers.Conv2D(6, 3, groups=2, activation="tanh", name="grouped"),
        4,
        rng,
    )
    memory = FisherMemory.estimate(model, (x, y), structure="kfac", rank=None)
    assert {memory.structure_of(p) for p in memory.paths} == {"kfac"}
    block = memory.kronecker[model.get_layer("grouped").kernel.path]
    assert block.a.shape == (2, 19, 19) and block.g.shape == (2, 3, 3)
    model.set_weights(
        [w + 0.1 * rng.normal(size=w.shape) for w in model.get_weights()]
    )
    penalty = (
        0.5
        * 2.0
        * memory.num_examples
        / 12
        * _kronecker_quadratic(memory, model)
    )
    _assert_a_plain_model_keeps_the_penalty(
        model, memory, (x, y), tmp_path / "grouped.keras", penalty
    )


def _assert_a_plain_model_keeps_the_penalty(model, memory, data, path, penalty):
    """`attach` adds `penalty` to a plain model's loss, also after saving.

    A plain Keras model rebuilds the regularizer from the layer's config.
    """
    x, y = data
    plain = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    keras_memgeom.attach(model, memory, num_train_examples=len(y), strength=2.0)
    model.save(path)
    again = keras.saving.load_model(path)
    for restored in (model, again):
        logs = restored.evaluate(x, y, verbose=0, return_dict=True)
        np.testing.assert_allclose(logs["loss"] - plain, penalty, rtol=1e-4)


def _assert_penalized_saved_and_merged(model, memories, data, tmp_path, rng):
    """The first memory's penalty, file, plain-model save and merge.

    Away from the anchor the penalty is the closed-form quadratic; the
    file keeps every factor; a plain model keeps the penalty through
    `model.save`; merging `memories` keeps each block's structure and
    minimizes the exact sum of their quadratics.
    """
    memory, num_train_examples = memories[0], len(data[1])
    model.set_weights(
        [w + 0.1 * rng.normal(size=w.shape) for w in model.get_weights()]
    )
    expected = (
        0.5
        * 2.0
        * memory.num_examples
        / num_train_examples
        * _kronecker_quadratic(memory, model)
    )
    penalty = memory.penalty(
        model, num_train_examples=num_train_examples, strength=2.0
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(penalty)), expected, rtol=1e-5
    )
    memory.save(tmp_path / "kept.memory")
    loaded = FisherMemory.load(tmp_path / "kept.memory")
    for kernel, block in memory.kronecker.items():
        np.testing.assert_array_equal(loaded.kronecker[kernel].a, block.a)
        np.testing.assert_array_equal(loaded.kronecker[kernel].g, block.g)
    _assert_a_plain_model_keeps_the_penalty(
        model, loaded, data, tmp_path / "kept.keras", expected
    )
    merged = merge(memories)
    for kernel, block in memory.kronecker.items():
        assert merged.kronecker[kernel].a.shape == block.a.shape
        _assert_the_merged_anchor_solves_the_sum(memories, merged, kernel)


def _token_classifier():
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(9, 4, name="embedding")(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(tokens, keras.layers.Dense(3, name="out")(h))
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_an_embedding_memory_has_a_diagonal_input_factor(tmp_path, rng):
    # K-FAC of an Embedding: `a` the tokens' frequencies, held as a
    # diagonal, through the penalty, files, a plain model's save and merges.
    tokens = rng.integers(0, 8, size=(20, 6)).astype("int32")  # 8 unseen
    y = rng.integers(0, 3, 20)
    model = _token_classifier()
    embeddings = model.get_layer("embedding").embeddings.path
    memories = _kfac_memories(model, [(tokens, y), ((tokens + 1) % 9, y)], rng)
    memory = memories[0]
    assert {memory.structure_of(p) for p in memory.paths} == {"kfac"}
    block = memory.kronecker[embeddings]
    assert block.bias is None and block.a.shape == (9,)
    counts = np.bincount(tokens.ravel(), minlength=9)
    np.testing.assert_allclose(block.a, counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(
        memory.fisher[embeddings], np.outer(block.a, np.diag(block.g))
    )

    _assert_penalized_saved_and_merged(
        model, memories, (tokens, y), tmp_path, rng
    )


def _grouped_precision(block):
    """The block-diagonal precision a grouped block stands for, over the
    row-major `vec` of its `(rows, channels * m)` kernel matrix."""
    channels, rows, _ = block.a.shape
    m = block.g.shape[-1]
    same = np.eye(channels)
    precision = np.einsum("cd,cpq,cjk->pcjqdk", same, block.a, block.g)
    return precision.reshape(rows * channels * m, rows * channels * m)


def test_a_depthwise_memory_has_a_block_per_channel(tmp_path, rng):
    # K-FAC of a DepthwiseConv2D: grouped factors, one block per channel,
    # through the diagonal view, the penalty, files, a plain model's save
    # and merges.
    model, (x, y) = _image_classifier(
        keras.layers.DepthwiseConv2D(
            3, depth_multiplier=2, activation="tanh", name="depthwise"
        ),
        3,
        rng,
    )
    depthwise = model.get_layer("depthwise")
    kernel, bias = depthwise.kernel.path, depthwise.bias.path
    memories = _kfac_memories(model, [(x, y), (x + 1.0, y)], rng, rank=None)
    memory = memories[0]
    assert {memory.structure_of(p) for p in memory.paths} == {"kfac"}
    block = memory.kronecker[kernel]
    assert block.bias == bias
    assert block.a.shape == (3, 10, 10) and block.g.shape == (3, 2, 2)
    # The diagonal view: `a_c[p, p] g_c[j, j]` at tap `p`, channel `c`.
    a_diagonal = np.diagonal(block.a, axis1=1, axis2=2)
    g_diagonal = np.diagonal(block.g, axis1=1, axis2=2)
    np.testing.assert_allclose(
        memory.fisher[kernel],
        np.einsum("cp,cj->pcj", a_diagonal[:, :9], g_diagonal).reshape(
            3, 3, 3, 2
        ),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        memory.fisher[bias], (a_diagonal[:, 9:] * g_diagonal).ravel()
    )

    _assert_penalized_saved_and_merged(model, memories, (x, y), tmp_path, rng)


def test_a_heads_first_projection_memory_is_kronecker_factored(tmp_path, rng):
    # Gemma's query, key and value, `btd,ndh->btnh`: the kernel is stored
    # `(heads, dim, head_dim)`, its matrix is `transpose(kernel, (1, 0, 2))`.
    tokens = keras.Input((5, 4))
    query = keras.layers.EinsumDense("btd,ndh->btnh", (5, 2, 3), name="query")
    h = keras.layers.Reshape((5, 6))(query(tokens))
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(tokens, keras.layers.Dense(3, name="out")(h))
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.normal(size=(16, 5, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    memories = _kfac_memories(model, [(x, y), (x + 1.0, y)], rng)
    memory = memories[0]
    assert {memory.structure_of(p) for p in memory.paths} == {"kfac"}
    block = memory.kronecker[query.kernel.path]
    assert block.axes == (1, 0, 2)
    assert block.a.shape == (4, 4) and block.g.shape == (6, 6)
    # The diagonal view, back in the kernel's own axes.
    np.testing.assert_allclose(
        memory.fisher[query.kernel.path],
        np.outer(np.diag(block.a), np.diag(block.g))
        .reshape(4, 2, 3)
        .transpose(1, 0, 2),
        rtol=1e-6,
    )
    _assert_penalized_saved_and_merged(model, memories, (x, y), tmp_path, rng)
    loaded = FisherMemory.load(tmp_path / "kept.memory")
    assert loaded.kronecker[query.kernel.path].axes == (1, 0, 2)
