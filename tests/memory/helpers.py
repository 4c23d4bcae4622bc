"""Small models whose Fisher has a closed form."""

import keras
import numpy as np


def softmax_regression(num_features=5, num_classes=3, from_logits=True):
    activation = None if from_logits else "softmax"
    model = keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(num_classes, activation=activation),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    )
    return model


def softmax_probabilities(model, x):
    kernel, bias = model.get_weights()
    z = x.astype("float64") @ kernel + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def classification_data(rng, num_examples=300, num_features=5, num_classes=3):
    x = rng.normal(size=(num_examples, num_features)).astype("float32")
    y = rng.integers(0, num_classes, num_examples)
    return x, y


def flat_weights(model):
    return np.concatenate([w.ravel() for w in model.get_weights()]).astype(
        "float64"
    )


def set_flat_weights(model, flat):
    weights, start = [], 0
    for w in model.get_weights():
        weights.append(
            flat[start : start + w.size].reshape(w.shape).astype(w.dtype)
        )
        start += w.size
    model.set_weights(weights)


def training_gradient(model, x, y):
    """The gradient of what `fit` minimizes (loss + penalties), from one step.

    The model must be compiled with `keras.optimizers.SGD(1.0)`: one
    full-batch step moves the weights by minus the gradient. The weights are
    restored afterwards.
    """
    before = flat_weights(model)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    gradient = before - flat_weights(model)
    set_flat_weights(model, before)
    return gradient


def minimize_quadratic(model, x, y):
    """Sets the weights to the minimizer of `fit`'s objective if quadratic.

    The gradient of a quadratic is affine, `g(w) = H w - b`: probing it at
    the current weights and one step along each axis gives `H`, and the
    minimizer is one Newton step away.
    """
    start = flat_weights(model)
    g0 = training_gradient(model, x, y)
    hessian = np.empty((len(start), len(start)))
    for i in range(len(start)):
        probe = start.copy()
        probe[i] += 1.0
        set_flat_weights(model, probe)
        hessian[:, i] = training_gradient(model, x, y) - g0
    set_flat_weights(model, start - np.linalg.solve(hessian, g0))
