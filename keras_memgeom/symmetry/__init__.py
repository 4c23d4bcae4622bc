"""Permutation symmetry: count, reorder, compare and align hidden units."""

from keras_memgeom.symmetry.align import align
from keras_memgeom.symmetry.count_equivalent_optima import (
    count_equivalent_optima,
)
from keras_memgeom.symmetry.distance import Distance
from keras_memgeom.symmetry.distance import distance
from keras_memgeom.symmetry.reorder import reorder

__all__ = [
    "Distance",
    "align",
    "count_equivalent_optima",
    "distance",
    "reorder",
]
