"""Fine-tuning: learn each task in turn with nothing to protect the old."""

from keras_memgeom.continual.strategy import Strategy
from keras_memgeom.continual.strategy import register_strategy


@register_strategy
class Finetune(Strategy):
    """Trains on each new task alone, with no memory: the lower bound.

    Example:

    >>> Harness(TaskStream.make("permuted", num_tasks=2)).run(Finetune())
    """

    name = "finetune"
