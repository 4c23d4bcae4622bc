"""Elastic weight consolidation: one Fisher memory per task."""

from keras_memgeom.continual.memory_strategy import MemoryStrategy
from keras_memgeom.continual.strategy import register_strategy


@register_strategy
class EWC(MemoryStrategy):
    """Keeps one memory per past task and sums their penalties.

    Elastic weight consolidation as in Kirkpatrick et al., 2017, "Overcoming
    catastrophic forgetting in neural networks": every task adds a penalty
    anchored at the weights found after it. Memory use grows with the
    number of tasks.

    Args:
        strength, estimator, fisher_examples, structure: see
            `MemoryStrategy`. With `"kfac"`, one Kronecker penalty per task
            and layer, summed exactly.

    Example:

    >>> Harness(TaskStream.make("permuted", num_tasks=3)).run(EWC(strength=100))
    """

    name = "ewc"

    def consolidate(self, memories, memory):
        return memories + [memory]
