"""The tapped per-example Fisher of common layers against per-example loops."""

import keras
import numpy as np
import pytest

from keras_memgeom import backend
from keras_memgeom.src.memory import fisher as fisher_module
from keras_memgeom.src.memory.fisher import _BatchStep
from keras_memgeom.src.memory.fisher import estimate_fisher
from keras_memgeom.src.memory.fisher import sampled_noise
from keras_memgeom.src.memory.layer_taps import LayerTaps
from keras_memgeom.src.memory.likelihood import likelihood_from_loss

pytestmark = pytest.mark.usefixtures("full_precision")

NUM_CLASSES = 3


def _images(rng, n):
    return rng.normal(size=(n, 6, 6, 3)).astype("float32")


def _sequences(rng, n):
    return rng.normal(size=(n, 5, 4)).astype("float32")


def _tokens(rng, n):
    tokens = rng.integers(0, 9, size=(n, 6)).astype("int32")
    tokens[:, 3:] = tokens[:, :3]  # repeated tokens in every example
    return tokens


def _depthwise():
    return [
        keras.Input((6, 6, 3)),
        keras.layers.DepthwiseConv2D(
            3, depth_multiplier=2, padding="same", activation="tanh"
        ),
        keras.layers.DepthwiseConv2D(2, strides=2, use_bias=False),
    ], _images


def _grouped_conv():
    # One input channel per group, then three (two groups of six).
    return [
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(6, 3, groups=3, padding="same", activation="tanh"),
        keras.layers.Conv2D(4, 2, strides=2, groups=2, use_bias=False),
    ], _images


def _separable():
    return [
        keras.Input((6, 6, 3)),
        keras.layers.SeparableConv2D(
            4, 3, depth_multiplier=2, strides=2, padding="same"
        ),
        keras.layers.SeparableConv2D(2, 2, activation="tanh"),
    ], _images


def _batch_norm():
    return [
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(4, 3),
        keras.layers.BatchNormalization(),
    ], _images


def _conv1d():
    return [
        keras.Input((5, 4)),
        keras.layers.Conv1D(3, 2, padding="same", activation="tanh"),
        keras.layers.Conv1D(4, 2, strides=2, dilation_rate=1),
    ], _sequences


def _einsum():
    return [
        keras.Input((5, 4)),
        keras.layers.EinsumDense("abc,cde->abde", (5, 2, 3), bias_axes="de"),
        keras.layers.EinsumDense("abde,dec->abc", (5, 4), bias_axes="c"),
        keras.layers.Dense(2, activation="tanh"),  # on (batch, 5, 4)
    ], _sequences


def _layer_norm():
    return [
        keras.Input((5, 4)),
        keras.layers.Dense(4),
        keras.layers.LayerNormalization(),
        keras.layers.LayerNormalization(axis=(-2, -1), center=False),
    ], _sequences


def _rms_norm():
    # Keras's LayerNormalization with `rms_scaling` divides by the standard
    # deviation, RMSNormalization by the root mean square.
    return [
        keras.Input((5, 4)),
        keras.layers.Dense(4),
        keras.layers.RMSNormalization(),
        keras.layers.LayerNormalization(rms_scaling=True),
        keras.layers.RMSNormalization(axis=(-2, -1)),
    ], _sequences


def _squeeze_excite(h):
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    s = keras.layers.Conv2D(4, 1, activation="relu")(s)
    s = keras.layers.Conv2D(h.shape[-1], 1, activation="hard_sigmoid")(s)
    return keras.layers.Multiply()([h, s])


def _mobilenet_block():
    # 1x1 outputs (the squeeze-excite convolutions) take the position
    # products formula, the others the per-example one.
    return [
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("hard_swish"),
        keras.layers.DepthwiseConv2D(3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("hard_swish"),
        _squeeze_excite,
        keras.layers.Conv2D(5, 1),
        keras.layers.BatchNormalization(),
    ], _images


def _embedding():
    return [
        keras.Input((6,), dtype="int32"),
        keras.layers.Embedding(9, 4),
    ], _tokens


def _reversible_embedding():
    # Called forward only (a classifier): computes as an Embedding.
    return [
        keras.Input((6,), dtype="int32"),
        keras.layers.ReversibleEmbedding(9, 4),
    ], _tokens


ARCHITECTURES = {
    "depthwise": _depthwise,
    "separable": _separable,
    "grouped_conv": _grouped_conv,
    "batch_norm": _batch_norm,
    "conv1d": _conv1d,
    "einsum_dense": _einsum,
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,
    "embedding": _embedding,
    "reversible_embedding": _reversible_embedding,
    "mobilenet_block": _mobilenet_block,
}


def _classifier(name):
    layers, data = ARCHITECTURES[name]()
    h = layers[0]
    for layer in layers[1:]:
        h = layer(h)
    h = keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(h))
    model = keras.Model(layers[0], h)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model, data


def _perturb_statistics(model, rng):
    # Moving statistics away from 0 and 1, so inference BN is not identity.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape
            layer.moving_mean.assign(0.3 * rng.normal(size=size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=size))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size=size))
            layer.beta.assign(0.3 * rng.normal(size=size))


def _reference(model, x, y, estimator, num_samples, seed=0):
    """Mean squared per-example gradients, one example at a time.

    Each example's output cotangents (the likelihood's) are pulled back
    through the whole model by the backend's autodiff, one example per
    call: no taps, no vectorization over examples.
    """
    likelihood = likelihood_from_loss(model.loss)
    step = _BatchStep(
        model,
        list(model.trainable_variables),
        likelihood,
        estimator,
        x[:1],
        "diagonal",
    )
    values = [v.value for v in step.variables]
    totals = [0.0] * len(values)
    for b in range(len(x)):

        def forward(current):
            return step._forward(current, x[b : b + 1]), ()

        outputs, _, pullback = backend.linearize(forward, values)
        noise = None
        if estimator == "sampled":
            noise = np.moveaxis(
                sampled_noise(likelihood, seed, b, 1, NUM_CLASSES, num_samples),
                1,
                0,
            )
        cotangents = step._cotangents(outputs, y[b : b + 1], noise)
        for i, g in enumerate(pullback(cotangents)):
            g = np.asarray(keras.ops.convert_to_numpy(g), "float64")
            totals[i] = totals[i] + (g**2).sum(axis=0)
    return {v.path: t / len(x) for v, t in zip(step.variables, totals)}


@pytest.mark.parametrize("estimator", ["exact", "empirical", "sampled"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_tapped_fisher_equals_a_per_example_loop(rng, name, estimator):
    model, data = _classifier(name)
    _perturb_statistics(model, rng)
    x, y = data(rng, 5), rng.integers(0, NUM_CLASSES, 5)
    taps = LayerTaps(model).probe(x)
    # Every trainable variable of the model has a per-example rule.
    assert {v.path for v in taps.variables} == {
        v.path for v in model.trainable_variables
    }
    fisher, n = estimate_fisher(
        model, (x, y), estimator=estimator, num_samples=2, batch_size=3
    )
    expected = _reference(model, x, y, estimator, num_samples=2)
    assert n == 5 and sorted(fisher) == sorted(expected)
    for path, value in expected.items():
        assert np.abs(value).max() > 0, path
        np.testing.assert_allclose(
            fisher[path], value, rtol=2e-5, atol=1e-7, err_msg=path
        )


@pytest.mark.parametrize("recurrent", [keras.layers.LSTM, keras.layers.GRU])
def test_recurrent_fisher_equals_a_per_example_loop(rng, recurrent):
    # No rule taps a recurrent layer: the generic vectorized path.
    model = keras.Sequential(
        [
            keras.Input((5, 4)),
            recurrent(3),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = _sequences(rng, 5), rng.integers(0, NUM_CLASSES, 5)
    tapped = {v.path for v in LayerTaps(model).probe(x).variables}
    assert not tapped & {v.path for v in model.layers[0].trainable_variables}
    fisher, _ = estimate_fisher(model, (x, y), batch_size=3)
    expected = _reference(model, x, y, "exact", num_samples=1)
    assert sorted(fisher) == sorted(expected)
    for path, value in expected.items():
        assert np.abs(value).max() > 0, path
        np.testing.assert_allclose(
            fisher[path], value, rtol=2e-5, atol=1e-9, err_msg=path
        )


def test_multi_head_attention_is_tapped_and_exact(rng):
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(9, 4)(tokens)
    h = keras.layers.MultiHeadAttention(2, 3)(h, h)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(tokens, keras.layers.Dense(NUM_CLASSES)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = _tokens(rng, 4), rng.integers(0, NUM_CLASSES, 4)
    taps = LayerTaps(model).probe(x)
    assert len(taps.variables) == len(model.trainable_variables)
    fisher, _ = estimate_fisher(model, (x, y))
    for path, value in _reference(model, x, y, "exact", 1).items():
        np.testing.assert_allclose(
            fisher[path], value, rtol=2e-5, atol=1e-9, err_msg=path
        )


def test_moving_statistics_and_frozen_layers_never_enter(rng):
    model, data = _classifier("batch_norm")
    conv = model.layers[1]
    conv.trainable = False
    x, y = data(rng, 4), rng.integers(0, NUM_CLASSES, 4)
    fisher, _ = estimate_fisher(model, (x, y))
    assert sorted(fisher) == sorted(v.path for v in model.trainable_variables)
    assert not any("moving" in path for path in fisher)
    assert not any(conv.name in path for path in fisher)


def _full_block(model, x, y, kernel, bias, units, axes=None):
    """The exact Fisher of `[kernel; bias]` as `(fan_in [+ 1]) * units`,
    the kernel's axes permuted by `axes` first."""
    likelihood = likelihood_from_loss(model.loss)
    step = _BatchStep(
        model, list(model.trainable_variables), likelihood, "exact", x, "kfac"
    )
    values = [v.value for v in step.variables]
    outputs, _, pullback = backend.linearize(
        lambda current: (step._forward(current, x), ()), values
    )
    grads = pullback(step._cotangents(outputs, y, None))
    by_path = {
        v.path: np.asarray(keras.ops.convert_to_numpy(g), "float64")
        for v, g in zip(step.variables, grads)
    }
    cotangents = len(grads[0])
    gradient = by_path[kernel.path]
    if axes is not None:
        gradient = gradient.transpose(0, *(1 + np.asarray(axes)))
    rows = [gradient.reshape(cotangents, -1, units)]
    if bias is not None:
        rows.append(by_path[bias.path].reshape(cotangents, 1, units))
    vectors = np.concatenate(rows, axis=1).reshape(cotangents, -1)
    return vectors.T @ vectors


def _assert_kfac_is_the_full_block(model, x, y, kernel, bias):
    _, _, kronecker = estimate_fisher(model, (x, y), structure="kfac")
    bias_path, a, g, _, axes = kronecker[kernel.path]
    assert bias_path == bias.path
    full = _full_block(model, x, y, kernel, bias, len(g), axes)
    np.testing.assert_allclose(np.kron(a, g), full, rtol=1e-5, atol=1e-8)
    return full


@pytest.mark.parametrize(
    "kind", ["conv1d", "separable", "einsum_dense", "heads_first"]
)
def test_kfac_is_exact_on_one_example_at_one_position(rng, kind):
    kernel = "kernel"
    if kind == "conv1d":
        layer = keras.layers.Conv1D(3, 4, activation="tanh")
        inputs = keras.Input((4, 2))  # one output position
    elif kind == "separable":
        # The pointwise step's input is the depthwise step's output.
        layer = keras.layers.SeparableConv2D(
            3, 2, depth_multiplier=2, activation="tanh"
        )
        inputs = keras.Input((2, 2, 2))  # one output position
        kernel = "pointwise_kernel"
    elif kind == "einsum_dense":
        layer = keras.layers.EinsumDense(
            "abc,bcd->ad", (3,), bias_axes="d", activation="tanh"
        )
        inputs = keras.Input((2, 2))
    else:
        # Gemma's query, key and value: the kernel `(heads, dim, head_dim)`.
        layer = keras.layers.EinsumDense(
            "abc,dce->abde", (1, 2, 3), bias_axes="de", activation="tanh"
        )
        inputs = keras.Input((1, 4))  # one position
    model = keras.Sequential(
        [inputs, layer, keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = rng.normal(size=(1, *inputs.shape[1:])).astype("float32")
    _assert_kfac_is_the_full_block(
        model, x, np.array([1]), getattr(layer, kernel), layer.bias
    )


@pytest.mark.parametrize("kind", ["depthwise", "separable", "grouped_conv"])
def test_grouped_kfac_is_exact_per_group_at_one_position(rng, kind):
    # One K-FAC block per group (a depthwise kernel's groups are its
    # channels): on one example at one position each is the exact Fisher's
    # block of that group (the groups' cross terms, not zero, are what the
    # grouped structure leaves out). A separable convolution's depthwise
    # step has no bias; the pointwise step follows.
    channels = 4 if kind == "grouped_conv" else 3
    if kind == "depthwise":
        layer = keras.layers.DepthwiseConv2D(
            2, depth_multiplier=2, activation="tanh"
        )
    elif kind == "separable":
        layer = keras.layers.SeparableConv2D(
            3, 2, depth_multiplier=2, activation="tanh"
        )
    else:
        layer = keras.layers.Conv2D(4, 2, groups=2, activation="tanh")
    model = keras.Sequential(
        [
            keras.Input((2, 2, channels)),  # one output position
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = rng.normal(size=(1, 2, 2, channels)).astype("float32")
    _, _, kronecker = estimate_fisher(
        model, (x, np.array([1])), structure="kfac"
    )
    if kind == "separable":
        kernel, bias = layer.depthwise_kernel, None
    else:
        kernel, bias = layer.kernel, layer.bias
    # Rows: the group's patch (and the bias's 1); two outputs per group.
    groups, rows = (2, 9) if kind == "grouped_conv" else (3, 5)
    rows -= bias is None
    block_bias, a, g, *_ = kronecker[kernel.path]
    assert block_bias == (bias.path if bias is not None else None)
    assert a.shape == (groups, rows, rows) and g.shape == (groups, 2, 2)
    full = _full_block(model, x, np.array([1]), kernel, bias, groups * 2)
    full = full.reshape(rows, groups, 2, rows, groups, 2)
    for c in range(groups):
        np.testing.assert_allclose(
            np.einsum("pq,jk->pjqk", a[c], g[c]),
            full[:, c, :, :, c, :],
            rtol=1e-5,
            atol=1e-8,
        )
    assert np.abs(full[:, 0, :, :, 1, :]).max() > 1e-3


def _attention_classifier(query_length, key_length):
    """Attention of `query_length` queries over `key_length` keys, then Dense.

    With one key the attention weights are constant: the query and key
    projections get no gradient, the value and output ones all of it.
    """
    query = keras.Input((query_length, 4))
    inputs = [query]
    source = query
    if key_length != query_length:
        source = keras.Input((key_length, 4))
        inputs.append(source)
    attention = keras.layers.MultiHeadAttention(2, 3, name="attention")
    h = keras.layers.Flatten()(attention(query, source))
    inputs = inputs if len(inputs) > 1 else query
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model, attention


@pytest.mark.parametrize(
    "projection, key_length",
    [("value", 1), ("output", 1), ("query", 2)],
)
def test_attention_kfac_is_exact_on_one_example_of_length_one(
    rng, projection, key_length
):
    # Each projection sees one position (the query, or a single key): its
    # Kronecker factors are the exact Fisher of its kernel and bias.
    model, attention = _attention_classifier(1, key_length)
    x = [
        rng.normal(size=(1, *t.shape[1:])).astype("float32")
        for t in model.inputs
    ]
    x = x if len(x) > 1 else x[0]
    layer = getattr(attention, f"_{projection}_dense")
    full = _assert_kfac_is_the_full_block(
        model, x, np.array([2]), layer.kernel, layer.bias
    )
    assert np.abs(full).max() > 1e-6  # information, not two zero matrices


def test_every_attention_projection_gets_kronecker_factors(rng):
    model, attention = _attention_classifier(5, 5)
    x = rng.normal(size=(4, 5, 4)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 4)
    _, _, kronecker = estimate_fisher(model, (x, y), structure="kfac")
    for name, units in (("query", 6), ("key", 6), ("value", 6), ("output", 4)):
        layer = getattr(attention, f"_{name}_dense")
        bias, a, g, *_ = kronecker[layer.kernel.path]
        assert bias == layer.bias.path
        fan_in = 4 if name != "output" else 6
        assert a.shape == (fan_in + 1, fan_in + 1) and g.shape == (units, units)


def test_an_einsum_that_is_not_a_matmul_stays_diagonal(rng):
    # `abc,bcd->abd`: a kernel per position, not one `(fan_in, units)` map.
    layer = keras.layers.EinsumDense("abc,bcd->abd", (5, 2), bias_axes="d")
    model = keras.Sequential(
        [
            keras.Input((5, 4)),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = _sequences(rng, 3), rng.integers(0, NUM_CLASSES, 3)
    with pytest.warns(UserWarning, match="keep a diagonal Fisher") as record:
        fisher, _, kronecker = estimate_fisher(model, (x, y), structure="kfac")
    assert layer.kernel.path in str(record[0].message)
    assert layer.kernel.path in fisher and layer.kernel.path not in kronecker
    assert model.layers[-1].kernel.path in kronecker


def test_a_batch_that_does_not_fit_is_computed_in_parts(rng, monkeypatch):
    model, data = _classifier("separable")
    x, y = data(rng, 6), rng.integers(0, NUM_CLASSES, 6)
    whole, _ = estimate_fisher(model, (x, y), batch_size=6)
    fisher_module._STEPS.clear()
    taps = LayerTaps(model).probe(x)
    per_example = 4 * (
        taps.activation_size
        + NUM_CLASSES * 2 * taps.activation_size
        + taps.per_example_elements(NUM_CLASSES)
    )
    # Room for two examples in the share of memory a step may plan on.
    free = 2.5 * per_example / fisher_module.MEMORY_SHARE
    monkeypatch.setattr(backend, "free_memory", lambda: free)
    parts, _ = estimate_fisher(model, (x, y), batch_size=6)
    step = next(iter(fisher_module._STEPS[model].values()))
    assert step.part_size == 2
    for path, value in whole.items():
        np.testing.assert_allclose(parts[path], value, rtol=1e-5, atol=1e-9)


def test_an_example_that_does_not_fit_names_the_cause(rng, monkeypatch):
    model, data = _classifier("depthwise")
    x, y = data(rng, 2), rng.integers(0, NUM_CLASSES, 2)
    monkeypatch.setattr(backend, "free_memory", lambda: 1000)
    with pytest.raises(ValueError, match="one example needs about"):
        estimate_fisher(model, (x, y))


def test_a_separable_convolution_factors_both_steps(rng):
    # A grouped block for the depthwise kernel (no bias), a Dense-like
    # block for the pointwise kernel and bias: nothing left diagonal.
    model, data = _classifier("separable")
    x, y = data(rng, 5), rng.integers(0, NUM_CLASSES, 5)
    fisher, _, kronecker = estimate_fisher(model, (x, y), structure="kfac")
    assert fisher == {}  # nothing diagonal, so no warning either
    for layer in model.layers[1:3]:
        kh, kw, channels, multiplier = layer.depthwise_kernel.shape
        bias, a, g, *_ = kronecker[layer.depthwise_kernel.path]
        assert bias is None
        assert a.shape == (channels, kh * kw, kh * kw)
        assert g.shape == (channels, multiplier, multiplier)
        bias, a, g, *_ = kronecker[layer.pointwise_kernel.path]
        assert bias == layer.bias.path
        assert a.shape == (layer.pointwise_kernel.shape[2] + 1,) * 2
        assert g.shape == (layer.filters, layer.filters)


def test_embedding_kfac_is_exact_on_one_example_with_one_token(rng):
    # Its input factor is diagonal: the one-hot input's second moment.
    embedding = keras.layers.Embedding(5, 3)
    model = keras.Sequential(
        [
            keras.Input((1,), dtype="int32"),
            embedding,
            keras.layers.Activation("tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = np.array([[2]], "int32"), np.array([1])
    _, _, kronecker = estimate_fisher(model, (x, y), structure="kfac")
    bias, a, g, *_ = kronecker[embedding.embeddings.path]
    assert bias is None
    np.testing.assert_array_equal(a, [0.0, 0.0, 1.0, 0.0, 0.0])
    full = _full_block(model, x, y, embedding.embeddings, None, 3)
    np.testing.assert_allclose(
        np.kron(np.diag(a), g), full, rtol=1e-5, atol=1e-8
    )


def _token_tagger(first):
    """Per-token logits of `first` (an Embedding, or a Dense on one-hot)."""
    inputs = (
        keras.Input((6,), dtype="int32")
        if isinstance(first, keras.layers.Embedding)
        else keras.Input((6, 9))
    )
    h = keras.layers.Activation("tanh")(first(inputs))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def test_embedding_kfac_is_the_dense_kfac_of_its_one_hot_inputs(rng):
    # A Dense on one-hot tokens computes what the Embedding does, and its
    # K-FAC is the generic position rule's: the two must agree, with
    # repeated tokens and positions masked by sample weights.
    embedding = keras.layers.Embedding(9, 4)
    dense = keras.layers.Dense(4, use_bias=False)
    model, twin = _token_tagger(embedding), _token_tagger(dense)
    twin.set_weights(model.get_weights())
    tokens = _tokens(rng, 7)
    y = rng.integers(0, NUM_CLASSES, (7, 6))
    weights = (rng.random((7, 6)) > 0.3).astype("float32")
    one_hot = np.eye(9, dtype="float32")[tokens]
    _, _, kronecker = estimate_fisher(
        model, (tokens, y, weights), structure="kfac"
    )
    _, _, expected = estimate_fisher(
        twin, (one_hot, y, weights), structure="kfac"
    )
    _, a, g, *_ = kronecker[embedding.embeddings.path]
    _, dense_a, dense_g, *_ = expected[dense.kernel.path]
    # The counted tokens' frequencies, from the data alone.
    counts = np.bincount(tokens[weights > 0], minlength=9)
    np.testing.assert_allclose(a, counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(np.diag(a), dense_a, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(g, dense_g, rtol=1e-5, atol=1e-9)


def test_a_tied_embedding_is_left_to_the_generic_path(rng):
    # The same table looks tokens up and projects to logits: two uses, no
    # rule for their sum, so it is neither tapped nor factored, and still
    # exact.
    tokens = keras.Input((6,), dtype="int32")
    embedding = keras.layers.ReversibleEmbedding(9, 4)
    h = keras.layers.Activation("tanh")(embedding(tokens))
    logits = embedding(h, reverse=True)
    model = keras.Model(tokens, keras.layers.GlobalAveragePooling1D()(logits))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = _tokens(rng, 4), rng.integers(0, 9, 4)
    assert not LayerTaps(model).probe(x).variables
    fisher, _ = estimate_fisher(model, (x, y), batch_size=3)
    expected = _reference(model, x, y, "exact", num_samples=1)
    np.testing.assert_allclose(
        fisher[embedding.embeddings.path],
        expected[embedding.embeddings.path],
        rtol=2e-5,
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="none to factor"):
        estimate_fisher(model, (x, y), structure="kfac")


def _position_model(hub, length, table_length, per_token, **call_kwargs):
    """Logits of `tanh(x + position embedding)`, per token or per example."""
    inputs = keras.Input((length, 4))
    position = hub.layers.PositionEmbedding(table_length)
    h = keras.layers.Activation("tanh")(
        keras.layers.Add()([inputs, position(inputs, **call_kwargs)])
    )
    if not per_token:
        h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model, position


@pytest.mark.parametrize("estimator", ["exact", "sampled"])
def test_position_embedding_is_tapped_and_exact(rng, estimator):
    hub = pytest.importorskip("keras_hub")
    # A table longer than the sequences: its last rows get no information.
    model, position = _position_model(hub, 5, 7, per_token=False)
    x = rng.normal(size=(4, 5, 4)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 4)
    taps = LayerTaps(model).probe(x)
    assert position.position_embeddings.path in {v.path for v in taps.variables}
    fisher, _ = estimate_fisher(
        model, (x, y), estimator=estimator, num_samples=2, batch_size=3
    )
    expected = _reference(model, x, y, estimator, num_samples=2)
    path = position.position_embeddings.path
    assert np.abs(expected[path][:5]).min() > 0
    np.testing.assert_array_equal(fisher[path][5:], 0.0)
    np.testing.assert_allclose(fisher[path], expected[path], rtol=2e-5)


def test_position_embedding_kfac_is_the_embedding_kfac_of_positions(rng):
    # The table added at positions 0..seq-1 is an Embedding looked up at
    # the position ids: same factors, with masked tokens left out of `a`.
    # The call names the default start, as TokenAndPositionEmbedding does.
    hub = pytest.importorskip("keras_hub")
    model, position = _position_model(
        hub, 5, 7, per_token=True, start_index=0, positions=None
    )
    inputs = keras.Input((5, 4))
    ids = keras.Input((5,), dtype="int32")
    embedding = keras.layers.Embedding(7, 4)
    h = keras.layers.Activation("tanh")(
        keras.layers.Add()([inputs, embedding(ids)])
    )
    twin = keras.Model([inputs, ids], keras.layers.Dense(NUM_CLASSES)(h))
    twin.compile(loss=model.loss)
    twin.set_weights(model.get_weights())
    x = rng.normal(size=(6, 5, 4)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, (6, 5))
    weights = (rng.random((6, 5)) > 0.3).astype("float32")
    positions = np.tile(np.arange(5, dtype="int32"), (6, 1))
    _, _, kronecker = estimate_fisher(model, (x, y, weights), structure="kfac")
    _, _, expected = estimate_fisher(
        twin, ([x, positions], y, weights), structure="kfac"
    )
    bias, a, g, *_ = kronecker[position.position_embeddings.path]
    _, twin_a, twin_g, *_ = expected[embedding.embeddings.path]
    assert bias is None
    counts = np.bincount(positions[weights > 0], minlength=7)
    np.testing.assert_allclose(a, counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(a, twin_a, rtol=1e-6)
    np.testing.assert_allclose(g, twin_g, rtol=1e-5, atol=1e-9)


def test_a_position_embedding_from_another_start_is_left_generic(rng):
    # Cached decoding reads rows from `start_index` on: not the rule's
    # rows, so the generic path computes it, exactly.
    hub = pytest.importorskip("keras_hub")
    model, position = _position_model(hub, 3, 7, per_token=False, start_index=2)
    x = rng.normal(size=(4, 3, 4)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 4)
    taps = LayerTaps(model).probe(x)
    assert position.position_embeddings.path not in {
        v.path for v in taps.variables
    }
    fisher, _ = estimate_fisher(model, (x, y), batch_size=3)
    expected = _reference(model, x, y, "exact", num_samples=1)
    path = position.position_embeddings.path
    np.testing.assert_array_equal(expected[path][:2], 0.0)
    np.testing.assert_allclose(fisher[path], expected[path], rtol=2e-5)
