"""Orthogonal polynomial bases by their three-term recurrences."""

import numpy as np
from keras import ops

# Each basis's recurrence phi_{k+1} = (a_k x + b_k) phi_k - c_k phi_{k-1},
# with phi_0 = 1 and phi_1 = a_0 x + b_0 (Glukhov 2024, eq. 44), as the
# coefficients (a_k, b_k, c_k) of step k. The polynomials are the ones of
# `numpy.polynomial` (Hermite is the physicists' H_k).
_RECURRENCES = {
    "chebyshev": lambda k: (1.0 if k == 0 else 2.0, 0.0, 1.0),
    "legendre": lambda k: ((2 * k + 1) / (k + 1), 0.0, k / (k + 1)),
    "hermite": lambda k: (2.0, 0.0, 2.0 * k),
    "laguerre": lambda k: (-1 / (k + 1), (2 * k + 1) / (k + 1), k / (k + 1)),
}

# Power series -> basis coefficients.
_FROM_POWER_SERIES = {
    "chebyshev": np.polynomial.chebyshev.poly2cheb,
    "legendre": np.polynomial.legendre.poly2leg,
    "hermite": np.polynomial.hermite.poly2herm,
    "laguerre": np.polynomial.laguerre.poly2lag,
}

BASES = tuple(_RECURRENCES)


def validate_basis(basis, degree):
    """Raise a clear error for an unknown basis or a negative degree."""
    if basis not in _RECURRENCES:
        raise ValueError(
            f"Unknown polynomial basis {basis!r}; expected one of {BASES}."
        )
    if int(degree) != degree or degree < 0:
        raise ValueError(f"`degree` must be an integer >= 0; got {degree}.")


def map_to_domain(x, basis):
    """Map real inputs into the domain where the basis is orthogonal.

    Chebyshev and Legendre live on [-1, 1]: `tanh` squashes into it without
    clipping, so gradients never vanish abruptly. Laguerre lives on
    [0, inf): `softplus` is a smooth positive map that is the identity for
    large inputs. Hermite is orthogonal on the whole real line: identity
    (normalize its inputs, e.g. with a LayerNormalization, to keep the
    polynomials in range).

    Args:
        x: tensor.
        basis: one of `BASES`.

    Returns:
        A tensor of the same shape inside the basis's domain.
    """
    if basis in ("chebyshev", "legendre"):
        return ops.tanh(x)
    if basis == "laguerre":
        return ops.softplus(x)
    return x


def polynomial_basis(x, degree, basis):
    """Evaluate `phi_0(x), ..., phi_degree(x)` by the three-term recurrence.

    O(degree) multiply-adds per input, one pass, with no powers of `x`:
    stable on the basis's domain. No domain mapping is applied here (see
    `map_to_domain`).

    Args:
        x: tensor of any shape.
        degree: int >= 0, the highest degree.
        basis: `"chebyshev"`, `"legendre"`, `"hermite"` or `"laguerre"`.

    Returns:
        A tensor of shape `x.shape + (degree + 1,)`.

    Raises:
        ValueError: for an unknown basis or a negative degree.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    phi = keras_memgeom.layers.polynomial_basis(np.array([0.5]), 2, "chebyshev")
    print(phi)  # [[1., 0.5, -0.5]]: 1, x, 2 x^2 - 1
    ```
    """
    validate_basis(basis, degree)
    recurrence = _RECURRENCES[basis]
    x = ops.convert_to_tensor(x)
    previous, current = None, ops.ones_like(x)
    terms = [current]
    for k in range(degree):
        a, b, c = recurrence(k)
        following = (a * x + b) * current
        if previous is not None:
            following = following - c * previous
        previous, current = current, following
        terms.append(current)
    return ops.stack(terms, axis=-1)


def identity_coefficients(basis, degree):
    """Coefficients over the basis of the polynomial `p(t) = t`.

    Polynomial activations start from it, i.e. as the domain map itself
    (`tanh` for chebyshev / legendre, `softplus` for laguerre, identity for
    hermite).

    Args:
        basis: one of `BASES`.
        degree: int >= 1.

    Returns:
        A float32 NumPy array of length `degree + 1`.
    """
    coefficients = np.zeros(degree + 1, dtype="float32")
    coefficients[:2] = _FROM_POWER_SERIES[basis]([0.0, 1.0])
    return coefficients
