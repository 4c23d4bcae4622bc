"""Joint training: learn each task together with all earlier ones."""

import numpy as np

from keras_memgeom.continual.strategy import Strategy
from keras_memgeom.continual.strategy import register_strategy


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
        return (
            np.concatenate([task.x_train for task in seen]),
            np.concatenate([task.y_train for task in seen]),
        )
