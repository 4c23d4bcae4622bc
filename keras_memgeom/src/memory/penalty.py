"""The quadratic form that every memory penalty in the package evaluates."""

from keras import ops

from keras_memgeom import backend
from keras_memgeom.src.memory.kronecker import EigenFactor
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.checks import check_positive_int


def quadratic_penalty(value, anchor, fisher, scale, offset=0.0):
    """`scale * (sum(fisher * (value - anchor)^2) + offset)`.

    The gradient `2 * scale * fisher * (value - anchor)` is not taken by
    autodiff through the products but given by a custom gradient
    (`keras_memgeom.backend.memory_quadratic`), which a compiled step fuses
    into the optimizer's update: about one pass over the memory per step.

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
    dtype = value.dtype
    quadratic = backend.memory_quadratic(
        value,
        ops.cast(anchor, dtype),
        ops.cast(fisher, dtype),
    )
    if offset:
        quadratic = ops.add(quadratic, offset)
    return ops.multiply(quadratic, ops.cast(scale, dtype))


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
    extra row. The form is `sum(D * (a @ D @ g))`: `a (x) g` is never
    formed. A dense factor costs a matmul, `O(fan_in^2 * units)` for `a`;
    an `EigenFactor` of rank `r` two thin ones, `O(r * fan_in * units)`
    (`apply_factor`). The gradient `2 a D g` reuses the forward product
    (`held_quadratic`), so the backward pass costs no matmul.

    Args:
        kernel: the kernel's current value.
        bias: the bias's current value, or `None`.
        anchor_kernel: the remembered kernel, `(fan_in, units)`.
        anchor_bias: the remembered bias, or `None`.
        a: the input factor, `(fan_in [+ 1], fan_in [+ 1])`, or an
            `EigenFactor` of tensors.
        g: the output factor, `(units, units)`, or an `EigenFactor`.
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
        # A bias spans the kernel's output axes: one row of `units`.
        bias_diff = ops.subtract(
            ops.reshape(ops.convert_to_tensor(bias), (1, -1)),
            ops.reshape(ops.cast(anchor_bias, dtype), (1, -1)),
        )
        diff = ops.concatenate([diff, bias_diff], axis=0)
    product = apply_factor(a, diff)
    product = apply_factor(g, product, right=True)
    return ops.multiply(held_quadratic(diff, product), ops.cast(scale, dtype))


def apply_factor(factor, x, right=False):
    """`factor @ x` (or `x @ factor`), for a dense factor or an `EigenFactor`.

    For `V diag(values) V^T + remainder (I - V V^T)` this is
    `remainder x + V ((values - remainder) * (V^T x))`: two thin matmuls.

    Args:
        factor: a symmetric matrix, or an `EigenFactor` of tensors.
        x: a matrix.
        right: multiply from the right.

    Returns:
        A tensor shaped like `x`.
    """
    dtype = x.dtype
    if not isinstance(factor, EigenFactor):
        factor = ops.cast(factor, dtype)
        return ops.matmul(x, factor) if right else ops.matmul(factor, x)
    vectors = ops.cast(factor.vectors, dtype)
    remainder = ops.cast(factor.remainder, dtype)
    excess = ops.subtract(ops.cast(factor.values, dtype), remainder)
    if right:
        low_rank = ops.matmul(
            ops.multiply(ops.matmul(x, vectors), excess[None, :]),
            ops.transpose(vectors),
        )
    else:
        low_rank = ops.matmul(
            vectors,
            ops.multiply(
                ops.matmul(ops.transpose(vectors), x), excess[:, None]
            ),
        )
    return ops.add(ops.multiply(x, remainder), low_rank)


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
