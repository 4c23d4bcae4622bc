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


def kronecker_penalty(
    kernel, bias, anchor_kernel, anchor_bias, a, g, scale, mask=None, axes=None
):
    """`scale * vec(D)^T (a (x) g) vec(D)` for the weights `D = W~ - anchor`.

    `W~` is the kernel as a `(fan_in, units)` matrix with the bias as an
    extra row. The form is `sum(D * (a @ D @ g))`: `a (x) g` is never
    formed. A dense factor costs a matmul, `O(fan_in^2 * units)` for `a`;
    an `EigenFactor` of rank `r` two thin ones, `O(r * fan_in * units)`.
    The gradient `2 a D g` is the forward's product, given by a custom
    gradient (`keras_memgeom.backend.kronecker_quadratic`), so the backward
    pass costs no matmul.

    Args:
        kernel: the kernel's current value.
        bias: the bias's current value, or `None`.
        anchor_kernel: the remembered kernel, `(fan_in, units)`.
        anchor_bias: the remembered bias, or `None`.
        a: the input factor, `(fan_in [+ 1], fan_in [+ 1])`, an
            `EigenFactor` of tensors, its diagonal, or grouped, `(groups,
            fan_in [+ 1], fan_in [+ 1])`.
        g: the output factor, `(units, units)`, an `EigenFactor`, its
            diagonal, or grouped, `(groups, units / groups, units /
            groups)`: then the precision is block-diagonal, `a[c] (x)
            g[c]` on the columns of group `c`.
        scale: `strength / 2 * n / num_train_examples` (times the term's
            share of `n` for a sum of memories).
        mask: `None`, or a pre-pruned layer's `(fan_in, units)` mask: only
            live entries of the kernel are penalized.
        axes: `None`, or the permutation of the kernel's axes that puts
            its input axes first (`KroneckerBlock.axes`).

    Returns:
        A scalar tensor.
    """
    kernel = ops.convert_to_tensor(kernel)
    if axes is not None:
        kernel = ops.transpose(kernel, axes)
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
    if _is_grouped(g):
        # One block per channel: `(groups, rows, m)`, batched products.
        rows, groups = diff.shape[0], g.shape[0]
        diff = ops.transpose(ops.reshape(diff, (rows, groups, -1)), (1, 0, 2))
    quadratic = backend.kronecker_quadratic(
        diff, _factor_tensors(a, dtype), _factor_tensors(g, dtype)
    )
    return ops.multiply(quadratic, ops.cast(scale, dtype))


def _is_grouped(factor):
    return not isinstance(factor, EigenFactor) and len(factor.shape) == 3


def _factor_tensors(factor, dtype):
    """A factor as `kronecker_quadratic` takes it: a matrix or a triple."""
    if isinstance(factor, EigenFactor):
        return tuple(ops.cast(part, dtype) for part in factor)
    return ops.cast(factor, dtype)


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
