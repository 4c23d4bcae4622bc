"""KAN-style layer on an orthogonal-polynomial basis."""

import keras
from keras import ops

from keras_memgeom.src.layers.connectivity_mask import add_connectivity_mask
from keras_memgeom.src.layers.distinct_column_mask import validate_zero_rate
from keras_memgeom.src.layers.polynomial_basis import map_to_domain
from keras_memgeom.src.layers.polynomial_basis import polynomial_basis
from keras_memgeom.src.layers.polynomial_basis import validate_basis
from keras_memgeom.src.utils.checks import check_positive_int


@keras.saving.register_keras_serializable(package="keras_memgeom")
class PolynomialDense(keras.layers.Layer):
    """KAN-style layer `y_j = sum_i sum_k c_ijk phi_k(m(x_i))`.

    Every connection `(i, j)` carries its own univariate function, a
    combination of orthogonal polynomials `phi_0..phi_degree` (Glukhov 2024,
    6.2.2 - 6.2.3) of the input mapped into the basis's domain by `m`
    (`map_to_domain`). `phi_0 = 1` makes a separate bias unnecessary. With
    `zero_rate`, a fixed distinct-column mask removes connections and with
    them the permutation symmetry of the units (Glukhov 2024, 6.2.1).

    The coefficients are stored as `kernel` of shape
    `(degree + 1, inputs, units)`, so the `(inputs, units)` mask broadcasts
    like in the other pre-pruned layers.

    Args:
        units: int, the number of outputs.
        degree: int >= 1, the highest polynomial degree.
        basis: `"chebyshev"`, `"legendre"`, `"hermite"` or `"laguerre"`.
        zero_rate: `None` (fully connected) or float in (0, 1), the fraction
            of masked (input, unit) connections.
        seed: int or `None`, the seed of the mask.
        kernel_initializer: initializer of the coefficients; the default
            scales by the fan-in `inputs * (degree + 1)`.
        kernel_regularizer: optional regularizer of the coefficients.
        **kwargs: base `keras.layers.Layer` arguments.

    Raises:
        ValueError: for `units` that is not a positive integer, an unknown
            basis, a degree below 1 or a `zero_rate` that is not a number
            in (0, 1).

    Input shape:
        N-D tensor with shape `(batch_size, ..., inputs)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Example:

    ```python
    import numpy as np

    import keras_memgeom

    layer = keras_memgeom.layers.PolynomialDense(
        4, degree=3, basis="legendre", zero_rate=0.5, seed=0
    )
    print(layer(np.zeros((2, 6))).shape)  # (2, 4)
    ```
    """

    def __init__(
        self,
        units,
        degree,
        basis="chebyshev",
        zero_rate=None,
        seed=None,
        kernel_initializer="lecun_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        units = check_positive_int("units", units)
        validate_basis(basis, degree)
        if degree < 1:
            raise ValueError(f"`degree` must be at least 1; got {degree}.")
        if zero_rate is not None:
            validate_zero_rate(zero_rate)
        self.units = units
        self.degree = degree
        self.basis = basis
        self.zero_rate = zero_rate
        self.seed = seed
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.mask = None

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.degree + 1, input_shape[-1], self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.zero_rate is not None:
            self.mask = add_connectivity_mask(
                self, self.kernel, self.zero_rate, self.seed
            )

    def call(self, inputs):
        kernel = self.kernel if self.mask is None else self.kernel * self.mask
        phi = polynomial_basis(
            map_to_domain(inputs, self.basis), self.degree, self.basis
        )
        # phi: (..., inputs, degree + 1); kernel: (degree + 1, inputs, units).
        return ops.einsum("...ik,kij->...j", phi, kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            degree=self.degree,
            basis=self.basis,
            zero_rate=self.zero_rate,
            seed=self.seed,
            kernel_initializer=keras.initializers.serialize(
                self.kernel_initializer
            ),
            kernel_regularizer=keras.regularizers.serialize(
                self.kernel_regularizer
            ),
        )
        return config
