"""Online consolidation: one Fisher memory, merged after each task."""

from keras_memgeom.src.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.src.continual.memory_strategy import MemoryStrategy
from keras_memgeom.src.continual.strategy import register_strategy
from keras_memgeom.src.memory import normalization_statistics as statistics
from keras_memgeom.src.memory.fisher_memory import DEFAULT_RANK
from keras_memgeom.src.memory.merge import merge
from keras_memgeom.src.utils.checks import check_positive


@register_strategy
class Online(MemoryStrategy):
    """Merges each new memory into a single one: the package's default.

    After every task the new memory is merged in closed form with the kept
    one (`keras_memgeom.merge`), the older precisions scaled by `decay`;
    one penalty, anchored at the merged mean, protects all past tasks at
    the cost of one memory.

    Args:
        strength: penalty strength, as for `MemoryStrategy`.
        estimator: Fisher estimator, as for `MemoryStrategy`.
        max_examples: examples per memory, as for `MemoryStrategy`.
        structure: `"diagonal"` or `"kfac"`; with `"kfac"`, each merge
            keeps one Kronecker block per layer, truncated again to `rank`
            (see `keras_memgeom.merge`).
        rank: eigenvectors kept per Kronecker factor, as for
            `MemoryStrategy`.
        decay: factor on the older precisions at each merge, in `(0, 1]`;
            1 keeps all of the past, smaller values forget it gradually.
        normalization_statistics: `"freeze"` or `"update"`, as for
            `MemoryStrategy`.
        fisher_examples: deprecated alias of `max_examples`.

    Raises:
        ValueError: for a `decay` outside `(0, 1]`, or as `MemoryStrategy`.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    run = harness.run(keras_memgeom.continual.Online(decay=0.9))
    print(run["accuracy_matrix"])  # row t: accuracy on every task after task t
    ```
    """

    name = "online"

    def __init__(
        self,
        *,
        strength=DEFAULT_STRENGTH,
        estimator="exact",
        max_examples=None,
        structure="diagonal",
        rank=DEFAULT_RANK,
        decay=1.0,
        normalization_statistics=statistics.DEFAULT_POLICY,
        fisher_examples=None,
    ):
        super().__init__(
            strength=strength,
            estimator=estimator,
            max_examples=max_examples,
            structure=structure,
            rank=rank,
            normalization_statistics=normalization_statistics,
            fisher_examples=fisher_examples,
        )
        self.decay = check_positive("decay", decay, maximum=1.0)

    def consolidate(self, memories, memory):
        if not memories:
            return [memory]
        return [merge(memories + [memory], decay=self.decay)]

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}
