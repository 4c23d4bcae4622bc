"""Saving and reloading models with memories: no work lost, no penalty lost."""

import glob
import os
import zipfile

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.attach import attached_regularizers
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _lstm(package):
    inputs = keras.Input((5, 3))
    outputs = keras.layers.Dense(3)(keras.layers.LSTM(4)(inputs))
    cls = keras_memgeom.Model if package else keras.Model
    return cls(inputs, outputs)


def _separable_cnn(package):
    inputs = keras.Input((6, 6, 2))
    hidden = keras.layers.DepthwiseConv2D(3, activation="relu")(inputs)
    hidden = keras.layers.SeparableConv2D(4, 3, activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(3)(hidden)
    cls = keras_memgeom.Model if package else keras.Model
    return cls(inputs, outputs)


def _mlp(package):
    layers = [
        keras.Input((5,)),
        keras.layers.Dense(6, activation="relu"),
        keras.layers.Dense(3),
    ]
    return (
        keras_memgeom.Sequential(layers)
        if package
        else keras.Sequential(layers)
    )


def _data(rng, model, num_examples=24):
    shape = model.inputs[0].shape[1:]
    x = rng.normal(size=(num_examples, *shape)).astype("float32")
    return x, rng.integers(0, 3, num_examples)


def _closed_form(memory, model, num_train_examples, strength):
    # The memory's quadratic at the model's weights, from the memory alone.
    return float(
        keras.ops.convert_to_numpy(
            memory.penalty(
                model, num_train_examples=num_train_examples, strength=strength
            )
        )
    )


def _penalty(model):
    if isinstance(model, (keras_memgeom.Model, keras_memgeom.Sequential)):
        return float(keras.ops.convert_to_numpy(model.memory_penalty()))
    return sum(float(keras.ops.convert_to_numpy(l)) for l in model.losses)


def _remembering(rng, make, package, structure="diagonal", strength=5.0):
    """A model with a memory of itself attached, moved off the anchor."""
    model = make(package)
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    x, y = _data(rng, model)
    if structure == "kfac":
        memory = FisherMemory.estimate(model, (x, y), structure="kfac")
    else:
        memory = _random_memory(rng, model)
    model.set_weights(
        [
            w + rng.normal(size=w.shape).astype("float32") * 0.1
            for w in model.get_weights()
        ]
    )
    if package:
        model.compile(
            keras.optimizers.SGD(0.01),
            LOSS,
            memories=[memory],
            strength=strength,
            num_train_examples=len(x),
        )
    else:
        keras_memgeom.attach(
            model, memory, num_train_examples=len(x), strength=strength
        )
    return model, memory, x, y


@pytest.mark.parametrize("package", [False, True], ids=["attach", "package"])
@pytest.mark.parametrize(
    "make, structure",
    [
        (_lstm, "diagonal"),
        (_separable_cnn, "diagonal"),
        (_mlp, "diagonal"),
        (_mlp, "kfac"),
    ],
    ids=["lstm", "separable_cnn", "mlp", "mlp_kfac"],
)
def test_the_penalty_survives_save_and_load(
    tmp_path, rng, make, structure, package
):
    model, memory, x, y = _remembering(rng, make, package, structure)
    expected = _closed_form(memory, model, len(x), 5.0)
    assert expected > 0.0
    np.testing.assert_allclose(_penalty(model), expected, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(_penalty(loaded), expected, rtol=1e-5)
    # Every remembered variable is penalized again, and training reads it.
    assert len(attached_regularizers(loaded)) == len(
        attached_regularizers(model)
    )
    loaded.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    np.testing.assert_allclose(
        _penalty(loaded), _closed_form(memory, loaded, len(x), 5.0), rtol=1e-5
    )


def test_a_plain_models_file_keeps_memory_arrays_out_of_its_config(
    tmp_path, rng
):
    model, _, _, _ = _remembering(rng, _mlp, package=False)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        config = z.read("config.json").decode()
    keras_memgeom.detach(model)
    model.save(tmp_path / "bare.keras")
    with zipfile.ZipFile(tmp_path / "bare.keras") as z:
        bare = z.read("config.json").decode()
    assert "FisherRegularizer" in config and '"data"' not in config
    # Shapes and scales only: a few hundred bytes per variable, whatever
    # the layer's size.
    assert len(config) - len(bare) < 400 * len(model.trainable_variables)


def test_attach_refuses_variables_a_saved_model_would_not_keep(rng):
    # Multi-head attention builds its projections from its own config, so
    # a regularizer set on them would be lost on reloading.
    inputs = keras.Input((4, 6))
    attention = keras.layers.MultiHeadAttention(2, 3, name="attention")
    hidden = attention(inputs, inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    memory = _random_memory(rng, model)
    with pytest.raises(ValueError, match="attention/query/kernel"):
        keras_memgeom.attach(model, memory, num_train_examples=8)
    # Nothing is left half attached.
    assert not attached_regularizers(model) and not model.losses
    assert "save" not in model.__dict__


class _FailingWriter:
    """Makes the second member written into any zip archive fail: midway.

    Keras writes a `.keras` archive and the package a memory file through
    `zipfile.ZipFile.open(..., "w")`.
    """

    def __init__(self, monkeypatch):
        self.calls = 0
        original = zipfile.ZipFile.open

        def open_member(zf, name, mode="r", *args, **kwargs):
            if mode == "w":
                self.calls += 1
                if self.calls == 2:
                    raise OSError("disk full")
            return original(zf, name, mode, *args, **kwargs)

        monkeypatch.setattr(zipfile.ZipFile, "open", open_member)


def _intact(path, before):
    with open(path, "rb") as f:
        assert f.read() == before
    folder, name = os.path.split(path)
    assert not glob.glob(os.path.join(folder, f".{name}.*.tmp"))


@pytest.mark.parametrize("package", [False, True], ids=["attach", "package"])
@pytest.mark.parametrize("structure", ["diagonal", "kfac"])
@pytest.mark.parametrize("how", ["save", "checkpoint"])
def test_a_failed_save_leaves_the_previous_file_intact(
    tmp_path, rng, monkeypatch, package, structure, how
):
    model, _, x, y = _remembering(rng, _mlp, package, structure)
    path = str(tmp_path / "m.keras")
    model.save(path)
    with open(path, "rb") as f:
        before = f.read()
    model.optimizer.learning_rate.assign(0.1)  # the next file would differ
    writer = _FailingWriter(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        if how == "save":
            model.save(path)
        else:
            checkpoint = keras.callbacks.ModelCheckpoint(path)
            model.fit(x, y, epochs=1, callbacks=[checkpoint], verbose=0)
    assert writer.calls == 2
    _intact(path, before)
    monkeypatch.undo()
    loaded = keras.saving.load_model(path)
    assert len(attached_regularizers(loaded)) == len(
        attached_regularizers(model)
    )


@pytest.mark.parametrize("structure", ["diagonal", "kfac"])
def test_a_failed_memory_save_leaves_the_previous_file_intact(
    tmp_path, rng, monkeypatch, structure
):
    model = _mlp(package=False)
    model.compile(loss=LOSS)
    x, y = classification_data(rng, num_examples=16)
    memory = FisherMemory.estimate(model, (x, y), structure=structure)
    path = str(tmp_path / "m.memory")
    memory.save(path)
    with open(path, "rb") as f:
        before = f.read()
    writer = _FailingWriter(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        FisherMemory.estimate(model, (x[:8], y[:8])).save(path)
    assert writer.calls == 2
    _intact(path, before)


def _random_memory(rng, model, num_examples=50):
    # A memory of the model's current weights with a random positive
    # Fisher: the penalty's closed form needs no estimate.
    anchor = {
        v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables
    }
    fisher = {
        path: rng.uniform(0.5, 2.0, size=value.shape).astype("float32")
        for path, value in anchor.items()
    }
    return FisherMemory(anchor, fisher, num_examples)
