import keras
import numpy as np
import pytest

from keras_memgeom.symmetry import hidden_units
from keras_memgeom.symmetry import units_of
from keras_memgeom.symmetry import weight_layers
from tests.symmetry.symmetry_models import BUILDERS
from tests.symmetry.symmetry_models import randomize

to_numpy = keras.ops.convert_to_numpy


def _branching():
    """One hidden layer read by two Dense layers whose outputs are added."""
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="relu", name="shared")(inputs)
    left = keras.layers.Dense(4, name="left")(hidden)
    right = keras.layers.Dropout(0.3)(hidden)
    right = keras.layers.Dense(4, name="right")(right)
    outputs = keras.layers.Add(name="join")([left, right])
    return keras.Model(inputs, outputs)


def _einsum():
    return keras.Sequential(
        [
            keras.Input((3, 5)),
            keras.layers.EinsumDense(
                "abc,cd->abd", output_shape=(3, 6), bias_axes="d"
            ),
            keras.layers.Activation("tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )


MODELS = dict(
    {name: builder for name, (builder, _) in BUILDERS.items()},
    branching=_branching,
    einsum=_einsum,
)
INPUT_SHAPES = dict(
    {name: shape for name, (_, shape) in BUILDERS.items()},
    branching=(5,),
    einsum=(3, 5),
)


def _permute_every_hidden_layer(model, seed=0):
    """Permutes, in NumPy, every permutable layer the walker reports.

    Written from the definition of a unit: the owner's kernel columns,
    bias and mask columns, its followers' parameters (first axis, per
    position) and each reader's kernel and mask rows (per position after a
    Flatten) move together. A reader or follower the walker missed would
    change the function.
    """
    rng = np.random.default_rng(seed)
    permuted = 0
    for record in hidden_units(model):
        if not record.permutable:
            continue
        permuted += 1
        n = record.units
        permutation = rng.permutation(n)
        for variable in record.layer.weights:
            value = to_numpy(variable)
            variable.assign(value[..., permutation])
        for follower in record.followers:
            for variable in follower.weights:
                variable.assign(_take(to_numpy(variable), permutation, 0))
        for reader in record.readers:
            for variable in reader.layer.weights:
                if variable.path.endswith("bias"):
                    continue
                value = to_numpy(variable)
                assert value.shape[-2] == reader.repeats * n
                variable.assign(_take(value, permutation, value.ndim - 2))
    return permuted


def _take(value, permutation, axis):
    """Permutes the units along `axis`, which holds them position-major."""
    n = len(permutation)
    split = value.reshape(
        value.shape[:axis] + (-1, n) + value.shape[axis + 1 :]
    )
    return np.take(split, permutation, axis=axis + 1).reshape(value.shape)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mlp", 2),
        ("convnet", 3),
        ("pruned_mlp", 2),
        ("polynomial", 2),
        ("branching", 1),
        ("einsum", 1),
    ],
)
def test_permuting_every_hidden_layer_keeps_the_function(name, expected):
    model = randomize(MODELS[name]())
    x = np.random.default_rng(1).normal(size=(8,) + INPUT_SHAPES[name])
    x = x.astype("float32")
    before = to_numpy(model(x, training=False))
    weights = [to_numpy(v) for v in model.weights]
    assert _permute_every_hidden_layer(model) == expected
    after = to_numpy(model(x, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    # The weights did move: the check above is not vacuous.
    moved = [
        not np.array_equal(w, to_numpy(v))
        for w, v in zip(weights, model.weights)
    ]
    assert any(moved)


def test_units_readers_and_followers_of_an_mlp():
    model = BUILDERS["mlp"][0]()
    first, second, last = weight_layers(model)
    records = hidden_units(model)
    assert [r.layer for r in records] == [first, second]
    assert [r.units for r in records] == [9, 8]
    assert [r.layer for r in records[0].readers] == [second]
    assert [type(f).__name__ for f in records[0].followers] == [
        "BatchNormalization"
    ]
    assert [r.layer for r in records[1].readers] == [last]
    assert [type(f).__name__ for f in records[1].followers] == [
        "LayerNormalization"
    ]
    assert all(r.permutable for r in records)
    output = units_of(model, last)
    assert output.is_output and not output.readers and not output.permutable
    with pytest.raises(ValueError, match="not hidden"):
        output.check_permutable()


def test_flatten_repeats_each_channel_once_per_position():
    model = BUILDERS["convnet"][0]()
    conv_a, conv_b, dense, _ = weight_layers(model)
    # 6x6 input, 3x3 valid conv: 4x4; 2x2 pooling: 2x2, 1x1 conv: 2x2.
    assert units_of(model, conv_a).readers[0].layer is conv_b
    assert units_of(model, conv_a).readers[0].repeats == 1
    reader = units_of(model, conv_b).readers[0]
    assert (reader.layer, reader.repeats) == (dense, 4)
    assert dense.kernel.shape[0] == 4 * conv_b.filters


def test_mixing_layer_is_named():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    skipped = keras.layers.Add(name="skip")([inputs, hidden])
    model = keras.Model(inputs, keras.layers.Dense(1)(skipped))
    record = units_of(model, model.get_layer("hidden"))
    assert [layer.name for layer in record.mixing] == ["skip"]
    assert not record.permutable
    with pytest.raises(ValueError, match="'hidden'.*'skip' \\(Add\\)"):
        record.check_permutable()


def test_a_layer_mixing_two_paths_counts_once():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    relu = keras.layers.ReLU()(hidden)
    both = keras.layers.Add(name="join")([hidden, relu])
    model = keras.Model(inputs, keras.layers.Dense(1)(both))
    record = units_of(model, model.get_layer("hidden"))
    assert [layer.name for layer in record.mixing] == ["join"]


def test_normalization_across_units_and_positions_mixes():
    model = keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(3, 3, name="conv"),
            keras.layers.LayerNormalization(axis=[1, 2, 3], name="norm"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    (record,) = hidden_units(model)
    with pytest.raises(ValueError, match="'norm'.*last axis"):
        record.check_permutable()


def test_einsum_dense_that_is_not_a_dense_is_refused():
    model = keras.Sequential(
        [
            keras.Input((3, 5)),
            keras.layers.EinsumDense(
                "abc,cd->adb", output_shape=(6, 3), name="transposing"
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="'transposing' \\(EinsumDense\\)"):
        weight_layers(model)


def test_layer_outside_the_model_and_layer_without_units():
    model = BUILDERS["mlp"][0]()
    with pytest.raises(ValueError, match="'stranger' is not a layer"):
        units_of(model, keras.layers.Dense(2, name="stranger"))
    with pytest.raises(ValueError, match="BatchNormalization.*no kernel"):
        units_of(model, model.layers[1])


def test_shared_layer_is_named():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="twice")
    outputs = keras.layers.Dense(1, name="after")(shared(shared(inputs)))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="'after'.*called more than once"):
        hidden_units(model)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="neither Sequential nor functional"):
        weight_layers(model)


def test_a_reloaded_sequential_is_walked_like_the_original(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(7, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    model.compile("sgd", "mse")
    model.fit(np.zeros((4, 5)), np.zeros((4, 3)), verbose=0)
    # Reloading builds the layers again: their first calls' tensors no
    # longer chain from `model.inputs`.
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    loaded.predict(np.zeros((2, 5)), verbose=0)
    (record,) = hidden_units(loaded)
    assert record.layer is loaded.layers[0] and record.units == 7
    assert [r.layer for r in record.readers] == [loaded.layers[1]]
