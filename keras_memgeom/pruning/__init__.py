"""Pre-pruning: fixed distinct-column masks that break permutation symmetry."""

# distinct_column_mask first: keras_memgeom.layers needs it while the rest
# of this package imports keras_memgeom.layers.
from keras_memgeom.src.pruning.distinct_column_mask import distinct_column_mask
from keras_memgeom.src.pruning.fold_mask import fold_mask
from keras_memgeom.src.pruning.pre_prune import pre_prune

__all__ = [
    "distinct_column_mask",
    "fold_mask",
    "pre_prune",
]
