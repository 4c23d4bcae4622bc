"""The quadratic form that every memory penalty in the package evaluates."""

from keras import ops

from keras_memgeom.utils.checks import check_number, check_positive_int


def quadratic_penalty(value, anchor, fisher, scale, offset=0.0):
    """`scale * (sum(fisher * (value - anchor)^2) + offset)`.

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
    weighted = ops.sum(ops.multiply(ops.cast(fisher, value.dtype), ops.square(diff)))
    return ops.multiply(ops.add(weighted, offset), ops.cast(scale, value.dtype))


def penalty_scale(num_examples, num_train_examples, strength):
    """The Laplace / MAP factor `strength / 2 * n / num_train_examples`.

    Raises:
        ValueError: if `num_train_examples` is not a positive whole number
            or `strength` is not a finite non-negative number.
    """
    num_train_examples = check_positive_int("num_train_examples", num_train_examples)
    strength = check_number("strength", strength, minimum=0.0)
    return 0.5 * strength * num_examples / num_train_examples
