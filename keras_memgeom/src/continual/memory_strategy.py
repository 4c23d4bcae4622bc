"""Base class of the methods that keep Fisher memories of past tasks."""

from keras_memgeom.src.continual.strategy import Strategy
from keras_memgeom.src.continual.task_stream import batched
from keras_memgeom.src.continual.task_stream import num_examples
from keras_memgeom.src.memory import normalization_statistics as statistics
from keras_memgeom.src.memory.attach import attach
from keras_memgeom.src.memory.attach import detach
from keras_memgeom.src.memory.fisher import ESTIMATORS
from keras_memgeom.src.memory.fisher import STRUCTURES
from keras_memgeom.src.memory.fisher_memory import DEFAULT_RANK
from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.kronecker import check_rank
from keras_memgeom.src.memory.merge import merge
from keras_memgeom.src.utils.checks import check_positive
from keras_memgeom.src.utils.checks import check_positive_int
from keras_memgeom.src.utils.renamed_argument import renamed_argument

DEFAULT_STRENGTH = 100.0


class MemoryStrategy(Strategy):
    """Remembers each task as a `FisherMemory` and attaches the memories.

    After a task, the Fisher memory of the model on that task's training
    data is estimated and handed to `consolidate`, which decides what is
    kept. Before the next task, what is kept is attached to the model as
    the penalty `strength * 1/2 * (n / N) * sum F (theta - anchor)^2`
    (`n` examples in the memory, `N` in the new task), summed over the
    kept memories.

    Subclasses implement `consolidate`.

    Args:
        strength: penalty strength, a finite positive number, `"auto"` to let
            `Harness` pick it on the validation split for every task, or
            `"sweep"` to have `Harness.compare` run the method once per
            strength of its `strength_grid`. 1 is
            the Bayesian weight of the old data; it is too weak in practice
            (see docs/harness.md), hence the default of 100.
        estimator: Fisher estimator: `"exact"`, `"sampled"`, `"empirical"`
            or `"batched"`.
        max_examples: estimate each memory on at most this many
            examples of the task (default: all of them).
        structure: `"diagonal"` or `"kfac"` (Kronecker factors for Dense
            and Conv2D layers; see `FisherMemory`).
        rank: with `"kfac"`, the eigenvectors each Kronecker factor keeps,
            or `None` for whole factors (see `FisherMemory.estimate`).
        normalization_statistics: what training under the memories does to
            `BatchNormalization`'s moving statistics: `"freeze"` (the
            default) keeps the remembered task's, `"update"` lets Keras
            update them (see `keras_memgeom.attach`).
        fisher_examples: deprecated alias of `max_examples`.

    Raises:
        ValueError: naming the argument, for a strength that is not `"auto"`,
            `"sweep"` or a finite positive number, an unknown estimator,
            structure or `normalization_statistics`, a bad `max_examples`
            or `rank`, or both `max_examples` and `fisher_examples`.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)


    @keras_memgeom.continual.register_strategy
    class Newest(keras_memgeom.continual.MemoryStrategy):
        # Remembers the last task only.

        name = "newest"

        def consolidate(self, memories, memory):
            return [memory]


    run = harness.run(Newest(strength=100))
    ```
    """

    def __init__(
        self,
        *,
        strength=DEFAULT_STRENGTH,
        estimator="exact",
        max_examples=None,
        structure="diagonal",
        rank=DEFAULT_RANK,
        normalization_statistics=statistics.DEFAULT_POLICY,
        fisher_examples=None,
    ):
        if not (isinstance(strength, str) and strength in ("auto", "sweep")):
            strength = check_positive("strength", strength)
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"Unknown Fisher estimator {estimator!r}. Choose one of: "
                f"{', '.join(ESTIMATORS)}."
            )
        if structure not in STRUCTURES:
            raise ValueError(
                f"Unknown Fisher structure {structure!r}. Choose one of: "
                f"{', '.join(STRUCTURES)}."
            )
        self.strength = strength
        self.estimator = estimator
        self.structure = structure
        self.rank = check_rank(rank, None)[0]
        max_examples = renamed_argument(
            "max_examples", max_examples, "fisher_examples", fisher_examples
        )
        self.max_examples = check_positive_int(
            "max_examples", max_examples, allow_none=True
        )
        self.normalization_statistics = statistics.check_policy(
            normalization_statistics
        )
        self.memories = []

    def consolidate(self, memories, memory):
        """Returns the memories to keep, given the kept ones and a new one.

        Args:
            memories: the list of memories kept so far.
            memory: the `FisherMemory` of the task just learned.

        Returns:
            The new list of memories to keep.
        """
        raise NotImplementedError

    def before_task(self, model, context):
        detach(model)
        if self.memories:
            attach(
                model,
                self.memories,
                num_train_examples=num_examples(self.training_data(context)),
                strength=context.strength,
                normalization_statistics=self.normalization_statistics,
            )

    def after_task(self, model, context):
        memory = FisherMemory.estimate(
            context.fisher_model(model),
            batched(context.task.data("train"), 256),
            estimator=self.estimator,
            max_examples=self.max_examples,
            structure=self.structure,
            rank=self.rank,
        )
        self.memories = self.consolidate(self.memories, memory)

    @property
    def memory(self):
        """All kept memories merged into one (their penalties summed)."""
        if len(self.memories) < 2:
            return self.memories[0] if self.memories else None
        return merge(self.memories)

    def get_config(self):
        return {
            "name": self.name,
            "strength": self.strength,
            "estimator": self.estimator,
            "max_examples": self.max_examples,
            "structure": self.structure,
            # The rank shapes Kronecker-factored memories only.
            **({"rank": self.rank} if self.structure == "kfac" else {}),
            # Written when not the default, so older results still resume.
            **(
                {"normalization_statistics": self.normalization_statistics}
                if self.normalization_statistics != statistics.DEFAULT_POLICY
                else {}
            ),
        }
