import zipfile

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.attach import attached_regularizers
from keras_memgeom.src.memory.attach import attachment_of
from keras_memgeom.src.training.train_examples import count_train_examples
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")


def _functional():
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(3)(
        keras.layers.Dense(8, activation="relu")(inputs)
    )
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
    model.compile("adam", LOSS, memories=[memory], strength=100.0)
    history = model.fit(x, y, epochs=2, verbose=0)
    assert "memory_penalty" in history.history
    assert history.history["memory_penalty"][-1] > 0.0
    expected = float(
        keras.ops.convert_to_numpy(
            memory.penalty(model, num_train_examples=64, strength=100.0)
        )
    )
    total = float(keras.ops.convert_to_numpy(model.memory_penalty()))
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_compile_without_memories_removes_the_previous_ones(rng):
    x, y = classification_data(rng, num_examples=32)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    model.compile("adam", LOSS, memories=[memory])
    model.fit(x, y, epochs=1, verbose=0)
    assert model.memory_penalty() is not None
    model.compile("adam", LOSS)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert model.memory_penalty() is None
    assert history.history.get("memory_penalty", [0.0])[-1] == 0.0


def test_model_with_memories_survives_save_and_load(tmp_path, rng):
    x, y = classification_data(rng, num_examples=64)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    model.compile("adam", LOSS, memories=[memory], strength=7.0)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, keras_memgeom.Model)
    assert loaded.memory_strength == 7.0 and len(loaded.memories) == 1
    np.testing.assert_array_equal(
        loaded.memories[0].fisher[memory.paths[0]],
        memory.fisher[memory.paths[0]],
    )
    history = loaded.fit(x, y, epochs=1, verbose=0)
    assert history.history["memory_penalty"][0] > 0.0


def _penalty(memory, model, num_train_examples, strength):
    return float(
        keras.ops.convert_to_numpy(
            memory.penalty(
                model, num_train_examples=num_train_examples, strength=strength
            )
        )
    )


def _remembering(rng, make=_functional, num_examples=32, **compile_kwargs):
    """A model compiled with a memory of itself, moved off the anchor."""
    x, y = classification_data(rng, num_examples=num_examples)
    model = make()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model(x[:1])
    memory = FisherMemory.estimate(model, (x, y))
    model.set_weights([w + 0.3 for w in model.get_weights()])
    model.compile(
        keras.optimizers.SGD(0.1), LOSS, memories=[memory], **compile_kwargs
    )
    return model, memory, x, y


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"memories": [keras.regularizers.L2(0.1)]}, "FisherMemory"),
        ({"strength": "abc"}, "strength"),
        ({"strength": None}, "strength"),
        ({"strength": float("nan")}, "strength"),
        ({"strength": float("inf")}, "strength"),
        ({"strength": -1.0}, "strength"),
        ({"num_train_examples": 0}, "num_train_examples"),
        ({"num_train_examples": 1.9}, "num_train_examples"),
        ({"frontal_lobe": "hidden"}, "FrontalLobe"),
    ],
)
def test_bad_compile_arguments_are_refused(rng, kwargs, match):
    x, y = classification_data(rng, num_examples=16)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    kwargs = {"memories": [memory], **kwargs}
    with pytest.raises(ValueError, match=match):
        model.compile("adam", LOSS, **kwargs)


def test_a_memory_not_in_a_list_is_refused_with_the_fix(rng):
    x, y = classification_data(rng, num_examples=16)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    with pytest.raises(ValueError, match=r"memories=\[memory\]"):
        model.compile("adam", LOSS, memories=memory)


def test_regularizers_is_a_deprecated_alias_of_memories(rng):
    x, y = classification_data(rng, num_examples=32)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    model.set_weights([w + 0.3 for w in model.get_weights()])
    with pytest.warns(DeprecationWarning, match="`memories`"):
        model.compile(
            "adam", LOSS, regularizers=[memory], num_train_examples=32
        )
    assert model.memories == [memory]
    # The penalty is the memory's quadratic at the default Laplace scaling.
    expected = memory.penalty(model, num_train_examples=32, strength=1.0)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(model.memory_penalty())),
        float(keras.ops.convert_to_numpy(expected)),
        rtol=1e-5,
    )
    assert float(keras.ops.convert_to_numpy(expected)) > 0.0


def test_memories_and_regularizers_together_are_refused(rng):
    x, y = classification_data(rng, num_examples=16)
    model = _functional()
    model.compile("adam", LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    with pytest.raises(ValueError, match="`regularizers`.*alias"):
        model.compile("adam", LOSS, memories=[memory], regularizers=[memory])


def test_train_on_batch_applies_the_penalty(rng):
    model, memory, x, y = _remembering(
        rng, num_train_examples=32, strength=20.0
    )
    start = model.get_weights()
    expected = _penalty(memory, model, 32, 20.0)
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["memory_penalty"], expected, rtol=1e-5)
    # SGD: the step with the memory differs from the plain one by
    # -lr * grad(penalty) = -lr * 2 * scale * F * (w - anchor).
    penalized = [w - s for w, s in zip(model.get_weights(), start)]
    plain_model = _functional()
    plain_model.compile(keras.optimizers.SGD(0.1), LOSS)
    plain_model.set_weights(start)
    plain_model.train_on_batch(x, y)
    plain = [w - s for w, s in zip(plain_model.get_weights(), start)]
    scale = 20.0 * 0.5 * memory.num_examples / 32
    for v, w, dp, dq in zip(model.trainable_variables, start, plain, penalized):
        expected_step = (
            -0.1
            * 2
            * scale
            * memory.fisher[v.path]
            * (w - memory.anchor[v.path])
        )
        np.testing.assert_allclose(dq - dp, expected_step, rtol=1e-3, atol=1e-6)


def test_train_on_batch_without_a_number_of_examples_is_refused(rng):
    model, _, x, y = _remembering(rng)
    with pytest.raises(ValueError, match="num_train_examples"):
        model.train_on_batch(x, y)


def test_compute_loss_in_a_custom_loop_includes_the_penalty(rng):
    model, memory, x, y = _remembering(rng, num_train_examples=32, strength=5.0)
    y_pred = model(x)
    plain = float(keras.ops.convert_to_numpy(LOSS(y, y_pred)))
    total = float(keras.ops.convert_to_numpy(model.compute_loss(x, y, y_pred)))
    np.testing.assert_allclose(
        total, plain + _penalty(memory, model, 32, 5.0), rtol=1e-5
    )


def test_evaluate_reports_the_penalty(rng):
    model, memory, x, y = _remembering(rng, num_train_examples=32, strength=5.0)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    expected = _penalty(memory, model, 32, 5.0)
    np.testing.assert_allclose(logs["memory_penalty"], expected, rtol=1e-5)
    plain = float(keras.ops.convert_to_numpy(LOSS(y, model(x))))
    np.testing.assert_allclose(logs["loss"], plain + expected, rtol=1e-4)


def test_detach_is_not_undone_by_fit(rng):
    model, _, x, y = _remembering(rng)
    model.fit(x, y, epochs=1, verbose=0)
    assert model.memory_penalty() is not None
    keras_memgeom.detach(model)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert model.memory_penalty() is None and not model.memories
    assert history.history.get("memory_penalty", [0.0])[-1] == 0.0


def test_validation_split_is_not_counted_as_training_examples(rng):
    model, memory, x, y = _remembering(rng, num_examples=40, strength=3.0)
    model.optimizer.learning_rate.assign(
        0.0
    )  # keep the weights: read the penalty
    history = model.fit(
        x, y, epochs=1, batch_size=40, validation_split=0.25, verbose=0
    )
    # Keras trains on the first 30 of 40 examples; the loss averages over 30.
    np.testing.assert_allclose(
        history.history["memory_penalty"][0],
        _penalty(memory, model, 30, 3.0),
        rtol=1e-5,
    )


def test_a_finite_dataset_is_counted(rng):
    tf = pytest.importorskip("tensorflow")
    model, memory, x, y = _remembering(rng, num_examples=36, strength=3.0)
    model.optimizer.learning_rate.assign(0.0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        8
    )  # 4 batches of 8, one of 4
    history = model.fit(dataset, epochs=1, verbose=0)
    np.testing.assert_allclose(
        history.history["memory_penalty"][0],
        _penalty(memory, model, 36, 3.0),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="num_train_examples"):
        model.fit(dataset.repeat(), epochs=1, steps_per_epoch=2, verbose=0)


def test_per_token_outputs_count_the_unmasked_training_tokens(rng):
    """`n_B` of a per-token loss: the unmasked tokens `fit` trains on.

    Padding (token 0) is masked; a zero sample weight still counts, as
    Keras divides the weighted loss by it. Inferred, the count trains as
    the same number given.
    """
    tf = pytest.importorskip("tensorflow")
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(5, 3, mask_zero=True)(tokens)
    model = keras_memgeom.Model(tokens, keras.layers.Dense(5)(h))
    x = rng.integers(1, 5, size=(20, 6)).astype("int32")
    for b, length in enumerate(rng.integers(1, 7, 20)):
        x[b, length:] = 0
    y = rng.integers(0, 5, size=(20, 6))
    weights = rng.uniform(0.5, 2.0, size=(20, 6)).astype("float32")
    weights[:, 0] = 0.0
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    memory = FisherMemory.estimate(model, (x, y))
    assert memory.num_examples == np.count_nonzero(x)
    start = [w + 0.3 for w in model.get_weights()]
    # `validation_split=0.25` trains on the first 15 sequences.
    trained_tokens = np.count_nonzero(x[:15])

    def train(**compile_kwargs):
        model.set_weights(start)
        model.compile(
            keras.optimizers.SGD(0.1),
            LOSS,
            memories=[memory],
            **compile_kwargs,
        )
        model.fit(
            x,
            y,
            sample_weight=weights,
            batch_size=4,
            epochs=1,
            shuffle=False,
            validation_split=0.25,
            verbose=0,
        )
        return model.get_weights()

    inferred = train()
    assert model.get_compile_config()["num_train_examples"] == trained_tokens
    given = train(num_train_examples=int(trained_tokens))
    for a, b in zip(inferred, given):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The number of sequences would weigh the memory differently.
    sequences = train(num_train_examples=15)
    assert not np.allclose(inferred[0], sequences[0])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    assert count_train_examples(dataset, model=model) == np.count_nonzero(x)


def test_refitting_does_not_retrace_the_train_step(rng):
    model, memory, x, y = _remembering(rng, num_examples=64, strength=3.0)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    traced = model.train_function
    model.optimizer.learning_rate.assign(0.0)
    # A different number of examples rescales the penalty through state.
    history = model.fit(x[:48], y[:48], epochs=1, batch_size=16, verbose=0)
    assert model.train_function is traced
    np.testing.assert_allclose(
        history.history["memory_penalty"][0],
        _penalty(memory, model, 48, 3.0),
        rtol=1e-5,
    )


def test_memory_state_is_kept_apart_from_the_models_variables(rng):
    model, memory, x, y = _remembering(rng, num_train_examples=32)
    before = [v.path for v in model.non_trainable_variables]
    model.fit(x, y, epochs=1, verbose=0)
    # State handling code (statistics, averages) sees the model's own only.
    assert [v.path for v in model.non_trainable_variables] == before
    own = {id(v) for v in model.variables}
    held = {id(v) for v in model.memory_state.variables}
    # The steps take it as state: JAX's stateless steps get it as an
    # argument with the metrics' variables, never as a constant.
    assert held <= {id(v) for v in model.metrics_variables}
    for _, regularizer in attached_regularizers(model):
        for variable in (regularizer.anchor, regularizer.fisher):
            assert id(variable) in held and id(variable) not in own
    assert id(attachment_of(model).scale) in held
    keras_memgeom.detach(model)
    assert not model.memory_state.variables


def test_saved_model_keeps_memories_out_of_layer_configs(tmp_path, rng):
    model, memory, x, y = _remembering(rng, num_train_examples=32)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        config = z.read("config.json").decode()
    assert "FisherRegularizer" not in config and "anchor" not in config


def test_sequential_takes_memories_in_compile(tmp_path, rng):
    make = lambda: keras_memgeom.Sequential(  # noqa: E731
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    model, memory, x, y = _remembering(rng, make=make, strength=4.0)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert history.history["memory_penalty"][0] > 0.0
    model.save(tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras")
    assert (
        isinstance(loaded, keras_memgeom.Sequential)
        and len(loaded.memories) == 1
    )
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(loaded.memory_penalty())),
        _penalty(memory, loaded, 32, 4.0),
        rtol=1e-5,
    )
