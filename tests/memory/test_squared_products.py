"""Both exact formulas of `squared_products` against a per-example loop."""

import numpy as np
import pytest
from keras import ops

from keras_memgeom.src.memory import squared_products as module

pytestmark = pytest.mark.usefixtures("full_precision")


def _reference(x, g):
    """`sum_k sum_b (sum_p x_bp g_kbp^T)^2`, one example at a time."""
    x, g = np.asarray(x, "float64"), np.asarray(g, "float64")
    total = 0.0
    for k in range(g.shape[0]):
        for b in range(x.shape[0]):
            total = total + np.einsum("pgi,pgo->gio", x[b], g[k, b]) ** 2
    return total


@pytest.mark.parametrize(
    "positions, groups, fan_in, units, cotangents, per_example",
    [
        (9, 1, 12, 4, 3, True),  # a 3x3 map, few cotangents
        (1, 1, 12, 4, 3, False),  # a 1x1 map: the Dense rule
        (4, 5, 9, 2, 10, False),  # depthwise, many cotangents
        (4, 5, 9, 2, 1, True),
    ],
)
def test_both_formulas_equal_a_per_example_loop(
    rng, positions, groups, fan_in, units, cotangents, per_example
):
    costs = module._costs(positions, groups, fan_in, units, cotangents)
    assert (costs[0] <= costs[1]) == per_example
    x = rng.normal(size=(3, positions, groups, fan_in)).astype("float32")
    g = rng.normal(size=(cotangents, 3, positions, groups, units))
    g = g.astype("float32")
    got = ops.convert_to_numpy(module.squared_products(x, g))
    np.testing.assert_allclose(got, _reference(x, g), rtol=2e-5, atol=1e-6)
    # What the chosen formula holds per example.
    held = module.squared_products_elements(
        positions, groups, fan_in, units, cotangents
    )
    pairs = positions * positions * groups * (fan_in + units)
    kernels = cotangents * groups * fan_in * units
    assert held == (kernels if per_example else pairs)
