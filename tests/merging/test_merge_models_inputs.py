"""`merge_models` under bad input: a clear error, never a silent result."""

import keras
import numpy as np
import pytest

from keras_memgeom.memory import FisherMemory
from keras_memgeom.merging import merge_models
from keras_memgeom.merging import repair
from tests.memory.helpers import classification_data

pytestmark = pytest.mark.usefixtures("full_precision")


def _mlp(seed, activation="relu", output_activation=None, name=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(
                6, activation=activation, bias_initializer="random_normal"
            ),
            keras.layers.Dense(3, activation=output_activation),
        ],
        name=name,
    )


def test_one_model_or_something_else_than_models_is_refused(tmp_path):
    model = _mlp(0)
    with pytest.raises(ValueError, match="a list of at least two.*Sequential"):
        merge_models(model)
    with pytest.raises(ValueError, match=r"`models\[1\]` is a str.*load_model"):
        merge_models([model, str(tmp_path / "x.keras")])
    with pytest.raises(ValueError, match=r"`models\[0\]` is a int"):
        merge_models([3, model])


@pytest.mark.parametrize(
    "weights, want",
    [([1e308, 1e308], [0.5, 0.5]), ([1e308, 1e307], [10 / 11, 1 / 11])],
)
def test_huge_weights_are_normalized_without_overflow(weights, want):
    a, b = _mlp(0), _mlp(1)
    merged = merge_models([a, b], weights=weights, align=False)
    for got, wa, wb in zip(
        merged.get_weights(), a.get_weights(), b.get_weights()
    ):
        np.testing.assert_allclose(
            got, want[0] * wa + want[1] * wb, rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize(
    "method, repair_units", [("regmean", False), ("average", True)]
)
def test_non_finite_data_is_refused_by_name(rng, method, repair_units):
    x, y = classification_data(rng, num_examples=20)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"data\[1\] holds 1 NaN.*\(3, 2\)"):
        merge_models(
            [_mlp(0), _mlp(1)],
            method=method,
            data=[(x, y), (bad, y)],
            repair=repair_units,
        )


def _batches(x, y):
    # A data set that only shows its values batch by batch.
    return [(x[:10], y[:10]), (x[10:], y[10:])]


def test_non_finite_batches_are_refused_where_they_enter(rng):
    x, y = classification_data(rng, num_examples=20)
    bad = x.copy()
    bad[12, 0] = np.inf
    models = [_mlp(0), _mlp(1)]
    with pytest.raises(ValueError, match=r"data\[0\] holds 1 NaN"):
        merge_models(models, method="regmean", data=[_batches(bad, y), (x, y)])
    with pytest.raises(ValueError, match=r"inputs of data\[1\] holds 1 NaN"):
        repair(models[0], models, [(x, y), _batches(bad, y)])


@pytest.mark.parametrize(
    "method, repair_units", [("regmean", False), ("average", True)]
)
def test_empty_data_is_refused_by_name(rng, method, repair_units):
    x, y = classification_data(rng, num_examples=20)
    with pytest.raises(ValueError, match=r"data\[1\] is empty"):
        merge_models(
            [_mlp(0), _mlp(1)],
            method=method,
            data=[(x, y), (x[:0], y[:0])],
            repair=repair_units,
        )


@pytest.mark.parametrize(
    "other, message",
    [
        (
            dict(activation="tanh"),
            r"layer 'dense_2' has activation 'tanh' where layer 'dense' has "
            r"'relu'",
        ),
        (
            dict(output_activation="softmax"),
            r"layer 'dense_3' has activation 'softmax' where layer 'dense_1' "
            r"has 'linear'",
        ),
    ],
)
def test_models_with_other_activations_are_refused(other, message):
    a = _mlp(0)
    b = _mlp(1, **other)
    with pytest.raises(ValueError, match=r"models\[1\] .*" + message):
        merge_models([a, b])


def test_models_with_and_without_a_bias_are_refused():
    a = _mlp(0)
    keras.utils.set_random_seed(1)
    b = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="relu", use_bias=False),
            keras.layers.Dense(3),
        ]
    )
    with pytest.raises(ValueError, match="layer 'dense_2' has use_bias False"):
        merge_models([a, b])


def test_models_differing_only_in_initializers_and_names_merge():
    a = _mlp(0, name="first")
    keras.utils.set_random_seed(1)
    b = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(3, kernel_initializer="zeros", name="out"),
        ]
    )
    merged = merge_models([a, b], align=False)
    np.testing.assert_allclose(
        merged.get_weights()[0],
        (a.get_weights()[0] + b.get_weights()[0]) / 2,
        rtol=1e-6,
    )


def _psd(rng, size):
    m = rng.normal(size=(size, size))
    return m @ m.T / size + 0.1 * np.eye(size)


def _kfac_memory(model, rng, num_examples):
    """A memory at `model`'s weights with full-rank factors per layer."""
    anchor = {
        v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables
    }
    kronecker = {}
    for layer in model.layers:
        rows = layer.kernel.shape[0] + 1
        kronecker[layer.kernel.path] = (
            layer.bias.path,
            _psd(rng, rows),
            _psd(rng, layer.units),
        )
    return FisherMemory(anchor, {}, num_examples, kronecker=kronecker)


def _stacked(model, index):
    weights = model.get_weights()
    return np.concatenate(
        [weights[2 * index], weights[2 * index + 1][None]]
    ).astype("float64")


def test_kfac_merge_is_the_closed_form_minimizer_in_either_order(rng):
    a, b = _mlp(0), _mlp(1)
    memories = [_kfac_memory(a, rng, 30), _kfac_memory(b, rng, 50)]
    weights = [1.0, 3.0]
    merged = merge_models(
        [a, b], method="kfac", memories=memories, weights=weights, align=False
    )
    reordered = merge_models(
        [b, a],
        method="kfac",
        memories=memories[::-1],
        weights=weights[::-1],
        align=False,
    )
    for index in range(2):
        # sum_k w_k n_k vec(W - W_k)^T (A_k (x) G_k) vec(W - W_k), minimized.
        blocks = [
            m.kronecker[model.layers[index].kernel.path]
            for m, model in zip(memories, (a, b))
        ]
        precisions = [
            w * m.num_examples * np.kron(block.a, block.g)
            for w, m, block in zip([0.25, 0.75], memories, blocks)
        ]
        exact = np.linalg.solve(
            sum(precisions),
            sum(
                p @ _stacked(model, index).ravel()
                for p, model in zip(precisions, (a, b))
            ),
        )
        for result in (merged, reordered):
            np.testing.assert_allclose(
                _stacked(result, index).ravel(), exact, rtol=1e-4, atol=1e-5
            )


def _heads_first(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((5, 4)),
            # Gemma's query: the kernel `(heads, dim, head_dim)`.
            keras.layers.EinsumDense("btd,ndh->btnh", (5, 2, 3)),
            keras.layers.Reshape((5, 6)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )


def test_kfac_merge_of_heads_first_kernels_is_the_closed_form(rng):
    # The factors act on `transpose(kernel, (1, 0, 2))` as a (4, 6) matrix.
    a, b = _heads_first(0), _heads_first(1)
    memories = []
    for model, n in ((a, 30), (b, 50)):
        query, out = model.layers[0], model.layers[-1]
        kronecker = {
            query.kernel.path: (
                None,
                _psd(rng, 4),
                _psd(rng, 6),
                None,
                [1, 0, 2],
            ),
            out.kernel.path: (out.bias.path, _psd(rng, 7), _psd(rng, 3)),
        }
        anchor = {
            v.path: keras.ops.convert_to_numpy(v)
            for v in model.trainable_variables
        }
        memories.append(FisherMemory(anchor, {}, n, kronecker=kronecker))
    merged = merge_models(
        [a, b],
        method="kfac",
        memories=memories,
        weights=[1.0, 3.0],
        align=False,
    )
    blocks = [
        m.kronecker[model.layers[0].kernel.path]
        for m, model in zip(memories, (a, b))
    ]
    precisions = [
        w * m.num_examples * np.kron(block.a, block.g)
        for w, m, block in zip([0.25, 0.75], memories, blocks)
    ]

    def matrix(model):
        kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
        return kernel.transpose(1, 0, 2).reshape(-1).astype("float64")

    exact = np.linalg.solve(
        sum(precisions), sum(p @ matrix(m) for p, m in zip(precisions, (a, b)))
    )
    np.testing.assert_allclose(matrix(merged), exact, rtol=1e-4, atol=1e-5)


def test_memories_in_another_order_than_the_models_are_refused(rng):
    a, b = _mlp(0), _mlp(1)
    memories = [_kfac_memory(a, rng, 30), _kfac_memory(b, rng, 50)]
    with pytest.raises(
        ValueError,
        match=r"memories\[0\] is not a memory of models\[0\].*It is the "
        r"memory of models\[1\]: give `memories` in the order of `models`",
    ):
        merge_models([a, b], method="kfac", memories=memories[::-1])
    moved = _mlp(2)
    with pytest.raises(
        ValueError, match=r"memories\[1\] is not a memory of models\[1\]"
    ):
        merge_models([a, moved], method="fisher", memories=memories)
