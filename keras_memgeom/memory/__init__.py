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
from keras_memgeom.src.memory.lora_regularizer import LoraRegularizer
from keras_memgeom.src.memory.lora_regularizer import effective_weight
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
    "LoraRegularizer",
    "attach",
    "detach",
    "effective_weight",
    "likelihood_from_loss",
    "merge",
]
