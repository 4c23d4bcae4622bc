"""Keras layers: pre-pruned Dense / Conv2D and orthogonal-polynomial units."""

from keras_memgeom.src.layers.ortho_polynomial import OrthoPolynomial
from keras_memgeom.src.layers.polynomial_basis import polynomial_basis
from keras_memgeom.src.layers.polynomial_dense import PolynomialDense
from keras_memgeom.src.layers.pre_pruned_conv2d import PrePrunedConv2D
from keras_memgeom.src.layers.pre_pruned_dense import PrePrunedDense

__all__ = [
    "OrthoPolynomial",
    "PolynomialDense",
    "PrePrunedConv2D",
    "PrePrunedDense",
    "polynomial_basis",
]
