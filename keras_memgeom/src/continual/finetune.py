"""Fine-tuning: learn each task in turn with nothing to protect the old."""

from keras_memgeom.src.continual.strategy import Strategy
from keras_memgeom.src.continual.strategy import register_strategy


@register_strategy
class Finetune(Strategy):
    """Trains on each new task alone, with no memory: the lower bound.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    run = harness.run(keras_memgeom.continual.Finetune())
    print(run["accuracy_matrix"])  # row t: accuracy on every task after task t
    ```
    """

    name = "finetune"
