"""Pre-pruning: fixed distinct-column masks that break permutation symmetry."""

from keras_memgeom.src.layers.distinct_column_mask import distinct_column_mask
from keras_memgeom.src.pruning.fold_mask import fold_mask
from keras_memgeom.src.pruning.pre_prune import pre_prune

__all__ = [
    "distinct_column_mask",
    "fold_mask",
    "pre_prune",
]
