"""Fisher memories of per-token outputs `(batch, positions, d)`."""

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.fisher import estimate_fisher
from tests.memory.helpers import exact_fisher_sums

pytestmark = pytest.mark.usefixtures("full_precision")

VOCABULARY = 5


def _tagger():
    """Token in, a class per token out; token 0 pads (a Keras mask)."""
    tokens = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(tokens)
    h = keras.layers.MultiHeadAttention(2, 2)(h, h)
    h = keras.layers.Dense(3, activation="tanh")(h)
    model = keras.Model(tokens, keras.layers.Dense(VOCABULARY)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _tagging_data(rng, n):
    x = rng.integers(1, VOCABULARY, size=(n, 4)).astype("int32")
    x[0, 2:] = 0  # padding: masked positions
    x[1, 3:] = 0
    y = rng.integers(0, VOCABULARY, size=(n, 4))
    weights = rng.uniform(0.5, 2.0, size=(n, 4)).astype("float32")
    return x, y, weights


def test_per_token_fisher_is_the_masked_weighted_sum_over_tokens(rng):
    model = _tagger()
    x, y, weights = _tagging_data(rng, 4)
    fisher, n = estimate_fisher(model, (x, y, weights), batch_size=3)
    unmasked = x != 0
    sums = exact_fisher_sums(model, x[:, None], weights * unmasked)
    # n counts unmasked tokens, as Keras's loss averages over them.
    assert n == unmasked.sum() == 4 * 4 - 2 - 1
    for path, total in sums.items():
        value = total / n
        assert np.abs(value).max() > 0, path
        np.testing.assert_allclose(
            fisher[path], value, rtol=2e-5, atol=1e-9, err_msg=path
        )


def test_per_token_estimators_need_a_position_axis_and_fitting_weights(rng):
    model = _tagger()
    x, y, weights = _tagging_data(rng, 4)
    with pytest.raises(ValueError, match="position axis"):
        estimate_fisher(model, (x, y[:, 0]))
    with pytest.raises(ValueError, match="sample_weight of shape"):
        estimate_fisher(model, (x, y, weights[:, :2]))
    with pytest.raises(ValueError, match="no per-token form"):
        estimate_fisher(model, (x, y), estimator="batched")
    # A weight per sequence weighs all its tokens.
    per_sequence, _ = estimate_fisher(model, (x, y, weights[:, 0]))
    per_token, _ = estimate_fisher(
        model, (x, y, np.repeat(weights[:, :1], 4, axis=1))
    )
    for path, value in per_token.items():
        np.testing.assert_allclose(per_sequence[path], value, rtol=1e-6)


def _per_token_regression(features, bias):
    inputs = keras.Input((5, features))
    h = keras.layers.Masking(0.0)(inputs)  # all-zero positions pad
    dense = keras.layers.Dense(1, use_bias=bias)
    model = keras_memgeom.Model(inputs, dense(h))
    model.compile(keras.optimizers.SGD(0.05), "mean_squared_error")
    return model


def _regression_task(rng, n, shift, true, lengths):
    features = len(true) - 1
    x = rng.normal(size=(n, 5, features)) + shift
    y = x @ true[:-1] + true[-1] + 0.3 * rng.normal(size=(n, 5, 1))
    for b, length in enumerate(lengths):
        x[b, length:] = 0.0
        y[b, length:] = 0.0
    return x.astype("float32"), y.astype("float32")


def _valid_tokens(*tasks):
    x = np.concatenate([t[0].reshape(-1, t[0].shape[-1]) for t in tasks])
    y = np.concatenate([t[1].reshape(-1, 1) for t in tasks])
    valid = np.any(x != 0, axis=1)
    return x[valid].astype("float64"), y[valid].astype("float64")


def _least_squares(bias, *tasks):
    x, y = _valid_tokens(*tasks)
    if not bias:
        return [np.linalg.lstsq(x, y, rcond=None)[0].astype("float32")]
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    return [w[:-1].astype("float32"), w[-1].astype("float32")]


@pytest.mark.parametrize("structure", ["diagonal", "kfac"])
def test_per_token_sequential_bayes_lands_on_the_joint_fit(rng, structure):
    """A linear-Gaussian per-token model: its Laplace memory is exact.

    With `n` and `num_train_examples` counted in unmasked tokens, strength
    1 makes the second task's objective the joint one. The diagonal memory
    is exact for a single weight, K-FAC for a Dense with bias, on padded
    sequences: masked tokens count nowhere (nor enter `A`).
    """
    kfac = structure == "kfac"
    true = rng.normal(size=(3 if kfac else 2, 1))
    task_a = _regression_task(rng, 12, 0.0, true, rng.integers(2, 6, 12))
    task_b = _regression_task(rng, 8, 1.5, true, rng.integers(2, 6, 8))
    model = _per_token_regression(len(true) - 1, bias=kfac)
    model.set_weights(_least_squares(kfac, task_a))
    memory = FisherMemory.estimate(model, task_a, structure=structure)
    x_a = _valid_tokens(task_a)[0]
    tokens_b = len(_valid_tokens(task_b)[0])
    assert memory.num_examples == len(x_a)
    # MSE of one output is 2 times the unit-Gaussian NLL.
    kernel = model.layers[-1].kernel.path
    if kfac:
        x_a = np.c_[x_a, np.ones(len(x_a))]
        block = memory.kronecker[kernel]
        np.testing.assert_allclose(
            np.kron(block.a, block.g),
            2.0 * x_a.T @ x_a / len(x_a),
            rtol=1e-5,
            atol=1e-6,
        )
    else:
        np.testing.assert_allclose(
            memory.fisher[kernel][:, 0], 2.0 * np.mean(x_a**2), rtol=1e-5
        )
    model.compile(
        keras.optimizers.SGD(0.05),
        "mean_squared_error",
        regularizers=[memory],
        strength=1.0,
        num_train_examples=tokens_b,
    )

    def full_batch_step(weights):
        model.set_weights(weights)
        model.train_on_batch(*task_b)
        return np.concatenate(
            [(w - v).ravel() for w, v in zip(model.get_weights(), weights)]
        )

    # At the joint least-squares fit, loss_B + penalty has zero gradient.
    at_joint = full_batch_step(_least_squares(kfac, task_a, task_b))
    at_a = full_batch_step(_least_squares(kfac, task_a))
    assert np.linalg.norm(at_joint) < 1e-4 * np.linalg.norm(at_a)


def _softmax(z):
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("padding", ["mask", "sample_weight"])
def test_kfac_factors_of_padded_tokens_leave_the_padding_out(rng, padding):
    """`A` and `G` against numpy, from the counted tokens alone.

    Per position `t`, a Dense sees `a_t` and gets the exact Fisher's
    output gradients `g_t g_t^T = w_t J_t^T (diag p_t - p_t p_t^T) J_t`:
    `A` is the mean of `a_t a_t^T` over the counted tokens (unmasked, with
    a positive weight), `G` the sum of the `g_t g_t^T` over the units `n`
    (unmasked tokens, a zero weight still one unit, as Keras's loss divides
    by them).
    """
    tokens = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(
        VOCABULARY, 3, mask_zero=padding == "mask"
    )(tokens)
    hidden = keras.layers.Dense(4, activation="tanh")
    out = keras.layers.Dense(VOCABULARY)
    model = keras.Model(tokens, out(hidden(embedded)))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = rng.integers(1, VOCABULARY, size=(5, 6)).astype("int32")
    lengths = np.array([6, 2, 4, 1, 5])
    for b, length in enumerate(lengths):
        x[b, length:] = 0
    y = rng.integers(0, VOCABULARY, size=(5, 6))
    weights = rng.uniform(0.5, 2.0, size=(5, 6)).astype("float32")
    weights[2, 1] = 0.0  # a zero-weight token: one unit, not an input
    if padding == "sample_weight":
        weights[x == 0] = 0.0
    _, n, kronecker = estimate_fisher(
        model, (x, y, weights), structure="kfac", batch_size=2
    )

    embeddings = model.layers[1].get_weights()[0].astype("float64")
    w1, b1 = (v.astype("float64") for v in hidden.get_weights())
    w2, b2 = (v.astype("float64") for v in out.get_weights())
    e = embeddings[x]  # (batch, positions, 3)
    h = np.tanh(e @ w1 + b1)
    p = _softmax(h @ w2 + b2)
    units = x != 0 if padding == "mask" else np.ones_like(x, bool)
    counted = units & (weights > 0)
    assert n == units.sum()
    a_hidden, a_out, g_hidden, g_out = 0.0, 0.0, 0.0, 0.0
    a_embedding, g_embedding = np.zeros(VOCABULARY), 0.0
    for b, t in zip(*np.nonzero(counted)):
        output_fisher = weights[b, t] * (
            np.diag(p[b, t]) - np.outer(p[b, t], p[b, t])
        )
        jacobian = w2.T * (1.0 - h[b, t] ** 2)  # d logits / d hidden z
        a_hidden += np.outer(*[np.r_[e[b, t], 1.0]] * 2)
        a_out += np.outer(*[np.r_[h[b, t], 1.0]] * 2)
        g_hidden += jacobian.T @ output_fisher @ jacobian
        g_out += output_fisher
        # The embedding: a one-hot input, and `d logits / d e = J w1^T`.
        a_embedding[x[b, t]] += 1.0
        g_embedding += (jacobian @ w1.T).T @ output_fisher @ (jacobian @ w1.T)
    count = counted.sum()
    expected = {
        hidden.kernel.path: (a_hidden / count, g_hidden / n),
        out.kernel.path: (a_out / count, g_out / n),
        model.layers[1].embeddings.path: (
            a_embedding / count,
            g_embedding / n,
        ),
    }
    for kernel, (a, g) in expected.items():
        np.testing.assert_allclose(kronecker[kernel][1], a, rtol=1e-5)
        np.testing.assert_allclose(
            kronecker[kernel][2], g, rtol=1e-5, atol=1e-9
        )


def _any_length_tagger():
    """`_tagger` on sequences of any length."""
    tokens = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(tokens)
    h = keras.layers.MultiHeadAttention(2, 2)(h, h)
    model = keras.Model(tokens, keras.layers.Dense(VOCABULARY)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def test_a_new_sequence_length_gets_its_own_step(rng):
    """Positions are static in a compiled step: each length has its own."""
    model = _any_length_tagger()
    data = {}
    for length in (8, 12):
        x = rng.integers(1, VOCABULARY, size=(2, length)).astype("int32")
        x[0, length // 2 :] = 0
        y = rng.integers(0, VOCABULARY, size=(2, length))
        data[length] = (x, y)
        fisher, n = estimate_fisher(model, (x, y))
        unmasked = x != 0
        count = unmasked.sum()
        sums = exact_fisher_sums(model, x[:, None], unmasked)
        expected = {path: total / count for path, total in sums.items()}
        assert n == count
        for path, value in expected.items():
            np.testing.assert_allclose(
                fisher[path], value, rtol=2e-5, atol=1e-9, err_msg=path
            )
    # Batches of both lengths in one estimate: the mean over all tokens.
    both, n = estimate_fisher(model, [data[8], data[12], data[8]])
    totals = {8: estimate_fisher(model, data[8]), 12: (fisher, count)}
    assert n == 2 * totals[8][1] + count
    for path in both:
        expected = (
            2 * totals[8][0][path] * totals[8][1] + fisher[path] * count
        ) / n
        np.testing.assert_allclose(both[path], expected, rtol=1e-5, atol=1e-9)
