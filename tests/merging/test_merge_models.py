import keras
import numpy as np
import pytest

from keras_memgeom.merging import merge_models
from tests.memory.helpers import classification_data, softmax_probabilities, softmax_regression

pytestmark = pytest.mark.usefixtures("full_precision")


def _mlp(seed, width=6):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(width, activation="relu"), keras.layers.Dense(3)]
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _permuted_copy(model, permutation):
    kernel_1, bias_1, kernel_2, bias_2 = model.get_weights()
    copy = keras.models.clone_model(model)
    copy.set_weights([kernel_1[:, permutation], bias_1[permutation], kernel_2[permutation], bias_2])
    return copy


def test_merging_a_model_with_its_permuted_copy_gives_the_model(rng):
    model = _mlp(0)
    copy = _permuted_copy(model, rng.permutation(6))
    x = rng.normal(size=(20, 5)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    merged = merge_models([model, copy])
    for got, want in zip(merged.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    unaligned = merge_models([model, copy], align=False)
    assert not np.allclose(unaligned.get_weights()[0], model.get_weights()[0])


def _closed_form_precision(model, x):
    p = softmax_probabilities(model, x)
    variance = p * (1 - p)
    return len(x) * np.mean(x[:, :, None] ** 2 * variance[:, None, :], axis=0)


def test_fisher_weighted_merge_is_the_precision_weighted_mean(rng):
    model_a, model_b = softmax_regression(), softmax_regression()
    model_b.set_weights([w + rng.normal(size=w.shape).astype("float32") for w in model_b.get_weights()])
    x_a, y_a = classification_data(rng, num_examples=80)
    x_b, y_b = classification_data(rng, num_examples=120)
    x_b = 2.0 * x_b  # other inputs, other Fisher
    merged = merge_models([model_a, model_b], data=[(x_a, y_a), (x_b, y_b)], align=False)
    p_a, p_b = _closed_form_precision(model_a, x_a), _closed_form_precision(model_b, x_b)
    expected = (p_a * model_a.get_weights()[0] + p_b * model_b.get_weights()[0]) / (p_a + p_b)
    np.testing.assert_allclose(merged.get_weights()[0], expected, rtol=1e-4, atol=1e-6)


def test_bad_merges_are_refused(rng):
    model = _mlp(0)
    with pytest.raises(ValueError, match="at least two"):
        merge_models([model])
    with pytest.raises(ValueError, match="one data set per model"):
        merge_models([model, _mlp(1)], data=[classification_data(rng)])
    with pytest.raises(ValueError, match="architecture"):
        merge_models([model, _mlp(1, width=7)])
