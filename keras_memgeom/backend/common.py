"""Backend-independent pieces shared by the compiled backends (jax, tf)."""

from keras import ops


def factor_product(factor, x, left):
    """`factor @ x` (`left`) or `x @ factor`, for a matrix or a triple.

    A `(vectors, values, remainder)` triple stands for `V diag(values) V^T +
    remainder (I - V V^T)`, applied as `remainder x + V ((values -
    remainder) * (V^T x))`: two thin matmuls, no `size x size` matrix. A
    1-D factor is a diagonal matrix's diagonal: it scales rows (`left`) or
    columns.
    """
    if not isinstance(factor, tuple) and len(factor.shape) == 1:
        return ops.multiply(factor[:, None] if left else factor, x)
    if not isinstance(factor, tuple):
        return ops.matmul(factor, x) if left else ops.matmul(x, factor)
    vectors, values, remainder = factor
    excess = ops.subtract(values, remainder)
    if left:
        thin = ops.multiply(
            ops.matmul(ops.transpose(vectors), x), excess[:, None]
        )
        low_rank = ops.matmul(vectors, thin)
    else:
        thin = ops.multiply(ops.matmul(x, vectors), excess[None, :])
        low_rank = ops.matmul(thin, ops.transpose(vectors))
    return ops.add(ops.multiply(x, remainder), low_rank)


def kronecker_product(diff, a, g):
    """`a @ diff @ g` for factors as `kronecker_quadratic` takes them."""
    return factor_product(g, factor_product(a, diff, left=True), left=False)
