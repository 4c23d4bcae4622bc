import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import continual


class _Recording(continual.OnlineEWC):
    """Online EWC that also estimates each task's Fisher on its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fishers, self.weights = [], []

    def after_task(self, model, context):
        task = context.task
        data = (task.x_train, task.y_train)
        self.fishers.append(keras_memgeom.FisherMemory.estimate(model, data))
        self.weights.append(
            {v.path: np.array(v.numpy()) for v in model.trainable_variables}
        )
        super().after_task(model, context)


def test_importance_and_anchor_follow_the_formula(tiny_stream):
    strategy = _Recording(strength=10, gamma=0.5)
    continual.Harness(tiny_stream, width=8, epochs=1).run(strategy)
    (memory,) = strategy.memories
    first, second = strategy.fishers
    # F*_2 = gamma F_1 + F_2, anchored at the weights after task 2.
    for path, importance in memory.fisher.items():
        np.testing.assert_allclose(
            importance,
            0.5 * first.fisher[path] + second.fisher[path],
            rtol=1e-5,
            atol=1e-12,
        )
        np.testing.assert_array_equal(
            memory.anchor[path], strategy.weights[1][path]
        )
    assert memory.num_examples == len(tiny_stream.tasks[1].y_train)
    assert strategy.get_config()["gamma"] == 0.5


def test_registered_and_checked():
    assert continual.get_strategy_class("online-ewc") is continual.OnlineEWC
    with pytest.raises(ValueError, match="`gamma`"):
        continual.OnlineEWC(gamma=0.0)
