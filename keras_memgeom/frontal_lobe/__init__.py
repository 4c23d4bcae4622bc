"""The frontal lobe: working space kept free and consolidated into memory.

`FrontalLobe` names the working space and its information penalty
(`Model.compile(frontal_lobe=...)`), `Consolidate` runs the procedure
inside `fit`, `Model.consolidate` merges a task's memory in place, and
`FrontalLobeStrategy` is the harness's `frontal-lobe` method.
"""

from keras_memgeom.src.continual.frontal_lobe_strategy import (
    FrontalLobeStrategy,
)
from keras_memgeom.src.frontal_lobe.consolidate import Consolidate
from keras_memgeom.src.frontal_lobe.consolidation import CONSOLIDATIONS
from keras_memgeom.src.frontal_lobe.frontal_lobe import FrontalLobe

__all__ = [
    "CONSOLIDATIONS",
    "Consolidate",
    "FrontalLobe",
    "FrontalLobeStrategy",
]
