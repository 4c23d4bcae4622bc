"""The mean of a scalar over a fit's steps, at the cost of two adds a step."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_memgeom")
class ScalarMean(keras.metrics.Metric):
    """The running mean of one scalar per step, as `keras.metrics.Mean`.

    A training step reports its penalties through it. `keras.metrics.Mean`
    takes batches of values and sample weights, which it reshapes, casts
    and counts every step, and divides without NaN when asked for its
    result: eager torch runs each of those as a kernel of its own, every
    step. This one adds the value and one, and divides by at least one.
    Its state (`total`, `count`) is `Mean`'s, so saved models load either.

    Args:
        name: the metric's name in the logs.
        dtype: the state's dtype (the default float type by default).

    Example:

    ```python
    from keras_memgeom.src.training.scalar_mean import ScalarMean

    mean = ScalarMean(name="penalty")
    for value in (1.0, 2.0, 6.0):
        mean.update_state(value)
    print(float(mean.result()))  # 3.0
    ```
    """

    def __init__(self, name="scalar_mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable((), "zeros", name="total")
        self.count = self.add_variable((), "zeros", name="count")

    def update_state(self, value):
        """Adds one step's scalar `value` (no gradient flows through it)."""
        self.total.assign_add(ops.stop_gradient(ops.cast(value, self.dtype)))
        self.count.assign_add(ops.ones((), self.dtype))

    def reset_state(self):
        """Forgets every value added."""
        self.total.assign(0.0)
        self.count.assign(0.0)

    def result(self):
        """The mean of the values added, or zero before the first."""
        return ops.divide(self.total, ops.maximum(self.count, 1.0))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
