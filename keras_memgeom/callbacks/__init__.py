"""Keras callbacks of keras_memgeom."""

from keras_memgeom.src.frontal_lobe.consolidate import Consolidate

__all__ = [
    "Consolidate",
]
