"""keras_memgeom: memory is geometry, for Keras 3.

What a model learned is kept as a memory (the trained weights and their
Fisher information). The package turns memories into Keras regularizers,
merges them in closed form, breaks permutation symmetry with fixed masks,
and consolidates a frontal lobe of working space into long-term memory.
"""

from keras_memgeom import callbacks
from keras_memgeom import continual
from keras_memgeom import layers
from keras_memgeom import merging
from keras_memgeom import pruning
from keras_memgeom import symmetry
from keras_memgeom.memory import FisherMemory, FisherRegularizer, attach, detach, merge
from keras_memgeom.merging import merge_models
from keras_memgeom.pruning.pre_prune import pre_prune
from keras_memgeom.training.frontal_lobe import FrontalLobe
from keras_memgeom.training.model import Model
from keras_memgeom.version import __version__
