"""Online EWC: one running importance, anchored at the latest weights."""

from keras_memgeom.src.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.src.continual.memory_strategy import MemoryStrategy
from keras_memgeom.src.continual.strategy import register_strategy
from keras_memgeom.src.memory import normalization_statistics as statistics
from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.utils.checks import check_positive


@register_strategy
class OnlineEWC(MemoryStrategy):
    """Online EWC: one importance, decayed by `gamma`, at the newest weights.

    The "Progress & Compress" form of EWC: after task `t` the importance is

        F*_t = gamma * F*_{t-1} + F_t

    (`F_t` the per-example mean Fisher of task `t`) and the anchor is the
    latest weights `theta*_t`; one penalty,
    `strength/2 * (n_t/N) * sum F*_t (theta - theta*_t)^2`, with `n_t` the
    examples of the latest task and `N` those of the new one. Unlike
    `Online` (`merge`), the anchor is not a precision-weighted mean of the
    past anchors but simply the newest weights.

    Args:
        strength: penalty strength, as for `MemoryStrategy`.
        estimator: Fisher estimator, as for `MemoryStrategy`.
        max_examples: examples per memory, as for `MemoryStrategy`.
        gamma: factor on the older importance, in `(0, 1]`; 1 keeps all
            of it.
        normalization_statistics: `"freeze"` or `"update"`, as for
            `MemoryStrategy`.
        fisher_examples: deprecated alias of `max_examples`.

    Raises:
        ValueError: for a `gamma` outside `(0, 1]`, or as `MemoryStrategy`.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    run = harness.run(keras_memgeom.continual.OnlineEWC(gamma=0.9))
    print(run["accuracy_matrix"])  # row t: accuracy on every task after task t
    ```
    """

    name = "online-ewc"

    def __init__(
        self,
        *,
        strength=DEFAULT_STRENGTH,
        estimator="exact",
        max_examples=None,
        gamma=1.0,
        normalization_statistics=statistics.DEFAULT_POLICY,
        fisher_examples=None,
    ):
        super().__init__(
            strength=strength,
            estimator=estimator,
            max_examples=max_examples,
            normalization_statistics=normalization_statistics,
            fisher_examples=fisher_examples,
        )
        self.gamma = check_positive("gamma", gamma, maximum=1.0)

    def consolidate(self, memories, memory):
        if not memories:
            return [memory]
        previous = memories[0].fisher
        importance = {
            path: self.gamma * previous[path] + fisher
            for path, fisher in memory.fisher.items()
        }
        return [
            FisherMemory(
                memory.anchor,
                importance,
                memory.num_examples,
                estimator=memory.estimator,
            )
        ]

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}
