from keras_memgeom.memory.attach import attach, detach
from keras_memgeom.memory.fisher_memory import FisherMemory
from keras_memgeom.memory.fisher_regularizer import FisherRegularizer
from keras_memgeom.memory.likelihood import Likelihood, likelihood_from_loss
from keras_memgeom.memory.merge import merge
