import keras
import numpy as np
import pytest

from keras_memgeom.symmetry import distance
from tests.symmetry.symmetry_models import BUILDERS
from tests.symmetry.symmetry_models import permuted_copy
from tests.symmetry.symmetry_models import randomize
from tests.symmetry.symmetry_models import to_numpy

pytestmark = pytest.mark.usefixtures("full_precision")


def _phi(a, b):
    return np.sum((a - b) ** 2) / np.sum((a + b) ** 2)


def test_matches_formula_per_layer_and_pooled():
    build, _ = BUILDERS["pruned_mlp"]
    a, b = randomize(build(), seed=0), randomize(build(), seed=1)
    kernels = []
    for layer_a, layer_b in zip(a.layers, b.layers):
        if hasattr(layer_a, "kernel"):
            mask = to_numpy(getattr(layer_a, "mask", 1.0))
            kernels.append(
                (
                    layer_a.name,
                    to_numpy(layer_a.kernel).astype("float64") * mask,
                    to_numpy(layer_b.kernel).astype("float64") * mask,
                )
            )
    result = distance(a, b)
    assert list(result.per_layer) == [name for name, _, _ in kernels]
    for name, kernel_a, kernel_b in kernels:
        np.testing.assert_allclose(
            result.per_layer[name], _phi(kernel_a, kernel_b), rtol=1e-6
        )
    pooled_a = np.concatenate([k.ravel() for _, k, _ in kernels])
    pooled_b = np.concatenate([k.ravel() for _, _, k in kernels])
    np.testing.assert_allclose(
        result.overall, _phi(pooled_a, pooled_b), rtol=1e-6
    )


def test_reference_values():
    build, _ = BUILDERS["mlp"]
    model = randomize(build())
    assert distance(model, model).overall == 0.0
    # Independent random weights: Phi near 1.
    assert 0.7 < distance(model, randomize(build(), seed=1)).overall < 1.3
    assert distance(model, permuted_copy(model)).overall > 0.5


def test_mismatched_architectures():
    a = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="wide"),
            keras.layers.Dense(1),
        ]
    )
    b = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, name="wider"),
            keras.layers.Dense(1),
        ]
    )
    with pytest.raises(ValueError, match="'wide'"):
        distance(a, b)
