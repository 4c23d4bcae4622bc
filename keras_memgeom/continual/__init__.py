"""Continual learning: task streams, methods, the harness, metrics, plots.

Example:

```python
from keras_memgeom import continual

stream = continual.TaskStream.make("permuted", "digits", num_tasks=5)
harness = continual.Harness(stream)
document = harness.compare(
    [continual.Finetune(), continual.Online(strength=100), continual.Joint()]
)
print(continual.format_table(document))
```
"""

from keras_memgeom.src.continual import metrics
from keras_memgeom.src.continual.classifier import classifier
from keras_memgeom.src.continual.ewc import EWC
from keras_memgeom.src.continual.finetune import Finetune
from keras_memgeom.src.continual.harness import Harness
from keras_memgeom.src.continual.image_dataset import ImageDataset
from keras_memgeom.src.continual.image_dataset import StreamedImageDataset
from keras_memgeom.src.continual.joint import Joint
from keras_memgeom.src.continual.masked_logits import MaskedLogits
from keras_memgeom.src.continual.memory_strategy import MemoryStrategy
from keras_memgeom.src.continual.online import Online
from keras_memgeom.src.continual.online_ewc import OnlineEWC
from keras_memgeom.src.continual.plots import plot_results
from keras_memgeom.src.continual.results import RESULTS_SCHEMA
from keras_memgeom.src.continual.results import format_table
from keras_memgeom.src.continual.results import load_results
from keras_memgeom.src.continual.results import make_document
from keras_memgeom.src.continual.results import save_results
from keras_memgeom.src.continual.results import summarize_runs
from keras_memgeom.src.continual.results import validate_results
from keras_memgeom.src.continual.strategy import Strategy
from keras_memgeom.src.continual.strategy import TaskContext
from keras_memgeom.src.continual.strategy import available_strategies
from keras_memgeom.src.continual.strategy import get_strategy
from keras_memgeom.src.continual.strategy import get_strategy_class
from keras_memgeom.src.continual.strategy import register_strategy
from keras_memgeom.src.continual.task_stream import StreamedTask
from keras_memgeom.src.continual.task_stream import Task
from keras_memgeom.src.continual.task_stream import TaskStream
from keras_memgeom.src.frontal_lobe.frontal_lobe_strategy import (
    FrontalLobeStrategy,
)

__all__ = [
    "EWC",
    "Finetune",
    "FrontalLobeStrategy",
    "Harness",
    "ImageDataset",
    "Joint",
    "MaskedLogits",
    "MemoryStrategy",
    "Online",
    "OnlineEWC",
    "RESULTS_SCHEMA",
    "Strategy",
    "StreamedImageDataset",
    "StreamedTask",
    "Task",
    "TaskContext",
    "TaskStream",
    "available_strategies",
    "classifier",
    "format_table",
    "get_strategy",
    "get_strategy_class",
    "load_results",
    "make_document",
    "metrics",
    "plot_results",
    "register_strategy",
    "save_results",
    "summarize_runs",
    "validate_results",
]
