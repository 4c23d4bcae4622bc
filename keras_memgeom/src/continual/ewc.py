"""Elastic weight consolidation: one Fisher memory per task."""

from keras_memgeom.src.continual.memory_strategy import MemoryStrategy
from keras_memgeom.src.continual.strategy import register_strategy


@register_strategy
class EWC(MemoryStrategy):
    """Keeps one memory per past task and sums their penalties.

    Elastic weight consolidation as in Kirkpatrick et al., 2017, "Overcoming
    catastrophic forgetting in neural networks": every task adds a penalty
    anchored at the weights found after it. Memory use grows with the
    number of tasks.

    Args:
        strength: penalty strength, as for `MemoryStrategy`.
        estimator: Fisher estimator, as for `MemoryStrategy`.
        max_examples: examples per memory, as for `MemoryStrategy`.
        structure: `"diagonal"` or `"kfac"`; with `"kfac"`, one Kronecker
            penalty per task and layer, summed exactly.
        rank: eigenvectors kept per Kronecker factor, as for
            `MemoryStrategy`.
        normalization_statistics: `"freeze"` or `"update"`, as for
            `MemoryStrategy`.
        fisher_examples: deprecated alias of `max_examples`.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    run = harness.run(keras_memgeom.continual.EWC(strength=100))
    print(run["accuracy_matrix"])  # row t: accuracy on every task after task t
    ```
    """

    name = "ewc"

    def consolidate(self, memories, memory):
        return memories + [memory]
