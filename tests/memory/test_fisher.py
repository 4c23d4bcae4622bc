import keras
import numpy as np
import pytest

from keras_memgeom import FisherMemory
from keras_memgeom.src.memory.fisher import estimate_fisher
from tests.memory.helpers import classification_data
from tests.memory.helpers import softmax_probabilities
from tests.memory.helpers import softmax_regression

pytestmark = pytest.mark.usefixtures("full_precision")


def _kernel_bias(fisher, model):
    layer = model.layers[-1]
    return fisher[layer.kernel.path], fisher[layer.bias.path]


def _closed_form_exact(x, p):
    variance = p * (1 - p)
    return np.mean(
        x[:, :, None] ** 2 * variance[:, None, :], axis=0
    ), variance.mean(axis=0)


@pytest.mark.parametrize("from_logits", [True, False])
def test_exact_fisher_of_softmax_regression_matches_closed_form(
    rng, from_logits
):
    x, y = classification_data(rng)
    model = softmax_regression(from_logits=from_logits)
    kernel, bias = _closed_form_exact(x, softmax_probabilities(model, x))
    fisher, n = estimate_fisher(
        model, (x, y), estimator="exact", batch_size=128
    )
    assert n == len(x)
    got_kernel, got_bias = _kernel_bias(fisher, model)
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-5)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-5)


@pytest.mark.parametrize("from_logits", [True, False])
def test_empirical_fisher_of_softmax_regression_matches_closed_form(
    rng, from_logits
):
    x, y = classification_data(rng)
    model = softmax_regression(from_logits=from_logits)
    score = np.eye(3)[y] - softmax_probabilities(model, x)
    kernel = np.mean(x[:, :, None] ** 2 * score[:, None, :] ** 2, axis=0)
    fisher, _ = estimate_fisher(model, (x, y), estimator="empirical")
    got_kernel, got_bias = _kernel_bias(fisher, model)
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-5)
    np.testing.assert_allclose(got_bias, np.mean(score**2, axis=0), rtol=1e-5)


def test_sampled_fisher_converges_to_exact(rng):
    x, y = classification_data(rng)
    model = softmax_regression()
    exact, _ = estimate_fisher(model, (x, y), estimator="exact")
    errors = []
    for num_samples in (1, 100):
        sampled, _ = estimate_fisher(
            model, (x, y), estimator="sampled", num_samples=num_samples
        )
        path = model.layers[-1].kernel.path
        errors.append(
            np.mean(np.abs(sampled[path] - exact[path]) / exact[path])
        )
    assert errors[1] < 0.05
    assert errors[1] < errors[0] / 3


def test_batched_fisher_of_single_examples_is_empirical(rng):
    x, y = classification_data(rng, num_examples=40)
    model = softmax_regression()
    empirical, _ = estimate_fisher(model, (x, y), estimator="empirical")
    batched, _ = estimate_fisher(
        model, (x, y), estimator="batched", batch_size=1
    )
    for path in empirical:
        np.testing.assert_allclose(
            batched[path], empirical[path], rtol=1e-4, atol=1e-7
        )


def test_binary_cross_entropy_fisher_is_logistic_regression_closed_form(rng):
    x = rng.normal(size=(200, 4)).astype("float32")
    y = rng.integers(0, 2, (200, 1)).astype("float32")
    for from_logits in (True, False):
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(
                    1, activation=None if from_logits else "sigmoid"
                ),
            ]
        )
        model.compile(
            loss=keras.losses.BinaryCrossentropy(from_logits=from_logits)
        )
        kernel, bias = model.get_weights()
        p = 1 / (1 + np.exp(-(x.astype("float64") @ kernel + bias)))
        fisher, _ = estimate_fisher(model, (x, y))
        got_kernel, _ = _kernel_bias(fisher, model)
        np.testing.assert_allclose(
            got_kernel,
            np.mean(x[:, :, None] ** 2 * (p * (1 - p))[:, None, :], 0),
            rtol=1e-5,
        )


def test_mean_squared_error_fisher_is_gaussian_closed_form(rng):
    x = rng.normal(size=(100, 3)).astype("float32")
    y = rng.normal(size=(100, 2)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse")
    fisher, _ = estimate_fisher(model, (x, y))
    got_kernel, got_bias = _kernel_bias(fisher, model)
    np.testing.assert_allclose(
        got_kernel, np.repeat(np.mean(x**2, 0)[:, None], 2, 1), rtol=1e-5
    )
    np.testing.assert_allclose(got_bias, np.ones(2), rtol=1e-6)


class _DenseSubclass(keras.layers.Dense):
    """Not a plain Dense: its Fisher takes the generic vectorized path."""


def test_generic_path_matches_closed_form(rng):
    x, y = classification_data(rng, num_examples=64)
    model = keras.Sequential([keras.Input((5,)), _DenseSubclass(3)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    kernel, bias = _closed_form_exact(x, softmax_probabilities(model, x))
    fisher, _ = estimate_fisher(model, (x, y), batch_size=32)
    got_kernel, got_bias = _kernel_bias(fisher, model)
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-5)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-5)


def test_generic_and_fast_paths_agree_on_a_convolutional_model(rng):
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 8)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    fisher, _ = estimate_fisher(
        model, (x, y), estimator="empirical", batch_size=4
    )
    # Reference: per-example squared gradients, one example at a time.
    reference = {v.path: 0.0 for v in model.trainable_variables}
    for i in range(len(x)):
        one, _ = estimate_fisher(
            model, (x[i : i + 1], y[i : i + 1]), estimator="batched"
        )
        for path in reference:
            reference[path] = reference[path] + one[path] / len(x)
    for path, value in reference.items():
        np.testing.assert_allclose(
            fisher[path], value, rtol=1e-4, atol=1e-8, err_msg=path
        )


def test_data_forms_give_the_same_fisher(rng):
    tf = pytest.importorskip("tensorflow")

    x, y = classification_data(rng, num_examples=100)
    model = softmax_regression()
    reference, _ = estimate_fisher(model, (x, y))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 25 : (i + 1) * 25], y[i * 25 : (i + 1) * 25]

    forms = [
        tf.data.Dataset.from_tensor_slices((x, y)).batch(30),
        Batches(),
        [(x[:50], y[:50]), (x[50:], y[50:])],
    ]
    for data in forms:
        fisher, n = estimate_fisher(model, data)
        assert n == 100
        for path in reference:
            np.testing.assert_allclose(fisher[path], reference[path], rtol=1e-5)


def test_max_examples_limits_the_data(rng):
    x, y = classification_data(rng, num_examples=100)
    model = softmax_regression()
    memory = FisherMemory.estimate(
        model, (x, y), max_examples=30, batch_size=16
    )
    assert memory.num_examples == 30
    expected, _ = estimate_fisher(model, (x[:30], y[:30]))
    np.testing.assert_allclose(
        memory.fisher[model.layers[0].kernel.path],
        expected[model.layers[0].kernel.path],
        rtol=1e-5,
    )


def test_memory_estimate_keeps_current_weights_as_anchor(rng):
    x, y = classification_data(rng, num_examples=20)
    model = softmax_regression()
    memory = FisherMemory.estimate(model, (x, y), estimator="empirical")
    np.testing.assert_array_equal(
        memory.anchor[model.layers[0].kernel.path], model.get_weights()[0]
    )
    assert memory.estimator == "empirical"


@pytest.mark.parametrize(
    "loss, message",
    [("hinge", "Unsupported loss"), (None, "no compiled loss")],
)
def test_unsupported_or_missing_loss_is_refused(rng, loss, message):
    x, y = classification_data(rng, num_examples=10)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    if loss is not None:
        model.compile(loss=loss)
    with pytest.raises(ValueError, match=message):
        estimate_fisher(model, (x, y))


def test_bad_inputs_are_refused(rng):
    x, y = classification_data(rng, num_examples=10)
    model = softmax_regression()
    with pytest.raises(ValueError, match="Unknown estimator"):
        estimate_fisher(model, (x, y), estimator="diagonal")
    with pytest.raises(ValueError, match="empty"):
        estimate_fisher(model, (x[:0], y[:0]))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_fisher(model, (bad, y))
    with pytest.raises(ValueError, match="examples but `y` has"):
        estimate_fisher(model, (x, y[:5]))
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    unbuilt.compile(loss="mse")
    with pytest.raises(ValueError, match="no trainable variables"):
        estimate_fisher(unbuilt, (x, y))
    # Per-token `(batch, positions, d)` outputs are read; images are not.
    image = keras.Sequential([keras.Input((2, 4, 5)), keras.layers.Dense(3)])
    image.compile(loss="mse")
    with pytest.raises(ValueError, match=r"\(batch, positions, d\)"):
        estimate_fisher(
            image,
            (rng.normal(size=(6, 2, 4, 5)), rng.normal(size=(6, 2, 4, 3))),
        )


@pytest.mark.parametrize("estimator", ["empirical", "batched"])
@pytest.mark.parametrize("bad_label", [3, -1])
def test_out_of_range_labels_are_refused(rng, estimator, bad_label):
    x, y = classification_data(rng, num_examples=10)
    y[4] = bad_label  # 3 is also what 1-based labels reach with 3 classes
    with pytest.raises(
        ValueError, match=rf"Label {bad_label} is out of range for 3 classes"
    ):
        estimate_fisher(softmax_regression(), (x, y), estimator=estimator)


def test_integer_labels_for_a_categorical_loss_are_refused(rng):
    x, y = classification_data(rng, num_examples=10)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    with pytest.raises(
        ValueError,
        match=r"one-hot labels of shape \(N, 3\).*sparse_categorical",
    ):
        estimate_fisher(model, (x, y[:, None]))


def test_one_hot_labels_for_a_sparse_loss_are_refused(rng):
    x, y = classification_data(rng, num_examples=10)
    with pytest.raises(
        ValueError, match="one-hot labels use categorical_crossentropy"
    ):
        estimate_fisher(
            softmax_regression(), (x, np.eye(3)[y]), estimator="empirical"
        )


def test_regression_targets_of_the_wrong_shape_are_refused(rng):
    x = rng.normal(size=(10, 5)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model.compile(loss="mse")
    with pytest.raises(
        ValueError, match=r"shape \(10, 3\) do not fit a model with 2 outputs"
    ):
        estimate_fisher(
            model, (x, rng.normal(size=(10, 3))), estimator="empirical"
        )


@pytest.mark.parametrize(
    "loss, activation",
    [
        (keras.losses.SparseCategoricalCrossentropy(), None),
        (keras.losses.BinaryCrossentropy(), None),
    ],
)
def test_logits_given_to_a_probability_loss_warn(rng, loss, activation):
    x, y = classification_data(rng, num_examples=20)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(3, activation=activation)]
    )
    model.compile(loss=loss)
    labels = (
        y
        if isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
        else np.eye(3)[y]
    )
    with pytest.warns(UserWarning, match="from_logits=True"):
        estimate_fisher(model, (x, labels))


def test_probabilities_given_to_a_probability_loss_do_not_warn(rng):
    import warnings

    x, y = classification_data(rng, num_examples=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        estimate_fisher(softmax_regression(from_logits=False), (x, y))


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("batch_size", 0, "`batch_size` must be at least 1; got 0"),
        ("batch_size", -1, "`batch_size` must be at least 1; got -1"),
        ("num_samples", 2.5, "`num_samples` must be a whole number; got 2.5"),
        ("max_examples", 0, "`max_examples` must be at least 1; got 0"),
    ],
)
def test_bad_counts_are_refused(rng, argument, value, message):
    x, y = classification_data(rng, num_examples=10)
    with pytest.raises(ValueError, match=message):
        estimate_fisher(
            softmax_regression(),
            (x, y),
            estimator="sampled",
            **{argument: value},
        )


def test_unbatched_dataset_is_refused(rng):
    import tensorflow as tf

    x, y = classification_data(rng, num_examples=10)
    with pytest.raises(ValueError, match=r"batch it with `.batch\(...\)`"):
        estimate_fisher(
            softmax_regression(), tf.data.Dataset.from_tensor_slices((x, y))
        )
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    one_hot = tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y]))
    with pytest.raises(
        ValueError,
        match="disagree in their first .batch. axis: is the data unbatched",
    ):
        estimate_fisher(model, one_hot)
    # Five features and five classes: only the model's input rank tells.
    square = keras.Sequential([keras.Input((5,)), keras.layers.Dense(5)])
    square.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    one_hot = tf.data.Dataset.from_tensor_slices((x, np.eye(5)[y]))
    with pytest.raises(
        ValueError, match=r"shape \(5,\) but the model takes .* no batch axis"
    ):
        estimate_fisher(square, one_hot)


def test_endless_data_needs_max_examples(rng):
    import tensorflow as tf

    x, y = classification_data(rng, num_examples=10)
    model = softmax_regression()

    class Endless(keras.utils.PyDataset):
        @property
        def num_batches(self):
            return None

        def __getitem__(self, i):
            return x, y

    def generator():
        while True:
            yield x, y

    forms = {
        "infinite cardinality": tf.data.Dataset.from_tensor_slices((x, y))
        .batch(5)
        .repeat(),
        "PyDataset has no length": Endless(),
        "one-shot iterator": generator(),
    }
    for message, data in forms.items():
        with pytest.raises(ValueError, match=f"{message}.*`max_examples`"):
            estimate_fisher(model, data)
    reference, _ = estimate_fisher(model, (x, y))
    for data in (forms["infinite cardinality"], Endless(), generator()):
        fisher, n = estimate_fisher(model, data, max_examples=20)  # x twice
        assert n == 20
        path = model.layers[0].kernel.path
        np.testing.assert_allclose(fisher[path], reference[path], rtol=1e-5)


def test_two_output_model_with_one_loss_is_refused(rng):
    x, y = classification_data(rng, num_examples=10)
    inputs = keras.Input((5,))
    model = keras.Model(
        inputs,
        [
            keras.layers.Dense(3, name="first")(inputs),
            keras.layers.Dense(2, name="second")(inputs),
        ],
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    with pytest.raises(ValueError, match=r"one output.*\['first', 'second'\]"):
        estimate_fisher(model, (x, y))


@pytest.mark.parametrize(
    "conv",
    [
        dict(padding="valid"),
        dict(padding="same", strides=2),
        dict(padding="same", dilation_rate=2, use_bias=False),
        dict(padding="valid", strides=(2, 1)),
    ],
)
def test_conv2d_fast_path_matches_per_example_gradients(rng, conv):
    x = rng.normal(size=(6, 7, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 6)
    model = keras.Sequential(
        [
            keras.Input((7, 6, 2)),
            keras.layers.Conv2D(3, (3, 2), activation="tanh", **conv),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    fisher, _ = estimate_fisher(
        model, (x, y), estimator="empirical", batch_size=4
    )
    # Reference: plain whole-model gradients of single examples (`batched`
    # never uses the taps).
    singles = [
        estimate_fisher(
            model, (x[i : i + 1], y[i : i + 1]), estimator="batched"
        )[0]
        for i in range(6)
    ]
    for path in fisher:
        expected = np.mean([single[path] for single in singles], axis=0)
        np.testing.assert_allclose(
            fisher[path], expected, rtol=1e-4, atol=1e-8, err_msg=path
        )
