import itertools
import math

import keras
import numpy as np

from keras_memgeom.layers import PrePrunedDense
from keras_memgeom.symmetry import count_equivalent_optima
from tests.symmetry.symmetry_models import BUILDERS
from tests.symmetry.symmetry_models import to_numpy


def test_plain_layers_count_factorials():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    expected = math.log10(math.factorial(5) * math.factorial(3))
    np.testing.assert_allclose(count_equivalent_optima(model), expected)


def test_conv_filters_count():
    build, _ = BUILDERS["convnet"]
    # 5 and 4 filters, 6 hidden Dense units.
    expected = math.log10(
        math.factorial(5) * math.factorial(4) * math.factorial(6)
    )
    np.testing.assert_allclose(count_equivalent_optima(build()), expected)


def test_distinct_masks_count_one():
    build, _ = BUILDERS["pruned_mlp"]
    assert count_equivalent_optima(build()) == 0.0


def test_matches_brute_force_with_repeated_mask_columns():
    # Masks with repeated columns / rows leave some permutations harmless;
    # count them by trying all of them.
    model = keras.Sequential(
        [
            keras.Input((3,)),
            PrePrunedDense(4, zero_rate=0.5, seed=0),
            PrePrunedDense(5, zero_rate=0.5, seed=1),
            keras.layers.Dense(2),
        ]
    )
    first = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], "float32")
    second = np.array([[1, 0, 1, 1, 0]] * 2 + [[0, 1, 1, 1, 1]] * 2, "float32")
    model.layers[0].mask.assign(first)
    model.layers[1].mask.assign(second)
    masks = [
        to_numpy(model.layers[0].mask),
        to_numpy(model.layers[1].mask),
        None,
    ]

    count = 1
    for index, units in enumerate([4, 5]):
        keeps = 0
        for p in itertools.permutations(range(units)):
            own_same = np.array_equal(masks[index][:, list(p)], masks[index])
            following = masks[index + 1]
            next_same = following is None or np.array_equal(
                following[list(p)], following
            )
            keeps += own_same and next_same
        count *= keeps
    # Layer 1: columns 0=1 and 2=3, and layer 2's mask rows pair the same
    # units -> 2! * 2!; layer 2: columns 1=4 and 2=3 -> 2! * 2!.
    assert count == 16
    np.testing.assert_allclose(
        count_equivalent_optima(model), math.log10(count)
    )
