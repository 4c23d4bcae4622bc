"""Keras callbacks of keras_memgeom."""

from keras_memgeom.src.callbacks.consolidate import Consolidate

__all__ = [
    "Consolidate",
]
