"""keras_memgeom: memory is geometry, for Keras 3.

What a model learned is kept as a memory (the trained weights and their
Fisher information). The package turns memories into Keras regularizers,
merges them in closed form, breaks permutation symmetry with fixed masks,
and consolidates a frontal lobe of working space into long-term memory.
"""

from keras_memgeom.src.utils.keras_backend import configure_backend

# Before anything imports Keras, which would fall back to TensorFlow.
configure_backend()

from keras_memgeom import callbacks  # noqa: E402
from keras_memgeom import continual  # noqa: E402
from keras_memgeom import frontal_lobe  # noqa: E402
from keras_memgeom import layers  # noqa: E402
from keras_memgeom import merging  # noqa: E402
from keras_memgeom import pruning  # noqa: E402
from keras_memgeom import symmetry  # noqa: E402
from keras_memgeom.memory import FisherMemory  # noqa: E402
from keras_memgeom.memory import FisherRegularizer  # noqa: E402
from keras_memgeom.memory import KroneckerBiasRegularizer  # noqa: E402
from keras_memgeom.memory import KroneckerRegularizer  # noqa: E402
from keras_memgeom.memory import LoraRegularizer  # noqa: E402
from keras_memgeom.memory import attach  # noqa: E402
from keras_memgeom.memory import detach  # noqa: E402
from keras_memgeom.memory import merge  # noqa: E402
from keras_memgeom.merging import merge_models  # noqa: E402
from keras_memgeom.src.frontal_lobe.frontal_lobe import FrontalLobe  # noqa: E402
from keras_memgeom.src.pruning.pre_prune import pre_prune  # noqa: E402
from keras_memgeom.src.training.model import Model  # noqa: E402
from keras_memgeom.src.training.sequential import Sequential  # noqa: E402
from keras_memgeom.version import __version__  # noqa: E402

__all__ = [
    "FisherMemory",
    "FisherRegularizer",
    "FrontalLobe",
    "KroneckerBiasRegularizer",
    "KroneckerRegularizer",
    "LoraRegularizer",
    "Model",
    "Sequential",
    "__version__",
    "attach",
    "callbacks",
    "continual",
    "detach",
    "frontal_lobe",
    "layers",
    "merge",
    "merge_models",
    "merging",
    "pre_prune",
    "pruning",
    "symmetry",
]
