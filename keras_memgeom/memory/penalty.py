"""The quadratic form that every memory penalty in the package evaluates."""

from keras import ops


def quadratic_penalty(value, anchor, fisher, scale, offset=0.0):
    """`scale * sum(fisher * (value - anchor)^2) + offset`.

    Args:
        value: the variable's current value.
        anchor: the remembered value.
        fisher: the per-example diagonal Fisher (the ellipsoid's metric).
        scale: `strength / 2 * n / num_train_examples`.
        offset: a constant added to the value (zero gradient).

    Returns:
        A scalar tensor.
    """
    value = ops.convert_to_tensor(value)
    diff = ops.subtract(value, ops.cast(anchor, value.dtype))
    weighted = ops.multiply(ops.cast(fisher, value.dtype), ops.square(diff))
    return ops.add(ops.multiply(ops.sum(weighted), scale), offset)


def penalty_scale(num_examples, num_train_examples, strength):
    """The Laplace / MAP factor `strength / 2 * n / num_train_examples`.

    Raises:
        ValueError: if `num_train_examples` is not a positive integer or
            `strength` is negative.
    """
    if num_train_examples is None or int(num_train_examples) <= 0:
        raise ValueError(
            "`num_train_examples` (the number of examples the training loss "
            f"averages over) must be a positive integer; got {num_train_examples!r}."
        )
    if strength < 0:
        raise ValueError(f"`strength` must be non-negative; got {strength}.")
    return 0.5 * float(strength) * num_examples / int(num_train_examples)
