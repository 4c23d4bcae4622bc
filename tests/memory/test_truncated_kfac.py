"""Kronecker factors truncated to their top eigenvectors (`EigenFactor`)."""

import keras
import numpy as np
import pytest

import keras_memgeom
from keras_memgeom import FisherMemory
from keras_memgeom import merge
from keras_memgeom.src.memory.kronecker import EigenFactor
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker import dense_factor
from keras_memgeom.src.memory.kronecker import factor_diagonal
from keras_memgeom.src.memory.kronecker import factor_eigenvalues
from keras_memgeom.src.memory.kronecker import truncate_factor
from keras_memgeom.src.memory.penalty import kronecker_penalty
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")


def _psd(rng, size):
    root = rng.normal(size=(size, size))
    # A decaying spectrum, as second moments of real layers have.
    return (root * 0.7 ** np.arange(size)) @ root.T / size


def _penalty(a, g, delta):
    """The truncated penalty as the package computes it (float64 result)."""
    zeros = np.zeros_like(delta, dtype="float32")
    value = kronecker_penalty(
        delta.astype("float32"), None, zeros, None, a, g, 1.0
    )
    return float(keras.ops.convert_to_numpy(value))


def _dense_form(a, g, delta):
    """`vec(D)^T (A (x) G) vec(D)` with the Kronecker product formed."""
    vec = delta.astype("float64").ravel()
    return float(vec @ np.kron(dense_factor(a), dense_factor(g)) @ vec)


def test_truncation_keeps_the_trace_the_top_space_and_psd(rng):
    matrix = _psd(rng, 8)
    eigenvalues, vectors = np.linalg.eigh(matrix)
    for rank in range(1, 8):
        factor = truncate_factor(matrix, rank=rank)
        dense = dense_factor(factor)
        np.testing.assert_allclose(np.trace(dense), np.trace(matrix))
        np.testing.assert_allclose(factor_diagonal(factor), np.diag(dense))
        # Exact on the kept eigenvectors.
        top = vectors[:, ::-1][:, :rank]
        np.testing.assert_allclose(dense @ top, matrix @ top, atol=1e-12)
        np.testing.assert_allclose(
            np.sort(factor_eigenvalues(factor)),
            np.sort(np.linalg.eigvalsh(dense)),
            atol=1e-12,
        )
        dropped = eigenvalues[: 8 - rank]
        assert factor.remainder == pytest.approx(dropped.mean())
    # Nothing to drop: the very same matrix.
    assert truncate_factor(matrix, rank=8) is matrix
    assert truncate_factor(matrix, rank=None) is matrix


def test_retained_trace_keeps_the_fewest_eigenvectors_that_reach_it():
    matrix = np.diag([8.0, 4.0, 2.0, 1.0, 1.0])
    assert truncate_factor(matrix, retained_trace=0.5).values.shape == (1,)
    assert truncate_factor(matrix, retained_trace=0.75).values.shape == (2,)
    assert truncate_factor(matrix, retained_trace=0.8).values.shape == (3,)
    assert truncate_factor(matrix, rank=2, retained_trace=0.8).values.shape == (
        2,
    )
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="retained_trace"):
            truncate_factor(matrix, retained_trace=bad)
    with pytest.raises(ValueError, match="rank"):
        truncate_factor(matrix, rank=0)


def test_truncated_penalty_is_the_dense_form_and_converges_to_the_full_one(
    rng,
):
    a, g = _psd(rng, 7), _psd(rng, 5)
    delta = rng.normal(size=(7, 5))
    full = _dense_form(a, g, delta)
    np.testing.assert_allclose(_penalty(a, g, delta), full, rtol=1e-5)
    errors = []
    for rank in range(1, 7):
        ta, tg = truncate_factor(a, rank=rank), truncate_factor(g, rank=rank)
        # The projections compute exactly the truncated quadratic form.
        np.testing.assert_allclose(
            _penalty(ta, tg, delta), _dense_form(ta, tg, delta), rtol=1e-5
        )
        errors.append(
            np.linalg.norm(dense_factor(ta) - a)
            + np.linalg.norm(dense_factor(tg) - g)
        )
    # The factors' errors shrink with the rank, to none one short of full
    # (the one dropped eigenvalue is its own mean).
    assert all(e2 <= e1 + 1e-12 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-12 and errors[0] > 1e-3
    ta, tg = truncate_factor(a, rank=6), truncate_factor(g, rank=4)
    np.testing.assert_allclose(_penalty(ta, tg, delta), full, rtol=1e-5)


def test_truncated_penalty_is_never_negative(rng):
    for _ in range(20):
        size = int(rng.integers(3, 9))
        # Symmetric but indefinite: truncation clips what no Fisher has.
        root = rng.normal(size=(size, size))
        indefinite = root + root.T
        factor = truncate_factor(indefinite, rank=int(rng.integers(1, size)))
        assert np.all(factor.values >= 0) and factor.remainder >= 0
        assert np.linalg.eigvalsh(dense_factor(factor)).min() > -1e-9
        g = truncate_factor(_psd(rng, 4), rank=2)
        delta = rng.normal(size=(size, 4)) * 10.0 ** rng.integers(-3, 3)
        assert _penalty(factor, g, delta) >= 0.0


def _mlp():
    model = keras_memgeom.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_estimate_truncates_each_factor_of_the_full_estimate(rng):
    x, y = classification_data(rng, num_examples=40, num_features=6)
    model = _mlp()
    full = FisherMemory.estimate(model, (x, y), structure="kfac", rank=None)
    truncated = FisherMemory.estimate(model, (x, y), structure="kfac", rank=2)
    for path, block in full.kronecker.items():
        own = truncated.kronecker[path]
        for factor, whole in ((own.a, block.a), (own.g, block.g)):
            assert isinstance(factor, EigenFactor)
            np.testing.assert_allclose(
                dense_factor(factor),
                dense_factor(truncate_factor(whole, rank=2)),
                rtol=1e-5,
                atol=1e-7,
            )
    with pytest.raises(ValueError, match="rank"):
        FisherMemory.estimate(model, (x, y), structure="kfac", rank=-1)


def test_training_step_takes_the_closed_form_gradient(rng):
    x, y = classification_data(rng, num_examples=30, num_features=6)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y), structure="kfac", rank=2)
    model.set_weights(
        [
            w + rng.normal(size=w.shape).astype("float32")
            for w in model.get_weights()
        ]
    )
    start = [w.astype("float64") for w in model.get_weights()]
    model.compile(
        # One step, so the rate only sets how far float32 resolves it.
        keras.optimizers.SGD(0.1),
        lambda y_true, y_pred: 0.0 * keras.ops.mean(y_pred),
        memories=[memory],
        strength=3.0,
        num_train_examples=30,
    )
    logs = model.train_on_batch(x, y, return_dict=True)
    step = [(w - s) / -0.1 for w, s in zip(model.get_weights(), start)]
    scale = 0.5 * 3.0 * memory.num_examples / 30
    anchor = memory.anchor
    penalty = 0.0
    for layer, index in ((model.layers[0], 0), (model.layers[1], 2)):
        block = memory.kronecker[layer.kernel.path]
        delta = np.r_[start[index], start[index + 1][None]] - np.r_[
            anchor[layer.kernel.path], anchor[layer.bias.path][None]
        ].astype("float64")
        a, g = dense_factor(block.a), dense_factor(block.g)
        gradient = 2.0 * scale * a @ delta @ g
        np.testing.assert_allclose(
            step[index], gradient[:-1], rtol=1e-3, atol=1e-5
        )
        np.testing.assert_allclose(
            step[index + 1], gradient[-1], rtol=1e-3, atol=1e-5
        )
        penalty += scale * np.sum(delta * (a @ delta @ g))
    np.testing.assert_allclose(logs["memory_penalty"], penalty, rtol=1e-4)


def _diagonal_fisher(memory):
    """The diagonal Fisher of the variables no Kronecker block covers."""
    covered = set(memory.kronecker) | {
        b.bias for b in memory.kronecker.values()
    }
    return {p: f for p, f in memory.fisher.items() if p not in covered}


def test_truncated_memory_saves_loads_and_merges_in_its_rank(tmp_path, rng):
    x, y = classification_data(rng, num_examples=40, num_features=6)
    model = _mlp()
    memories = []
    for shift in (0.0, 1.0):
        model.set_weights(
            [
                w + rng.normal(size=w.shape).astype("float32")
                for w in model.get_weights()
            ]
        )
        memories.append(
            FisherMemory.estimate(
                model, (x + shift, y), structure="kfac", rank=3
            )
        )
    memories[0].save(tmp_path / "t.memory")
    loaded = FisherMemory.load(tmp_path / "t.memory")
    for path, block in memories[0].kronecker.items():
        # The output layer's G (3 x 3) is kept whole at rank 3.
        assert isinstance(block.a, EigenFactor)
        for factor, read in (
            (block.a, loaded.kronecker[path].a),
            (block.g, loaded.kronecker[path].g),
        ):
            assert type(read) is type(factor)
            np.testing.assert_array_equal(
                dense_factor(read), dense_factor(factor)
            )
    # Merging is the merge of the matrices they stand for, truncated again.
    merged = merge(memories)
    dense = [
        FisherMemory(
            m.anchor,
            _diagonal_fisher(m),
            m.num_examples,
            kronecker={
                path: KroneckerBlock(
                    b.bias, dense_factor(b.a), dense_factor(b.g), b.mask
                )
                for path, b in m.kronecker.items()
            },
        )
        for m in memories
    ]
    reference = merge(dense)
    for path, block in merged.kronecker.items():
        assert block.a.values.shape == (3,)
        wanted = reference.kronecker[path]
        for factor, whole in ((block.a, wanted.a), (block.g, wanted.g)):
            np.testing.assert_allclose(
                dense_factor(factor),
                dense_factor(truncate_factor(whole, rank=3)),
                rtol=1e-4,
                atol=1e-6,
            )
        np.testing.assert_allclose(
            merged.anchor[path], reference.anchor[path], rtol=1e-5, atol=1e-6
        )


def test_a_malformed_truncated_factor_is_refused(rng):
    x, y = classification_data(rng, num_examples=20, num_features=6)
    model = _mlp()
    memory = FisherMemory.estimate(model, (x, y), structure="kfac", rank=2)
    path = model.layers[0].kernel.path
    block = memory.kronecker[path]
    anchor = memory.anchor
    fisher = _diagonal_fisher(memory)
    cases = [
        (block.a._replace(remainder=-1.0), "positive semi-definite"),
        (block.a._replace(values=-block.a.values), "positive semi-definite"),
        (block.a._replace(values=block.a.values[:1]), "eigenvalues of shape"),
        (block.a._replace(vectors=2.0 * block.a.vectors), "orthonormal"),
        (block.a._replace(vectors=block.a.vectors[:3]), "eigenvectors of"),
    ]
    for bad, message in cases:
        kronecker = dict(memory.kronecker)
        kronecker[path] = block._replace(a=bad)
        with pytest.raises(ValueError, match=message):
            FisherMemory(anchor, fisher, 20, kronecker=kronecker)
