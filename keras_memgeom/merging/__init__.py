"""Whole trained models combined in closed form, and the loss between them."""

from keras_memgeom.merging.loss_barrier import LossBarrier, interpolate, loss_barrier
from keras_memgeom.merging.merge_models import merge_models
