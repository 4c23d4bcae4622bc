from keras_memgeom.src.memory.attach import attach
from keras_memgeom.src.memory.attach import detach
from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.fisher_regularizer import FisherRegularizer
from keras_memgeom.src.memory.kronecker import EigenFactor
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker_regularizer import (
    KroneckerBiasRegularizer,
)
from keras_memgeom.src.memory.kronecker_regularizer import KroneckerRegularizer
from keras_memgeom.src.memory.likelihood import Bernoulli
from keras_memgeom.src.memory.likelihood import Categorical
from keras_memgeom.src.memory.likelihood import Gaussian
from keras_memgeom.src.memory.likelihood import Likelihood
from keras_memgeom.src.memory.likelihood import likelihood_from_loss
from keras_memgeom.src.memory.merge import merge

__all__ = [
    "Bernoulli",
    "Categorical",
    "EigenFactor",
    "FisherMemory",
    "FisherRegularizer",
    "Gaussian",
    "KroneckerBiasRegularizer",
    "KroneckerBlock",
    "KroneckerRegularizer",
    "Likelihood",
    "attach",
    "detach",
    "likelihood_from_loss",
    "merge",
]
