import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")


def _functional():
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs))
    return keras_memgeom.Model(inputs, outputs)


class Subclassed(keras_memgeom.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("make", [_functional, Subclassed])
def test_compile_with_memories_reports_the_penalty(rng, make):
    x, y = classification_data(rng, num_examples=64)
    model = make()
    model.compile("adam", LOSS)
    model.fit(x, y, epochs=1, verbose=0)
    memory = FisherMemory.estimate(model, (x, y))
    model.compile("adam", LOSS, regularizers=[memory], strength=100.0)
    history = model.fit(x, y, epochs=2, verbose=0)
    assert "memory_penalty" in history.history
    assert history.history["memory_penalty"][-1] > 0.0
    expected = float(keras.ops.convert_to_numpy(memory.penalty(model, num_train_examples=64, strength=100.0)))
    total = sum(float(keras.ops.convert_to_numpy(l)) for l in model.losses)
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_compile_without_memories_removes_the_previous_ones(rng):
    x, y = classification_data(rng, num_examples=32)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    model.compile("adam", LOSS, regularizers=[memory])
    model.fit(x, y, epochs=1, verbose=0)
    assert model.losses
    model.compile("adam", LOSS)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert not model.losses
    assert history.history.get("memory_penalty", [0.0])[-1] == 0.0


def test_model_with_memories_survives_save_and_load(tmp_path, rng):
    x, y = classification_data(rng, num_examples=64)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    model.compile("adam", LOSS, regularizers=[memory], strength=7.0)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, keras_memgeom.Model)
    assert loaded.memory_strength == 7.0 and len(loaded.memories) == 1
    np.testing.assert_array_equal(loaded.memories[0].fisher[memory.paths[0]], memory.fisher[memory.paths[0]])
    history = loaded.fit(x, y, epochs=1, verbose=0)
    assert history.history["memory_penalty"][0] > 0.0


def test_bad_compile_and_fit_arguments_are_refused(rng):
    tf = pytest.importorskip("tensorflow")

    x, y = classification_data(rng, num_examples=16)
    model = _functional()
    with pytest.raises(ValueError, match="FisherMemory"):
        model.compile("adam", LOSS, regularizers=[keras.regularizers.L2(0.1)])
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    model.compile("adam", LOSS, regularizers=[memory])
    with pytest.raises(ValueError, match="num_train_examples"):
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
    model.compile("adam", LOSS, regularizers=[memory], num_train_examples=16)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
