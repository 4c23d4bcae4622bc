"""Permutation symmetry: count, reorder, compare and align hidden units."""

from keras_memgeom.src.symmetry.align import align
from keras_memgeom.src.symmetry.count_equivalent_optima import (
    count_equivalent_optima,
)
from keras_memgeom.src.symmetry.distance import Distance
from keras_memgeom.src.symmetry.distance import distance
from keras_memgeom.src.symmetry.hidden_units import HiddenUnits
from keras_memgeom.src.symmetry.hidden_units import Reader
from keras_memgeom.src.symmetry.hidden_units import hidden_units
from keras_memgeom.src.symmetry.hidden_units import units_of
from keras_memgeom.src.symmetry.hidden_units import weight_layers
from keras_memgeom.src.symmetry.reorder import reorder

__all__ = [
    "Distance",
    "HiddenUnits",
    "Reader",
    "align",
    "count_equivalent_optima",
    "distance",
    "hidden_units",
    "reorder",
    "units_of",
    "weight_layers",
]
