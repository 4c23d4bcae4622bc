"""`ScalarMean`: the per-step mean that the penalties are reported by."""

import keras
import numpy as np

from keras_memgeom.src.training.scalar_mean import ScalarMean


def test_it_is_the_mean_of_the_values_added_and_resets(rng):
    values = rng.normal(size=7)
    mean = ScalarMean(name="penalty")
    assert float(mean.result()) == 0.0  # nothing added yet
    for value in values:
        mean.update_state(keras.ops.convert_to_tensor(value, "float32"))
    np.testing.assert_allclose(float(mean.result()), values.mean(), rtol=1e-6)
    mean.reset_state()
    assert float(mean.result()) == 0.0
    mean.update_state(2.5)
    assert float(mean.result()) == 2.5


def test_it_holds_the_state_of_a_keras_mean_and_round_trips_its_config():
    # The same variables as `keras.metrics.Mean`: models saved with one
    # load into the other.
    mean, reference = ScalarMean(name="m"), keras.metrics.Mean(name="m")
    assert [v.name for v in mean.variables] == [
        v.name for v in reference.variables
    ]
    for value in (1.0, 5.0):
        reference.update_state(value)
    for variable, saved in zip(mean.variables, reference.variables):
        variable.assign(saved)
    assert float(mean.result()) == 3.0
    copy = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(mean)
    )
    assert isinstance(copy, ScalarMean) and copy.name == "m"
