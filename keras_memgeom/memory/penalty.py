"""The quadratic form that every memory penalty in the package evaluates."""

from keras import ops

from keras_memgeom.utils.checks import check_number
from keras_memgeom.utils.checks import check_positive_int


def quadratic_penalty(value, anchor, fisher, scale, offset=0.0):
    """`scale * (sum(fisher * (value - anchor)^2) + offset)`.

    The gradient `2 * scale * fisher * (value - anchor)` reuses the forward
    product (see `held_quadratic`), so the backward pass reads the memory
    once more at most.

    Args:
        value: the variable's current value.
        anchor: the remembered value.
        fisher: the per-example diagonal Fisher (the ellipsoid's metric).
        scale: `strength / 2 * n / num_train_examples`.
        offset: a constant added to the sum (zero gradient).

    Returns:
        A scalar tensor.
    """
    value = ops.convert_to_tensor(value)
    diff = ops.subtract(value, ops.cast(anchor, value.dtype))
    quadratic = held_quadratic(
        diff, ops.multiply(ops.cast(fisher, value.dtype), diff)
    )
    return ops.multiply(
        ops.add(quadratic, offset), ops.cast(scale, value.dtype)
    )


def held_quadratic(diff, metric_diff):
    """`sum(diff * metric_diff)`, with the constant gradient `2 * metric_diff`.

    For a symmetric metric `M` and `metric_diff = M diff`, the gradient of
    the quadratic form is `2 M diff`, which the forward pass has already
    computed: the value is written as `2q - q` with the product held
    constant in the first term and the whole second term, so autodiff
    returns the product instead of differentiating through it again.
    """
    held = ops.stop_gradient(metric_diff)
    linear = ops.sum(ops.multiply(diff, held))
    return ops.subtract(ops.multiply(linear, 2.0), ops.stop_gradient(linear))


def kronecker_penalty(
    kernel, bias, anchor_kernel, anchor_bias, a, g, scale, mask=None
):
    """`scale * vec(D)^T (a (x) g) vec(D)` for the weights `D = W~ - anchor`.

    `W~` is the kernel as a `(fan_in, units)` matrix with the bias as an
    extra row. The form is `sum(D * (a @ D @ g))`: two matmuls, `a (x) g` is
    never formed. Its gradient `2 a D g` reuses the forward product
    (`held_quadratic`), so the backward pass costs no matmul.

    Args:
        kernel: the kernel's current value.
        bias: the bias's current value, or `None`.
        anchor_kernel: the remembered kernel, `(fan_in, units)`.
        anchor_bias: the remembered bias, or `None`.
        a: the input factor, `(fan_in [+ 1], fan_in [+ 1])`.
        g: the output factor, `(units, units)`.
        scale: `strength / 2 * n / num_train_examples` (times the term's
            share of `n` for a sum of memories).
        mask: `None`, or a pre-pruned layer's `(fan_in, units)` mask: only
            live entries of the kernel are penalized.

    Returns:
        A scalar tensor.
    """
    kernel = ops.convert_to_tensor(kernel)
    dtype = kernel.dtype
    diff = ops.subtract(
        ops.reshape(kernel, ops.shape(anchor_kernel)),
        ops.cast(anchor_kernel, dtype),
    )
    if mask is not None:
        diff = ops.multiply(diff, ops.cast(mask, dtype))
    if bias is not None:
        bias_diff = ops.subtract(
            ops.convert_to_tensor(bias), ops.cast(anchor_bias, dtype)
        )
        diff = ops.concatenate([diff, bias_diff[None]], axis=0)
    product = ops.matmul(
        ops.matmul(ops.cast(a, dtype), diff), ops.cast(g, dtype)
    )
    return ops.multiply(held_quadratic(diff, product), ops.cast(scale, dtype))


def penalty_scale(num_examples, num_train_examples, strength):
    """The Laplace / MAP factor `strength / 2 * n / num_train_examples`.

    Raises:
        ValueError: if `num_train_examples` is not a positive whole number
            or `strength` is not a finite non-negative number.
    """
    num_train_examples = check_positive_int(
        "num_train_examples", num_train_examples
    )
    strength = check_number("strength", strength, minimum=0.0)
    return 0.5 * strength * num_examples / num_train_examples
