"""Joint training: learn each task together with all earlier ones."""

import numpy as np

from keras_memgeom.src.continual.strategy import Strategy
from keras_memgeom.src.continual.strategy import register_strategy
from keras_memgeom.src.continual.task_stream import StreamedTask
from keras_memgeom.src.continual.task_stream import num_examples


@register_strategy
class Joint(Strategy):
    """Trains on the union of all tasks seen so far: the upper bound.

    It stores every earlier task, so it is a reference point, not a
    continual learner.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    run = harness.run(keras_memgeom.continual.Joint())
    print(run["accuracy_matrix"])  # row t: accuracy on every task after task t
    ```
    """

    name = "joint"

    def training_data(self, context):
        seen = context.stream.tasks[: context.index + 1]
        if isinstance(seen[0], StreamedTask):
            return _interleaved([task.data("train") for task in seen])
        return (
            np.concatenate([task.x_train for task in seen]),
            np.concatenate([task.y_train for task in seen]),
        )


def _interleaved(datasets):
    """The examples of streamed tasks, drawn in proportion to their sizes."""
    import tensorflow as tf

    sizes = [num_examples(d) for d in datasets]
    mixed = tf.data.Dataset.sample_from_datasets(
        datasets, weights=[n / sum(sizes) for n in sizes]
    )
    return mixed.apply(tf.data.experimental.assert_cardinality(sum(sizes)))
