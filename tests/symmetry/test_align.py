import keras
import numpy as np
import pytest

from keras_memgeom.symmetry import align
from keras_memgeom.symmetry import distance
from tests.symmetry.symmetry_models import BUILDERS
from tests.symmetry.symmetry_models import permuted_copy
from tests.symmetry.symmetry_models import randomize
from tests.symmetry.symmetry_models import to_numpy

pytestmark = pytest.mark.usefixtures("full_precision")


def test_recovers_a_random_permutation_exactly(model_and_inputs):
    model, x = model_and_inputs
    aligned = align(permuted_copy(model, seed=5), model)
    for got, expected in zip(aligned.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(
        to_numpy(aligned(x, training=False)),
        to_numpy(model(x, training=False)),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_independent_models_function_unchanged_and_closer(kind):
    build, input_shape = BUILDERS[kind]
    reference, model = randomize(build(), seed=0), randomize(build(), seed=1)
    x = (
        np.random.default_rng(2)
        .normal(size=(8,) + input_shape)
        .astype("float32")
    )
    aligned = align(model, reference)
    np.testing.assert_allclose(
        to_numpy(aligned(x, training=False)),
        to_numpy(model(x, training=False)),
        atol=1e-5,
        rtol=1e-5,
    )
    assert (
        distance(aligned, reference).overall
        < distance(model, reference).overall
    )


def test_unknown_method():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="git_rebasin"):
        align(model, model, method="git_rebasin")
