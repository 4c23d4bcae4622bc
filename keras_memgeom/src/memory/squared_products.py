"""Squared per-example convolution gradients, summed by the cheaper formula.

A convolution's per-example kernel gradient is a sum over output positions
of input patches times output gradients, `d_bk = sum_p x_bp g_kbp^T`
(im2col), per group of channels for a depthwise convolution. Its squares
summed over examples and cotangents can be formed two exact ways:

- per example: form `d_bk`, then square it. The per-example tensor holds
  `K` kernels per example, which dominates for 1x1 spatial outputs with
  many channels (a classifier head, a squeeze-excite convolution).
- from position products: `sum_b sum_pq (x_bp x_bq) (sum_k g_kbp g_kbq)`,
  one contraction over examples and position pairs. For one position it is
  the Dense rule, `(x^2)^T (sum_k g^2)`, with no per-example kernel.

`squared_products` counts the multiplications of both from the static
shapes and runs the cheaper one.
"""

from keras import ops


def _costs(positions, groups, fan_in, units, cotangents):
    """Multiplications per example of the per-example and product formulas."""
    kernel = groups * fan_in * units
    per_example = cotangents * (positions + 1) * kernel
    pairs = positions * positions
    products = pairs * (groups * fan_in + cotangents * groups * units + kernel)
    return per_example, products


def _shape(x, g):
    positions, groups, fan_in = x.shape[1:]
    return positions, groups, fan_in, g.shape[-1], g.shape[0]


def squared_products(x, g):
    """`sum_k sum_b (sum_p x_bp g_kbp^T)^2` per group, by the cheaper formula.

    Args:
        x: the inputs at every position, `(batch, positions, groups,
            fan_in)` (im2col patches; `groups` 1 but for a depthwise
            convolution, whose channels are its groups).
        g: the output gradients at every position, `(K, batch, positions,
            groups, units)` for `K` cotangents.

    Returns:
        `(groups, fan_in, units)`: the sums of the squared per-example
        gradients of a kernel that maps `fan_in` to `units` in every group.

    Example:

    ```python
    import numpy as np

    from keras_memgeom.src.memory.squared_products import squared_products

    x = np.ones((2, 3, 1, 4), "float32")  # 2 examples, 3 positions
    g = np.ones((1, 2, 3, 1, 5), "float32")
    print(squared_products(x, g)[0, 0, 0])  # 2 * 3**2 = 18.0
    ```
    """
    per_example, products = _costs(*_shape(x, g))
    if per_example <= products:
        grads = ops.einsum("bpgi,kbpgo->kbgio", x, g)
        return ops.sum(ops.square(grads), axis=(0, 1))
    xx = ops.multiply(x[:, :, None], x[:, None])
    gg = ops.einsum("kbpgo,kbqgo->bpqgo", g, g)
    total = ops.einsum("bpqgi,bpqgo->gio", xx, gg)
    # Exactly a sum of squares; rounding of cross terms may not be.
    return ops.maximum(total, 0)


def squared_products_elements(positions, groups, fan_in, units, cotangents):
    """Elements per example that `squared_products` holds for these shapes.

    Args:
        positions, groups, fan_in, units, cotangents: the sizes of `x` and
            `g` of `squared_products` (without the batch).

    Returns:
        `K` kernels for the per-example formula, the position products
        `positions^2 * groups * (fan_in + units)` for the other.

    Example:

    ```python
    from keras_memgeom.src.memory.squared_products import (
        squared_products_elements,
    )

    print(squared_products_elements(1, 1, 576, 1024, 10))  # 1600
    ```
    """
    per_example, products = _costs(positions, groups, fan_in, units, cotangents)
    if per_example <= products:
        return cotangents * groups * fan_in * units
    return positions * positions * groups * (fan_in + units)
