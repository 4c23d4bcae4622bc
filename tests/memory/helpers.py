"""Small models whose Fisher has a closed form."""

import keras
import numpy as np

from keras_memgeom import backend


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


def exact_fisher_sums(model, examples, weights):
    """`sum_u w_u sum_c p_u(c) (d log p_u(c) / d theta)^2`, per variable path.

    The exact Fisher of a model with logits outputs, summed over its units
    (not yet divided by their count), one example at a time: no taps, no
    vectorization over examples. `examples` holds the model's inputs one
    example at a time (batches of one); `weights[b]` weighs example `b`'s
    units: one number for a `(batch, d)` output, one per position for
    `(batch, positions, d)` outputs (0 drops a position). The score of
    class `c` at unit `u`, `e_c - p_u` there and zero elsewhere, is pulled
    back from the logits by the backend's autodiff.
    """
    variables = model.trainable_variables
    values = [v.value for v in variables]

    def forward(current, inputs):
        with keras.StatelessScope(state_mapping=list(zip(variables, current))):
            return model(inputs, training=False), ()

    totals = [0.0] * len(values)
    for inputs, example_weights in zip(examples, weights):
        outputs, _, pullback = backend.linearize(
            lambda current: forward(current, inputs), values
        )
        logits = np.asarray(keras.ops.convert_to_numpy(outputs), "float64")
        classes = logits.shape[-1]
        units = logits.reshape(-1, classes)
        example_weights = np.broadcast_to(example_weights, len(units))
        for u in np.flatnonzero(example_weights):
            p = np.exp(units[u] - units[u].max())
            p /= p.sum()
            # One cotangent per class, pulled back together.
            cotangents = np.zeros((classes, *units.shape), "float32")
            cotangents[:, u] = np.eye(classes) - p
            grads = pullback(
                keras.ops.convert_to_tensor(
                    cotangents.reshape(classes, *logits.shape)
                )
            )
            for i, g in enumerate(grads):
                g = np.asarray(keras.ops.convert_to_numpy(g), "float64")
                totals[i] = totals[i] + example_weights[u] * np.tensordot(
                    p, g**2, axes=1
                )
    return {v.path: total for v, total in zip(variables, totals)}
