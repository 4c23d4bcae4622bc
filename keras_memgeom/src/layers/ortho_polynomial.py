"""Activation made of learned orthogonal-polynomial combinations."""

import keras
from keras import ops

from keras_memgeom.src.layers.polynomial_basis import identity_coefficients
from keras_memgeom.src.layers.polynomial_basis import map_to_domain
from keras_memgeom.src.layers.polynomial_basis import polynomial_basis
from keras_memgeom.src.layers.polynomial_basis import validate_basis


@keras.saving.register_keras_serializable(package="keras_memgeom")
class OrthoPolynomial(keras.layers.Layer):
    """Per-unit activation `f_j(x) = sum_k c_jk phi_k(m(x))`.

    `phi_k` are orthogonal polynomials evaluated by their three-term
    recurrence (Glukhov 2024, eq. 44) and `m` maps inputs into the basis's
    domain (see `map_to_domain`: `tanh` for chebyshev / legendre,
    `softplus` for laguerre, identity for hermite). Every unit (last input
    axis) has its own coefficients `c_j`, so the activation is learned.
    By default the coefficients start at `p(t) = t`, i.e. the activation
    starts as `m` itself (`tanh` for chebyshev).

    Args:
        degree: int >= 1, the highest polynomial degree.
        basis: `"chebyshev"`, `"legendre"`, `"hermite"` or `"laguerre"`.
        coefficients_initializer: initializer of the `(units, degree + 1)`
            coefficients, or `None` for the identity start above.
        **kwargs: base `keras.layers.Layer` arguments.

    Raises:
        ValueError: for an unknown basis or a degree below 1.

    Input shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Output shape:
        The same shape as the input.

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16),
            keras_memgeom.layers.OrthoPolynomial(degree=4, basis="chebyshev"),
            keras.layers.Dense(1),
        ]
    )
    print(model(np.zeros((2, 8))).shape)  # (2, 1)
    ```
    """

    def __init__(
        self, degree, basis="chebyshev", coefficients_initializer=None, **kwargs
    ):
        super().__init__(**kwargs)
        validate_basis(basis, degree)
        if degree < 1:
            raise ValueError(f"`degree` must be at least 1; got {degree}.")
        self.degree = degree
        self.basis = basis
        self.coefficients_initializer = (
            None
            if coefficients_initializer is None
            else keras.initializers.get(coefficients_initializer)
        )

    def build(self, input_shape):
        units = input_shape[-1]
        initializer = self.coefficients_initializer
        if initializer is None:
            start = identity_coefficients(self.basis, self.degree)
            initializer = lambda shape, dtype=None: ops.cast(  # noqa: E731
                ops.tile(start[None, :], (shape[0], 1)), dtype
            )
        self.coefficients = self.add_weight(
            name="coefficients",
            shape=(units, self.degree + 1),
            initializer=initializer,
        )

    def call(self, inputs):
        phi = polynomial_basis(
            map_to_domain(inputs, self.basis), self.degree, self.basis
        )
        return ops.sum(phi * self.coefficients, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        initializer = self.coefficients_initializer
        config.update(
            degree=self.degree,
            basis=self.basis,
            coefficients_initializer=(
                None
                if initializer is None
                else keras.initializers.serialize(initializer)
            ),
        )
        return config
