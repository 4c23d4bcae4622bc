"""Joint training: learn each task together with all earlier ones."""

import numpy as np

from keras_memgeom.continual.strategy import Strategy
from keras_memgeom.continual.strategy import register_strategy
from keras_memgeom.continual.task_stream import StreamedTask
from keras_memgeom.continual.task_stream import num_examples


@register_strategy
class Joint(Strategy):
    """Trains on the union of all tasks seen so far: the upper bound.

    It stores every earlier task, so it is a reference point, not a
    continual learner.

    Example:

    >>> Harness(TaskStream.make("permuted", num_tasks=2)).run(Joint())
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
