"""The likelihood behind each loss, and its scale: strength 1 is Bayes."""

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.fisher import estimate_fisher
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from tests.memory.helpers import flat_weights
from tests.memory.helpers import minimize_quadratic
from tests.memory.helpers import set_flat_weights
from tests.memory.helpers import training_gradient


def _linear(num_features, num_outputs, loss, activation=None):
    model = keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(num_outputs, activation=activation),
        ]
    )
    model.compile(keras.optimizers.SGD(1.0), loss)
    return model


def _with_ones(x):
    return np.concatenate([x, np.ones((len(x), 1))], axis=1).astype("float64")


@pytest.mark.parametrize("num_outputs", [1, 4])
def test_mean_squared_error_fisher_is_the_loss_curvature(rng, num_outputs):
    # loss = (1/d) sum (y - f)^2: its Hessian in a kernel entry is (2/d) x_i^2.
    x = rng.normal(size=(100, 3)).astype("float32")
    y = rng.normal(size=(100, num_outputs)).astype("float32")
    model = _linear(3, num_outputs, "mse")
    layer = model.layers[0]
    scale = 2.0 / num_outputs
    exact, _ = estimate_fisher(model, (x, y), estimator="exact")
    expected = scale * np.repeat(
        np.mean(x.astype("float64") ** 2, 0)[:, None], num_outputs, 1
    )
    np.testing.assert_allclose(exact[layer.kernel.path], expected, rtol=1e-5)
    np.testing.assert_allclose(
        exact[layer.bias.path], np.full(num_outputs, scale), rtol=1e-6
    )
    residual = y - model.predict(x, verbose=0)
    empirical, _ = estimate_fisher(model, (x, y), estimator="empirical")
    np.testing.assert_allclose(
        empirical[layer.kernel.path],
        scale * np.mean(x[:, :, None] ** 2 * residual[:, None, :] ** 2, 0),
        rtol=1e-4,
    )


def test_one_dimensional_targets_of_a_one_output_regression_are_accepted(rng):
    x = rng.normal(size=(50, 3)).astype("float32")
    y = rng.normal(size=50).astype("float32")
    model = _linear(3, 1, keras.losses.MeanSquaredError())
    residual = y - model.predict(x, verbose=0)[:, 0]
    for estimator in ("empirical", "batched"):
        fisher, _ = estimate_fisher(
            model, (x, y), estimator=estimator, batch_size=1
        )
        expected = 2.0 * np.mean(x**2 * residual[:, None] ** 2, 0)[:, None]
        np.testing.assert_allclose(
            fisher[model.layers[0].kernel.path], expected, rtol=1e-4
        )


def test_binary_cross_entropy_fisher_is_the_hessian_of_the_mean_loss(rng):
    # loss = (1/d) sum_j BCE_j: Hessian in a logit-layer kernel entry is
    # x_i^2 p_j (1 - p_j) / d, the diagonal of J^T diag(p(1-p))/d J.
    x = rng.normal(size=(200, 4)).astype("float32")
    y = rng.integers(0, 2, (200, 3)).astype("float32")
    for from_logits in (True, False):
        model = _linear(
            4,
            3,
            keras.losses.BinaryCrossentropy(from_logits=from_logits),
            activation=None if from_logits else "sigmoid",
        )
        kernel, bias = model.get_weights()
        p = 1 / (1 + np.exp(-(x.astype("float64") @ kernel + bias)))
        fisher, _ = estimate_fisher(model, (x, y))
        layer = model.layers[0]
        np.testing.assert_allclose(
            fisher[layer.kernel.path],
            np.mean(x[:, :, None] ** 2 * (p * (1 - p))[:, None, :], 0) / 3,
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            fisher[layer.bias.path], np.mean(p * (1 - p), 0) / 3, rtol=1e-5
        )


@pytest.mark.parametrize(
    "loss, scale",
    [
        ("sparse_categorical_crossentropy", 1.0),
        (keras.losses.CategoricalCrossentropy(from_logits=True), 1.0),
        ("binary_crossentropy", 1 / 5),
        (keras.losses.mean_squared_error, 2 / 5),
        (keras.losses.MeanSquaredError(reduction="mean"), 2 / 5),
    ],
)
def test_loss_scale_of_each_loss(loss, scale):
    assert likelihood_from_loss(loss).loss_scale(5) == pytest.approx(scale)


@pytest.mark.parametrize(
    "reduction", ["sum", None, "none", "mean_with_sample_weight"]
)
def test_losses_not_averaged_over_the_batch_are_refused(reduction):
    with pytest.raises(ValueError, match=f"reduction {reduction!r}"):
        likelihood_from_loss(keras.losses.MeanSquaredError(reduction=reduction))


def _orthogonal_design(rng, num_examples, scales):
    # Zero-mean, mutually orthogonal columns: the Hessian of a linear model's
    # loss is then diagonal, so a diagonal Fisher memory is exact.
    x = rng.normal(size=(num_examples, len(scales)))
    q, _ = np.linalg.qr(x - x.mean(axis=0))
    return (q * np.sqrt(num_examples) * np.asarray(scales)).astype("float32")


@pytest.mark.parametrize("num_outputs", [1, 4])
def test_sequential_laplace_equals_joint_least_squares_at_strength_one(
    rng, num_outputs
):
    n_a, n_b = 120, 80
    x_a = _orthogonal_design(rng, n_a, [1.0, 2.0, 0.5])
    mixing = np.array([[1.0, 0.8, 0.3], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    x_b = (rng.normal(size=(n_b, 3)) @ mixing + 0.3).astype(
        "float32"
    )  # correlated
    true_w = rng.normal(size=(4, num_outputs))
    y_a = (
        _with_ones(x_a) @ true_w + 0.5 * rng.normal(size=(n_a, num_outputs))
    ).astype("float32")
    y_b = (
        _with_ones(x_b) @ (true_w + 1.0)
        + 0.5 * rng.normal(size=(n_b, num_outputs))
    ).astype("float32")

    model = _linear(3, num_outputs, "mse")
    fit_a = np.linalg.lstsq(_with_ones(x_a), y_a.astype("float64"), rcond=None)[
        0
    ]
    set_flat_weights(model, np.concatenate([fit_a[:3].ravel(), fit_a[3]]))
    memory = FisherMemory.estimate(model, (x_a, y_a), estimator="exact")
    keras_memgeom.attach(model, memory, num_train_examples=n_b, strength=1)
    minimize_quadratic(model, x_b, y_b)

    joint = np.linalg.lstsq(
        _with_ones(np.concatenate([x_a, x_b])),
        np.concatenate([y_a, y_b]).astype("float64"),
        rcond=None,
    )[0]
    expected = np.concatenate([joint[:3].ravel(), joint[3]])
    np.testing.assert_allclose(
        flat_weights(model), expected, rtol=1e-4, atol=1e-5
    )


def _logistic_joint_map(x, y, steps=50):
    """Newton's method on the mean binary cross-entropy of a linear model."""
    design = _with_ones(x)
    w = np.zeros((design.shape[1], y.shape[1]))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ w))
        for j in range(y.shape[1]):
            hessian = design.T @ (design * (p[:, j] * (1 - p[:, j]))[:, None])
            w[:, j] -= np.linalg.solve(hessian, design.T @ (p[:, j] - y[:, j]))
    return np.concatenate([w[:-1].ravel(), w[-1]])


def test_binary_cross_entropy_memory_at_strength_one_keeps_the_joint_map(rng):
    # Task A: each input twice, labelled 0 and 1, on an orthogonal design:
    # its MAP is w = 0 exactly, where the Hessian of the mean loss is
    # diagonal (p = 1/2), and the loss of A is even in w, so the Laplace
    # penalty is exact up to third order in w. At the joint MAP of A and a
    # small task B, the gradient of loss_B + penalty is then ~0 -- with the
    # 1/d scale of Keras's mean over outputs, and not without it.
    x_half = _orthogonal_design(rng, 200, [1.0, 1.5, 0.7])
    x_a = np.concatenate([x_half, x_half])
    y_a = np.concatenate([np.zeros((200, 3)), np.ones((200, 3))]).astype(
        "float32"
    )
    x_b = rng.normal(size=(20, 3)).astype("float32")
    y_b = rng.integers(0, 2, (20, 3)).astype("float32")

    model = _linear(3, 3, keras.losses.BinaryCrossentropy(from_logits=True))
    set_flat_weights(model, np.zeros(12))
    memory = FisherMemory.estimate(model, (x_a, y_a), estimator="exact")
    joint = _logistic_joint_map(
        np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    )
    set_flat_weights(model, joint)
    loss_b_gradient = training_gradient(model, x_b, y_b)

    keras_memgeom.attach(model, memory, num_train_examples=len(x_b), strength=1)
    right = training_gradient(model, x_b, y_b)
    keras_memgeom.attach(model, memory, num_train_examples=len(x_b), strength=3)
    unscaled = training_gradient(model, x_b, y_b)  # the Fisher without 1/d
    size = np.linalg.norm(loss_b_gradient)
    assert np.linalg.norm(right) < 0.02 * size
    assert np.linalg.norm(unscaled) > 0.5 * size
