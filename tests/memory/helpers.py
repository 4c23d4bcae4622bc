"""Small models whose Fisher has a closed form."""

import keras
import numpy as np


def softmax_regression(num_features=5, num_classes=3, from_logits=True):
    activation = None if from_logits else "softmax"
    model = keras.Sequential(
        [keras.Input((num_features,)), keras.layers.Dense(num_classes, activation=activation)]
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
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
