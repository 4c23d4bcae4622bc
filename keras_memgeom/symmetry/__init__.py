"""Permutation symmetry: count, reorder, compare and align hidden units."""

from keras_memgeom.src.symmetry.align import align
from keras_memgeom.src.symmetry.count_equivalent_optima import (
    count_equivalent_optima,
)
from keras_memgeom.src.symmetry.distance import Distance
from keras_memgeom.src.symmetry.distance import distance
from keras_memgeom.src.symmetry.reorder import reorder

__all__ = [
    "Distance",
    "align",
    "count_equivalent_optima",
    "distance",
    "reorder",
]
