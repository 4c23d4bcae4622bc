import keras
import numpy as np
import pytest

import keras_memgeom

NUM_TRAIN_EXAMPLES = 50
STRENGTH = 3.0
LEARNING_RATE = 0.1


def _model():
    model = keras_memgeom.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="out")]
    )
    model.build((None, 3))
    return model


def _memory(model, seed, num_examples):
    rng = np.random.default_rng(seed)
    anchor = {
        v.path: rng.normal(size=v.shape).astype("float32")
        for v in model.trainable_variables
    }
    fisher = {
        path: rng.uniform(0.5, 2.0, size=value.shape).astype("float32")
        for path, value in anchor.items()
    }
    return keras_memgeom.FisherMemory(anchor, fisher, num_examples)


def _compile(model, memory):
    model.compile(
        keras.optimizers.SGD(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        regularizers=[memory],
        strength=STRENGTH,
        num_train_examples=NUM_TRAIN_EXAMPLES,
    )


def _weights(model):
    return {
        v.path: keras.ops.convert_to_numpy(v.value)
        for v in model.trainable_variables
    }


def _penalty_gradient(weights, memories):
    """`strength / N * sum_k n_k F_k (theta - anchor_k)`: the gradient of
    the memories' summed quadratics, which their merge keeps exactly."""
    return {
        path: STRENGTH
        / NUM_TRAIN_EXAMPLES
        * sum(
            m.num_examples * m.fisher[path] * (value - m.anchor[path])
            for m in memories
        )
        for path, value in weights.items()
    }


def _batch():
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    # Zero sample weights: the data loss and its gradient are 0, so a step
    # moves the weights by the memory penalty's gradient alone.
    return x, np.array([0, 1, 0, 1]), np.zeros(4, "float32")


def _counting_traces(model):
    """Counts `compute_loss` calls: traces of the compiled step on JAX and
    TensorFlow, where the traced step does not call Python again."""
    calls = []
    compute_loss = model.compute_loss

    def counted(x=None, y=None, y_pred=None, sample_weight=None, training=1):
        calls.append(1)
        return compute_loss(x, y, y_pred, sample_weight, training=training)

    model.compute_loss = counted
    return calls


@pytest.mark.parametrize("replace", [True, False])
def test_the_next_step_uses_the_consolidated_memory_without_a_retrace(
    replace, full_precision
):
    model = _model()
    old, new = _memory(model, 0, 30), _memory(model, 1, 20)
    _compile(model, old)
    calls = _counting_traces(model)
    x, y, zeros = _batch()
    model.train_on_batch(x, y, sample_weight=zeros)
    train_function, traces = model.train_function, len(calls)

    merged = model.consolidate(new, replace=replace)

    assert model.memories == [merged]
    assert merged.num_examples == (20 if replace else 50)
    assert model.train_function is train_function
    before = _weights(model)
    model.train_on_batch(x, y, sample_weight=zeros)
    if keras.backend.backend() in ("jax", "tensorflow"):
        assert len(calls) == traces
    gradient = _penalty_gradient(before, [new] if replace else [old, new])
    for path, value in _weights(model).items():
        np.testing.assert_allclose(
            value,
            before[path] - LEARNING_RATE * gradient[path],
            rtol=1e-5,
            atol=1e-6,
        )


def test_a_consolidation_inside_fit_applies_from_the_next_step(
    full_precision,
):
    model = _model()
    old, new = _memory(model, 0, 30), _memory(model, 1, 20)
    _compile(model, old)
    x, y, zeros = _batch()
    start = _weights(model)
    consolidate = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: (
            epoch == 0 and model.consolidate(new, replace=True)
        )
    )
    model.fit(
        x,
        y,
        sample_weight=zeros,
        batch_size=len(x),
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[consolidate],
    )
    gradient = _penalty_gradient(start, [old])
    middle = {p: start[p] - LEARNING_RATE * gradient[p] for p in start}
    gradient = _penalty_gradient(middle, [new])
    for path, value in _weights(model).items():
        np.testing.assert_allclose(
            value,
            middle[path] - LEARNING_RATE * gradient[path],
            rtol=1e-5,
            atol=1e-6,
        )


def test_the_first_consolidation_attaches_the_memory():
    model = _model()
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        strength=STRENGTH,
    )
    memory = _memory(model, 0, 30)
    with pytest.raises(ValueError, match="num_train_examples"):
        model.consolidate(memory)
    assert model.consolidate(memory, num_train_examples=10) is not memory
    assert model.memories[0].num_examples == 30
    penalty = float(model.memory_penalty())
    expected = sum(
        0.5
        * STRENGTH
        * 30
        / 10
        * np.sum(memory.fisher[v.path] * (_weights(model)[v.path] - a) ** 2)
        for v, a in (
            (v, memory.anchor[v.path]) for v in model.trainable_variables
        )
    )
    assert penalty == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memory": "memory"}, "`memory` takes a FisherMemory; got str"),
        ({"decay": 0.0}, "`decay` must be > 0"),
        ({"num_train_examples": 0}, "`num_train_examples` must be at least"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = _model()
    _compile(model, _memory(model, 0, 30))
    kwargs = {"memory": _memory(model, 1, 20), **kwargs}
    with pytest.raises(ValueError, match=message):
        model.consolidate(kwargs.pop("memory"), **kwargs)
