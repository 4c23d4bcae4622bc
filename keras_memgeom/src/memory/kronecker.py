"""The algebra of Kronecker-factored precisions `A (x) G`, on host arrays.

A Dense or Conv2D layer's weights `W~` (the kernel, flattened to
`(fan_in, units)`, with the bias appended as a last row) get the precision
`n * A (x) G` of K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for
convolutions): `A` the second moment of the layer's inputs (with a 1
appended for the bias), `G` that of the gradients at its outputs. With the
row-major `vec`, `vec(D)^T (A (x) G) vec(D) = sum(D * (A @ D @ G))`, which is
how every function here evaluates it: `A (x) G` is never formed.

A factor is a dense symmetric matrix; an `EigenFactor`, its top
eigenvectors and a flat remainder (`truncate_factor`), which stores and
applies in `O(r * size)` instead of `O(size^2)`; or a diagonal matrix held
as its diagonal, a 1-D array: the input factor of an `Embedding`, whose
one-hot inputs make `A` the diagonal of token frequencies, exactly, in
`O(vocabulary)` where a matrix would need `O(vocabulary^2)`.

A DepthwiseConv2D has no Kronecker structure across its channels: each
channel is a small convolution of its own, with its own patches. Its block
is *grouped*: both factors are stacks `(channels, size, size)`, one K-FAC
block per channel, and the precision of the kernel matrix `(kh * kw [+ 1],
channels * multiplier)` is block-diagonal over channels, `A_c (x) G_c` on
channel `c`'s columns. So are a SeparableConv2D's depthwise kernel and a
Conv2D with `groups > 1`, a block per group of channels (the kernel matrix
`(kh * kw * channels / groups [+ 1], filters)`, its columns group by
group). A grouped factor is never truncated (its blocks are as wide as a
group's patch and its outputs).
"""

import collections

import numpy as np
import scipy.linalg

from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.checks import check_positive_int

KroneckerBlock = collections.namedtuple(
    "KroneckerBlock", ["bias", "a", "g", "mask", "axes"], defaults=[None, None]
)
KroneckerBlock.__doc__ = """The Kronecker factors of a layer's kernel and bias.

Args:
    bias: the path of the layer's bias, or `None` without one.
    a: `(fan_in [+ 1], fan_in [+ 1])`, the second moment of the layer's
        inputs (averaged over the input patches of a convolution or the
        positions of a sequence, the masked and zero-weight ones left out),
        with a 1 appended where there is a bias; or that matrix as an
        `EigenFactor`; or, for an `Embedding`, `(vocabulary,)`, the
        diagonal of that moment of its one-hot inputs (the tokens'
        frequencies); or, grouped (a DepthwiseConv2D, a SeparableConv2D's
        depthwise kernel, a Conv2D with `groups > 1`), `(groups, rows,
        rows)`, one per channel or group of channels.
    g: `(units, units)`, the second moment of the gradients at the
        layer's outputs (summed over positions), per unit the loss averages
        over (an example, or a token of per-token outputs); or that matrix
        as an `EigenFactor`; or, grouped, `(groups, units / groups, units /
        groups)`.
    mask: `None`, or the `(fan_in, units)` connectivity mask of a pre-pruned
        layer: masked entries carry no information, so the precision acts on
        `mask * (W - anchor)`.
    axes: `None`, or the permutation of the kernel's axes that puts its
        input axes first: `transpose(kernel, axes)` is what reshapes into
        the `(fan_in, units)` matrix (`kernel_matrix`). An EinsumDense
        kernel stored heads first, `(heads, hidden, head_dim)` for
        `btd,ndh->btnh` (Gemma's query, key and value), has `(1, 0, 2)`.

Example:

```python
import keras
import numpy as np

import keras_memgeom

x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
model.compile(
    "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
)
memory = keras_memgeom.FisherMemory.estimate(
    model, (x, np.arange(32) % 3), structure="kfac"
)
block = memory.kronecker[model.layers[0].kernel.path]
print(block.a.shape, block.g.shape)  # (5, 5) (3, 3): a bias row in `a`
```
"""


EigenFactor = collections.namedtuple(
    "EigenFactor", ["vectors", "values", "remainder"]
)
EigenFactor.__doc__ = """A Kronecker factor as top eigenvectors and a remainder.

It stands for the matrix `V diag(values) V^T + remainder (I - V V^T)`:
exact on the span of the orthonormal columns `V` (the eigenvectors of the
largest eigenvalues) and isotropic on the rest, where it takes the mean of
the eigenvalues it drops. With `values >= 0` and `remainder >= 0` it is
positive semi-definite whatever is dropped, its trace is the full
factor's, and it needs `r * (size + 1) + 1` numbers instead of `size^2`.
`truncate_factor` makes one.

Args:
    vectors: `(size, r)`, orthonormal columns.
    values: `(r,)`, their eigenvalues, non-negative, largest first.
    remainder: a non-negative float, the eigenvalue of the other
        directions.

Example:

```python
import numpy as np

from keras_memgeom.src.memory.kronecker import dense_factor
from keras_memgeom.src.memory.kronecker import truncate_factor

factor = truncate_factor(np.diag([4.0, 2.0, 1.0, 1.0]), rank=1)
print(factor.values, factor.remainder)  # [4.] 1.333...
print(np.diag(dense_factor(factor)))  # [4. 1.333 1.333 1.333]
```
"""


def check_rank(rank, retained_trace):
    """Checks the truncation arguments of `truncate_factor`.

    Raises:
        ValueError: naming `rank` if it is not `None` or a positive whole
            number, or `retained_trace` if it is not `None` or in `(0, 1]`.
    """
    if rank is not None:
        rank = check_positive_int("rank", rank)
    if retained_trace is not None:
        retained_trace = check_positive(
            "retained_trace", retained_trace, maximum=1.0
        )
    return rank, retained_trace


def truncate_factor(matrix, rank=None, retained_trace=None):
    """A symmetric factor as an `EigenFactor`, or itself when nothing drops.

    Keeps the eigenvectors of the `rank` largest eigenvalues, or of as few
    as reach `retained_trace` of the trace (the smaller of the two when both
    are given); the rest become one isotropic remainder, their mean
    eigenvalue, so the trace is kept. Kept eigenvalues and the remainder are
    clipped at zero (a PSD sum in float32 can show tiny negative ones), so
    the result is positive semi-definite whatever the input. Only the kept
    eigenvectors are computed. When every eigenvector is kept the dense
    matrix is returned unchanged: a full-rank factor is exactly what it was.
    A diagonal factor is returned unchanged too: it is already `O(size)`;
    so is a grouped one, whose blocks are small.

    Args:
        matrix: `(size, size)`, symmetric, or a diagonal factor `(size,)`.
        rank: the most eigenvectors to keep, or `None` for no bound.
        retained_trace: a share of the trace in `(0, 1]`, or `None`.

    Returns:
        An `EigenFactor`, or `matrix`.

    Raises:
        ValueError: if `rank` or `retained_trace` is invalid.
    """
    rank, retained_trace = check_rank(rank, retained_trace)
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        return matrix  # a diagonal, or small grouped blocks
    size = matrix.shape[0]
    keep = size if rank is None else min(rank, size)
    if retained_trace is None and keep >= size:
        return matrix
    matrix64 = matrix.astype("float64")
    if retained_trace is not None:
        eigenvalues = np.maximum(np.linalg.eigvalsh(matrix64)[::-1], 0.0)
        total = eigenvalues.sum()
        reached = np.cumsum(eigenvalues) >= retained_trace * total * (1 - 1e-12)
        keep = min(keep, int(np.argmax(reached)) + 1 if total > 0 else 1)
    if keep >= size:
        return matrix
    # Only the kept eigenvectors are computed, O(keep * size^2); the
    # dropped eigenvalues' mean follows from the trace.
    values, vectors = scipy.linalg.eigh(
        matrix64, subset_by_index=[size - keep, size - 1]
    )
    values = np.maximum(values[::-1], 0.0)
    remainder = (np.trace(matrix64) - values.sum()) / (size - keep)
    dtype = matrix.dtype
    return EigenFactor(
        vectors[:, ::-1].astype(dtype),
        values.astype(dtype),
        max(float(remainder), 0.0),
    )


def checked_eigen_factor(path, name, factor, size):
    """An `EigenFactor` as read-only arrays, its shapes and signs checked.

    Raises:
        ValueError: naming the factor `name` of `path` if its vectors are
            not `(size, r)` with `r < size` orthonormal columns, its values
            not `r` finite non-negative numbers, or its remainder not a
            finite non-negative number.
    """
    # Float64 on the host, as dense factors are.
    vectors = np.array(factor.vectors, dtype="float64")
    values = np.array(factor.values, dtype="float64")
    remainder = float(factor.remainder)
    if (
        vectors.ndim != 2
        or vectors.shape[0] != size
        or not (0 < vectors.shape[1] < size)
    ):
        raise ValueError(
            f"The truncated Kronecker factor {name} of {path} must have "
            f"eigenvectors of shape ({size}, r), 0 < r < {size}; got "
            f"{vectors.shape}."
        )
    if values.shape != (vectors.shape[1],):
        raise ValueError(
            f"The truncated Kronecker factor {name} of {path} has "
            f"{vectors.shape[1]} eigenvectors but eigenvalues of shape "
            f"{values.shape}."
        )
    for what, array in (("eigenvectors", vectors), ("eigenvalues", values)):
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"The {what} of the Kronecker factor {name} of {path} hold "
                "NaN or infinite values."
            )
    if np.any(values < 0) or not (np.isfinite(remainder) and remainder >= 0):
        raise ValueError(
            f"The truncated Kronecker factor {name} of {path} has a negative "
            "or non-finite eigenvalue or remainder: it would not be positive "
            "semi-definite."
        )
    gram = vectors.T @ vectors
    if not np.allclose(gram, np.eye(len(gram)), atol=1e-4):
        raise ValueError(
            f"The eigenvectors of the Kronecker factor {name} of {path} are "
            "not orthonormal."
        )
    vectors.flags.writeable = False
    values.flags.writeable = False
    return EigenFactor(vectors, values, remainder)


def is_diagonal(factor):
    """Whether a factor is a diagonal matrix held as its diagonal, 1-D."""
    return not isinstance(factor, EigenFactor) and np.ndim(factor) == 1


def is_grouped(factor):
    """Whether a factor is a stack of per-channel blocks, 3-D."""
    return not isinstance(factor, EigenFactor) and np.ndim(factor) == 3


def grouped_columns(matrix, groups):
    """`(rows, groups * m)` as `(groups, rows, m)`: each channel's columns."""
    rows = matrix.shape[0]
    return np.swapaxes(np.reshape(matrix, (rows, groups, -1)), 0, 1)


def ungrouped_columns(stack):
    """The inverse of `grouped_columns`."""
    groups, rows, m = stack.shape
    return np.reshape(np.swapaxes(stack, 0, 1), (rows, groups * m))


def dense_factor(factor):
    """The `(size, size)` matrix a factor stands for (float64 if truncated)."""
    if is_diagonal(factor):
        return np.diag(np.asarray(factor))
    if not isinstance(factor, EigenFactor):
        return np.asarray(factor)
    vectors = np.asarray(factor.vectors, "float64")
    matrix = (vectors * (np.asarray(factor.values) - factor.remainder)) @ (
        vectors.T
    )
    matrix[np.diag_indices_from(matrix)] += factor.remainder
    return matrix


def untruncated(factor):
    """A factor the merges' algebra takes: an `EigenFactor` made dense.

    A diagonal factor stays diagonal: its merges keep it `O(size)`.
    """
    if isinstance(factor, EigenFactor):
        return dense_factor(factor)
    return np.asarray(factor)


def permuted_factor(factor, order):
    """An untruncated factor with its rows and columns taken in `order`."""
    factor = np.asarray(factor)
    return factor[order] if factor.ndim == 1 else factor[order][:, order]


def permuted_factors(a, g, rows, columns):
    """Untruncated `(a, g)` of a kernel matrix taken in `rows`, `columns`.

    A grouped block's columns move a channel at a time: the channels are
    permuted, and the columns within each.

    Raises:
        ValueError: if `columns` mix the columns of a grouped block's
            channels.
    """
    if not is_grouped(g):
        return permuted_factor(a, rows), permuted_factor(g, columns)
    m = np.shape(g)[-1]
    columns = np.reshape(columns, (len(g), m))
    channels = columns[:, 0] // m
    if np.any(columns // m != channels[:, None]):
        raise ValueError(
            "A permutation mixes the channels of a grouped Kronecker block."
        )
    return (
        np.stack([permuted_factor(a[c], rows) for c in channels]),
        np.stack(
            [
                permuted_factor(g[c], order)
                for c, order in zip(channels, columns % m)
            ]
        ),
    )


def factor_diagonal(factor):
    """The diagonal of a factor, in `O(r * size)` for an `EigenFactor`.

    A grouped factor's is `(groups, size)`.
    """
    if is_diagonal(factor):
        return np.asarray(factor)
    if is_grouped(factor):
        return np.diagonal(factor, axis1=1, axis2=2)
    if not isinstance(factor, EigenFactor):
        return np.diag(factor)
    vectors = np.asarray(factor.vectors, "float64")
    return factor.remainder + (vectors**2) @ (
        np.asarray(factor.values, "float64") - factor.remainder
    )


def factor_eigenvalues(factor):
    """All `size` eigenvalues of a factor, clipped at zero.

    A grouped factor's are `(groups, size)`, each block's.
    """
    if is_diagonal(factor):
        return np.maximum(np.asarray(factor, "float64"), 0.0)
    if not isinstance(factor, EigenFactor):
        return np.maximum(np.linalg.eigvalsh(factor), 0.0)
    size, kept = np.shape(factor.vectors)
    return np.concatenate(
        [
            np.asarray(factor.values, "float64"),
            np.full(size - kept, factor.remainder),
        ]
    )


def factor_size(factor):
    """The side of a factor's matrix; of a grouped output factor, `units`.

    A grouped `g` stands for the block-diagonal matrix of its blocks over
    the `groups * m` columns of the kernel matrix.
    """
    if isinstance(factor, EigenFactor):
        return np.shape(factor.vectors)[0]
    if is_grouped(factor):
        return np.shape(factor)[0] * np.shape(factor)[-1]
    return np.shape(factor)[0]


def factor_numbers(factor):
    """How many numbers a factor stores."""
    if isinstance(factor, EigenFactor):
        return int(np.size(factor.vectors) + np.size(factor.values) + 1)
    return int(np.size(factor))


def factor_rank(factor):
    """The eigenvectors a factor keeps, or `None` for a dense one."""
    if isinstance(factor, EigenFactor):
        return np.shape(factor.vectors)[1]
    return None


def truncate_block(block, rank=None, retained_trace=None):
    """A `KroneckerBlock` with both factors truncated (`truncate_factor`)."""
    return block._replace(
        a=truncate_factor(block.a, rank, retained_trace),
        g=truncate_factor(block.g, rank, retained_trace),
    )


def kernel_matrix_shape(kernel_shape, units=None):
    """`(fan_in, units)`: a kernel as the matrix its factors act on.

    The kernel's trailing axes whose sizes multiply to `units` (the side of
    its output factor `g`) are its output axes, the others its input axes:
    a Dense or convolution kernel has one output axis (the default), a
    query projection of attention, `(dim, heads, head_dim)`, two.

    Raises:
        ValueError: if no trailing axes of `kernel_shape` make `units`.
    """
    kernel_shape = tuple(int(d) for d in kernel_shape)
    if units is None:
        return int(np.prod(kernel_shape[:-1])), kernel_shape[-1]
    for split in range(len(kernel_shape) - 1, -1, -1):
        if int(np.prod(kernel_shape[split:])) == units:
            return int(np.prod(kernel_shape[:split])), int(units)
    raise ValueError(
        f"A kernel of shape {kernel_shape} has no trailing axes of "
        f"{units} entries: its output factor g does not fit it."
    )


def kernel_matrix(kernel, block):
    """A kernel as the `(fan_in, units)` matrix its block's factors act on.

    Its axes are permuted by `block.axes` first, when there are any.

    Raises:
        ValueError: if no trailing axes of the (permuted) kernel make the
            size of `block.g`.
    """
    kernel = np.asarray(kernel)
    shape = block_matrix_shape(block, kernel.shape)
    if block.axes is not None:
        kernel = np.transpose(kernel, block.axes)
    return kernel.reshape(shape)


def check_kernel_axes(path, axes, ndim):
    """A block's `axes` as a tuple, or `None` for the kernel's own order.

    Raises:
        ValueError: naming `path`, if `axes` is not a permutation of the
            kernel's `ndim` axes.
    """
    if axes is None:
        return None
    checked = tuple(int(axis) for axis in np.ravel(axes))
    if sorted(checked) != list(range(ndim)) or np.ndim(axes) != 1:
        raise ValueError(
            f"The kernel axes {axes!r} of {path} are not a permutation of "
            f"its {ndim} axes."
        )
    return None if checked == tuple(range(ndim)) else checked


def block_matrix_shape(block, kernel_shape):
    """`(fan_in, units)`, the shape of a kernel's `kernel_matrix`.

    Raises:
        ValueError: as `kernel_matrix_shape`.
    """
    if block.axes is not None:
        kernel_shape = [kernel_shape[axis] for axis in block.axes]
    return kernel_matrix_shape(kernel_shape, factor_size(block.g))


def matrix_kernel(matrix, block, kernel_shape):
    """The kernel of shape `kernel_shape` whose `kernel_matrix` is `matrix`."""
    if block.axes is None:
        return np.reshape(matrix, kernel_shape)
    permuted = [kernel_shape[axis] for axis in block.axes]
    return np.transpose(np.reshape(matrix, permuted), np.argsort(block.axes))


def block_diagonal(block, kernel_shape):
    """The diagonal of `a (x) g`: `(kernel_diagonal, bias_diagonal or None)`.

    The bias's diagonal is flat, `(units,)`.
    """
    fan_in, _ = block_matrix_shape(block, kernel_shape)
    a_diagonal, g_diagonal = factor_diagonal(block.a), factor_diagonal(block.g)
    if is_grouped(block.g):
        kernel = ungrouped_columns(
            a_diagonal[:, :fan_in, None] * g_diagonal[:, None, :]
        )
        bias = None
        if block.bias is not None:
            bias = (a_diagonal[:, fan_in, None] * g_diagonal).reshape(-1)
        return kernel.reshape(kernel_shape), bias
    kernel = np.outer(a_diagonal[:fan_in], g_diagonal)
    if block.mask is not None:
        kernel = kernel * block.mask
    kernel = matrix_kernel(kernel, block, kernel_shape)
    bias = a_diagonal[fan_in] * g_diagonal if block.bias is not None else None
    return kernel, bias


def kronecker_quadratic(a, g, delta):
    """`vec(delta)^T (a (x) g) vec(delta)`, `delta`: `(len(a), len(g))`."""
    return float(np.sum(delta * _kronecker_product(a, delta, g)))


def _left(factor, x):
    """`factor @ x` for an untruncated factor (a matrix or a diagonal)."""
    return factor[:, None] * x if np.ndim(factor) == 1 else factor @ x


def _right(x, factor):
    """`x @ factor` for an untruncated factor."""
    return x * factor if np.ndim(factor) == 1 else x @ factor


def _transpose(factor):
    return factor if np.ndim(factor) == 1 else factor.T


def _kronecker_product(a, x, g):
    """`a @ x @ g` for untruncated factors; per group for grouped ones."""
    if is_grouped(g):
        return ungrouped_columns(a @ grouped_columns(x, len(g)) @ g)
    return _right(_left(a, x), g)


def _per_group(function, terms, *columns):
    """`function` of a grouped block, one channel at a time.

    `terms` are tuples whose entries are anchors `(rows, units)`, weights
    and factors; each channel's call sees its columns of the anchors, its
    blocks of the factors and the weights as they are. `columns` are more
    `(rows, units)` arrays (or `None`), split alike. A result that is a
    matrix is put back as `(rows, units)`; a pair of factors is stacked.
    """
    groups = len(next(f for term in terms for f in term if is_grouped(f)))

    def part(value, c):
        if is_grouped(value):
            return value[c]
        if np.ndim(value) == 2:
            return grouped_columns(value, groups)[c]
        return value

    results = [
        function(
            [tuple(part(v, c) for v in term) for term in terms],
            *(None if x is None else part(x, c) for x in columns),
        )
        for c in range(groups)
    ]
    if isinstance(results[0], tuple):
        return tuple(np.stack(side) for side in zip(*results))
    return ungrouped_columns(np.stack(results))


def _alike(*factors):
    """Untruncated factors all diagonal, or all matrices if one is."""
    if all(np.ndim(f) == 1 for f in factors):
        return factors
    return tuple(np.diag(f) if np.ndim(f) == 1 else f for f in factors)


# Eigenvalues below this share of the largest count as no information: the
# factors are float32 sums, and e.g. a softmax's G is exactly singular.
_RELATIVE_TOLERANCE = 1e-6
# A factor's eigenvalues may fall this far (relative to the largest) below 0
# from float32 rounding; a more negative one is a factor that is not a
# second moment, under which the penalty goes negative.
_PSD_TOLERANCE = 1e-4


def check_kronecker_factors(owner, a, g, rows, units):
    """Checks a layer's factors; returns them read-only, dense ones float64.

    Args:
        owner: the kernel they describe, named in the errors.
        a: the input factor, `(rows, rows)`, an `EigenFactor`, or its
            diagonal `(rows,)`.
        g: the output factor, `(units, units)`, an `EigenFactor`, or its
            diagonal `(units,)`.
        rows: `fan_in`, plus 1 with a bias.
        units: the layer's output units.

    Returns:
        `(a, g)`: float64 arrays, or `EigenFactor`s checked by
        `checked_eigen_factor`.

    Raises:
        ValueError: naming `owner` and the factor, if a factor has the
            wrong shape, holds NaN or infinite values, is not symmetric, or
            is not positive semi-definite (an eigenvalue below
            `-1e-4` times the largest eigenvalue's magnitude; a diagonal
            entry below 0).
    """
    if is_grouped(a) or is_grouped(g):
        return _check_grouped_factors(owner, a, g, rows, units)
    checked = []
    for name, factor, size in (("a", a, rows), ("g", g, units)):
        if isinstance(factor, EigenFactor):
            checked.append(checked_eigen_factor(owner, name, factor, size))
            continue
        factor = np.array(factor, dtype="float64")
        if factor.shape not in ((size, size), (size,)):
            raise ValueError(
                f"The Kronecker factors of {owner} must be {(rows, rows)} and "
                f"{(units, units)} (or their diagonals, {(rows,)} and "
                f"{(units,)}); the factor {name} is {factor.shape}."
            )
        if factor.ndim == 1:
            _check_diagonal_factor(owner, name, factor)
        else:
            _check_dense_factor(owner, name, factor)
        factor.flags.writeable = False
        checked.append(factor)
    return tuple(checked)


def _check_grouped_factors(owner, a, g, rows, units):
    """`check_kronecker_factors` for a block per channel."""
    a, g = (
        np.array(f, dtype="float64") if not isinstance(f, EigenFactor) else f
        for f in (a, g)
    )
    groups = np.shape(g)[0] if is_grouped(g) else 0
    m = units // groups if groups and units % groups == 0 else 0
    if (
        not (is_grouped(a) and is_grouped(g))
        or a.shape != (groups, rows, rows)
        or g.shape != (groups, m, m)
    ):
        raise ValueError(
            f"The grouped Kronecker factors of {owner} must be (channels, "
            f"{rows}, {rows}) and (channels, m, m) with channels * m = "
            f"{units}; got a {_shape_of(a)} and g {_shape_of(g)}."
        )
    for name, factor in (("a", a), ("g", g)):
        _check_dense_factor(owner, name, factor)
        factor.flags.writeable = False
    return a, g


def _shape_of(factor):
    if isinstance(factor, EigenFactor):
        return f"truncated to rank {factor_rank(factor)}"
    return np.shape(factor)


def _check_diagonal_factor(owner, name, factor):
    if not np.all(np.isfinite(factor)):
        raise ValueError(
            f"The Kronecker factor {name} of {owner} holds NaN or infinite "
            "values."
        )
    if np.any(factor < 0):
        raise ValueError(
            f"The diagonal Kronecker factor {name} of {owner} has a negative "
            f"entry ({factor.min():.3g}): a Fisher factor is a second "
            "moment, and under this one the penalty would go negative."
        )


def _check_dense_factor(owner, name, factor):
    """Checks a dense factor `(n, n)`, or each block of a grouped one."""
    if not np.all(np.isfinite(factor)):
        raise ValueError(
            f"The Kronecker factor {name} of {owner} holds NaN or infinite "
            "values."
        )
    if not factor.size:
        return
    blocks = factor.reshape(-1, *factor.shape[-2:])

    def named(c):
        return f"{name} (channel {c})" if factor.ndim == 3 else name

    scale = np.abs(blocks).max(axis=(1, 2))[:, None, None]
    transposed = np.swapaxes(blocks, 1, 2)
    asymmetric = np.abs(blocks - transposed) > (
        1e-8 * scale + 1e-5 * np.abs(transposed)
    )
    if np.any(asymmetric):
        c = int(np.argmax(asymmetric.any(axis=(1, 2))))
        raise ValueError(
            f"The Kronecker factor {named(c)} of {owner} is not symmetric."
        )
    eigenvalues = np.linalg.eigvalsh(blocks)
    largest = np.abs(eigenvalues).max(axis=1)
    negative = eigenvalues[:, 0] < -_PSD_TOLERANCE * largest
    if np.any(negative):
        c = int(np.argmax(negative))
        raise ValueError(
            f"The Kronecker factor {named(c)} of {owner} is not positive "
            f"semi-definite: its smallest eigenvalue is "
            f"{eigenvalues[c, 0]:.3g} and its largest in magnitude "
            f"{largest[c]:.3g}. A Fisher factor is a second moment; under "
            "this one the penalty would go negative."
        )


def _joint_basis(m1, m2):
    """`T` (`p x k`) and `mu` with `T^T (m1 + m2) T = I`, `T^T m1 T = diag(mu)`.

    `T` spans the range of `m1 + m2`; outside it neither matrix holds
    information. For two diagonal factors `T` is diagonal too (1-D, zero
    outside the range).
    """
    m1, m2 = _alike(m1, m2)
    if np.ndim(m1) == 1:
        root = _whitening(m1 + m2)
        return root, np.clip(m1 * root**2, 0.0, 1.0)
    eigenvalues, vectors = np.linalg.eigh(m1 + m2)
    kept = eigenvalues > _RELATIVE_TOLERANCE * max(
        float(eigenvalues.max()), 0.0
    )
    root = vectors[:, kept] / np.sqrt(eigenvalues[kept])
    mu, rotation = np.linalg.eigh(root.T @ m1 @ root)
    return root @ rotation, np.clip(mu, 0.0, 1.0)


def merge_anchor(older, newer):
    """The minimizer of the sum of two Kronecker quadratics.

    Each argument is `(anchor, precision_weight, a, g)`, the quadratic
    `w/2 vec(W - anchor)^T (a (x) g) vec(W - anchor)`. The sum's minimizer
    solves `(w1 a1 (x) g1 + w2 a2 (x) g2) vec(W) = ...` exactly, in the basis
    that diagonalizes both pairs of factors at once (a generalized
    eigenproblem per factor). Directions that neither quadratic constrains
    keep the newer anchor.

    Returns:
        The merged anchor, shaped like the anchors.
    """
    if is_grouped(older[3]):
        return _per_group(lambda terms: merge_anchor(*terms), [older, newer])
    anchor1, w1, a1, g1 = older
    anchor2, w2, a2, g2 = newer
    # Solve for the move away from the newer anchor, so that directions no
    # memory constrains stay where the newer one put them.
    rhs = w1 * _kronecker_product(a1, anchor1 - anchor2, g1)
    t_a, mu = _joint_basis(w1 * a1, w2 * a2)
    t_g, nu = _joint_basis(g1, g2)
    # In the joint basis the operator is diagonal.
    operator = np.outer(mu, nu) + np.outer(1.0 - mu, 1.0 - nu)
    held = operator > _RELATIVE_TOLERANCE
    projected = _kronecker_product(_transpose(t_a), rhs, t_g)
    y = np.where(held, projected / np.where(held, operator, 1.0), 0.0)
    return anchor2 + _kronecker_product(t_a, y, _transpose(t_g))


def nearest_kronecker(terms):
    """The Kronecker product nearest (Frobenius norm) to a weighted sum of them.

    `sum_k w_k a_k (x) g_k` rearranged (Van Loan & Pitsianis 1993) is the
    rank-`K` matrix `sum_k w_k vec(a_k) vec(g_k)^T`; its best rank-one
    approximation is the nearest single product, and it lies in the span of
    the `a_k` and of the `g_k`, so a `K x K` singular value problem finds it.

    Diagonal factors (all of one side) stay diagonal: the inner products
    of diagonal matrices are those of their diagonals, and the nearest `a`
    is a combination of the `a_k`.

    Grouped factors give the nearest product per channel.

    Args:
        terms: a list of `(weight, a, g)`, untruncated factors.

    Returns:
        `(a, g)` with `a (x) g` the nearest product, of equal norms.
    """
    if is_grouped(terms[0][2]):
        return _per_group(nearest_kronecker, terms)
    a_side = _alike(*(a for _, a, _ in terms))
    g_side = _alike(*(g for _, _, g in terms))
    terms = [(w, a, g) for (w, _, _), a, g in zip(terms, a_side, g_side)]
    weights = np.array([w for w, _, _ in terms], dtype="float64")
    a_stack = np.stack([a.ravel() for _, a, _ in terms])
    g_stack = np.stack([g.ravel() for _, _, g in terms])
    # Orthonormal bases of the two spans from their Gram matrices.
    r_a = _gram_root(a_stack)
    r_g = _gram_root(g_stack)
    core = r_a @ np.diag(weights) @ r_g.T
    u, s, vt = np.linalg.svd(core)
    alpha = np.linalg.lstsq(r_a, u[:, 0], rcond=None)[0]
    beta = np.linalg.lstsq(r_g, vt[0], rcond=None)[0]
    # Unit-norm factors, scaled by the square root of the singular value each.
    root = np.sqrt(s[0])
    a = root * np.tensordot(alpha, np.stack([a for _, a, _ in terms]), axes=1)
    g = root * np.tensordot(beta, np.stack([g for _, _, g in terms]), axes=1)
    if np.sum(factor_diagonal(a)) < 0:  # an arbitrary common sign
        a, g = -a, -g
    return a, g


def _gram_root(stack):
    """A square `R` with `R^T R = stack @ stack.T`, even if singular."""
    gram = stack @ stack.T
    eigenvalues, vectors = np.linalg.eigh(gram)
    return (vectors * np.sqrt(np.maximum(eigenvalues, 0.0))).T


def kronecker_effective_dimension(a, g, num_examples, prior_precision):
    """`sum_ij P_ij / (P_ij + alpha)`, `P_ij = n * lambda_i(a) mu_j(g)`.

    Of a grouped block, the sum over its channels.
    """
    precision = num_examples * np.einsum(
        "...i,...j->...ij", factor_eigenvalues(a), factor_eigenvalues(g)
    )
    return float(np.sum(precision / (precision + prior_precision)))


def kronecker_sum_minimizer(terms, start, mask=None, tolerance=1e-10):
    """The minimizer of a sum of Kronecker quadratics nearest `start` (CG).

    Minimizes `sum_k w_k vec(M (W - W_k))^T (a_k (x) g_k) vec(M (W - W_k))`,
    `M` the 0/1 `mask` (all ones by default, a bias row always), with the
    row-major `vec`; the operator is applied as `M a_k (M D) g_k`, never
    formed. The move `D = W - start` is sought as `R_a Y R_g^T`, with
    `R_a^T (sum_k w_k a_k) R_a = I` and `R_g^T (sum_k g_k) R_g = I` (the
    basis `merge_anchor` uses for two terms), which preconditions the
    system. Conjugate gradients started at `Y = 0` stay in the operator's
    range: directions no term constrains keep `start`, and the result does
    not depend on the order of the terms.

    Args:
        terms: a list of `(anchor, weight, a, g)`, anchors `(rows, units)`,
            the factors untruncated.
        start: `(rows, units)`.
        mask: `None`, or `(fan_in, units)` (no bias row).
        tolerance: the residual's norm relative to the right-hand side's.

    Returns:
        The minimizer, `(rows, units)`.
    """
    if is_grouped(terms[0][3]):
        return _per_group(
            lambda terms, start, mask: kronecker_sum_minimizer(
                terms, start, mask, tolerance
            ),
            terms,
            start,
            mask,
        )
    a_side = _alike(*(a for _, _, a, _ in terms))
    g_side = _alike(*(g for _, _, _, g in terms))
    terms = [
        (anchor, w, a, g)
        for (anchor, w, _, _), a, g in zip(terms, a_side, g_side)
    ]
    full = np.ones_like(start)
    if mask is not None:
        full[: len(mask)] = mask
    r_a = _whitening(sum(w * a for _, w, a, _ in terms))
    r_g = _whitening(sum(g for _, _, _, g in terms))

    def move(y):
        return full * _kronecker_product(r_a, y, _transpose(r_g))

    def apply(y):
        d = move(y)
        total = full * sum(
            w * _kronecker_product(a, d, g) for _, w, a, g in terms
        )
        return _kronecker_product(_transpose(r_a), total, r_g)

    residual = _kronecker_product(
        _transpose(r_a),
        full
        * sum(
            w * _kronecker_product(a, full * (anchor - start), g)
            for anchor, w, a, g in terms
        ),
        r_g,
    )
    goal = tolerance * np.linalg.norm(residual)
    y, direction, norm = np.zeros_like(residual), residual, np.sum(residual**2)
    # Exact arithmetic needs one iteration per unknown; rounding, a few more.
    for _ in range(4 * residual.size):
        if np.sqrt(norm) <= goal:
            break
        image = apply(direction)
        curvature = np.sum(direction * image)
        if curvature <= 0:
            break
        alpha = norm / curvature
        y = y + alpha * direction
        residual = residual - alpha * image
        norm, previous = np.sum(residual**2), norm
        direction = residual + (norm / previous) * direction
    return start + move(y)


def _whitening(matrix):
    """`R` (`p x k`) with `R^T matrix R = I` on the range of a PSD `matrix`.

    For a diagonal `matrix`, `R` is diagonal (1-D, zero outside the range).
    """
    if np.ndim(matrix) == 1:
        kept = matrix > _RELATIVE_TOLERANCE * max(float(matrix.max()), 0.0)
        return np.where(kept, 1.0 / np.sqrt(np.where(kept, matrix, 1.0)), 0.0)
    eigenvalues, vectors = np.linalg.eigh(matrix)
    kept = eigenvalues > _RELATIVE_TOLERANCE * max(
        float(eigenvalues.max()), 0.0
    )
    return vectors[:, kept] / np.sqrt(eigenvalues[kept])
