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

from keras_memgeom.continual import metrics
from keras_memgeom.continual.classifier import classifier
from keras_memgeom.continual.ewc import EWC
from keras_memgeom.continual.finetune import Finetune
from keras_memgeom.continual.frontal_lobe import FrontalLobe
from keras_memgeom.continual.harness import Harness
from keras_memgeom.continual.image_dataset import ImageDataset
from keras_memgeom.continual.joint import Joint
from keras_memgeom.continual.memory_strategy import MemoryStrategy
from keras_memgeom.continual.masked_logits import MaskedLogits
from keras_memgeom.continual.online import Online
from keras_memgeom.continual.online_ewc import OnlineEWC
from keras_memgeom.continual.plots import plot_results
from keras_memgeom.continual.results import (
    RESULTS_SCHEMA,
    format_table,
    load_results,
    make_document,
    save_results,
    summarize_runs,
    validate_results,
)
from keras_memgeom.continual.strategy import (
    Strategy,
    TaskContext,
    available_strategies,
    get_strategy,
    get_strategy_class,
    register_strategy,
)
from keras_memgeom.continual.task_stream import Task, TaskStream
