"""Whole trained models combined in closed form, and the loss between them."""

from keras_memgeom.src.merging.layer_inputs import layer_inputs
from keras_memgeom.src.merging.loss_barrier import LossBarrier
from keras_memgeom.src.merging.loss_barrier import interpolate
from keras_memgeom.src.merging.loss_barrier import loss_barrier
from keras_memgeom.src.merging.merge_models import merge_models
from keras_memgeom.src.merging.regmean import regmean
from keras_memgeom.src.merging.repair import repair

__all__ = [
    "LossBarrier",
    "interpolate",
    "layer_inputs",
    "loss_barrier",
    "merge_models",
    "regmean",
    "repair",
]
