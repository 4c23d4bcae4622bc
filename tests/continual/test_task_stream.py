import numpy as np
import pytest

from keras_memgeom.continual import ImageDataset, TaskStream


@pytest.fixture(scope="module")
def digits():
    return ImageDataset.load("digits", seed=0)


def test_digits_split(digits):
    assert digits.x_train.shape == (1437, 8, 8, 1)
    assert digits.x_test.shape == (360, 8, 8, 1)
    assert digits.num_classes == 10
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32


def test_mnist5k_split():
    data = ImageDataset.load("mnist5k", seed=0)
    assert data.x_train.shape == (4000, 28, 28, 1)
    assert data.x_test.shape == (1000, 28, 28, 1)
    assert data.x_train.max() <= 1.0
    assert len(np.unique(data.y_test)) == 10


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown data set 'nope'"):
        ImageDataset.load("nope")


def test_permuted(digits):
    stream = TaskStream.make("permuted", digits, num_tasks=3, seed=1)
    first, second = stream.tasks[0], stream.tasks[1]
    assert (stream.input_dim, stream.num_outputs, stream.task_inputs) == (64, 10, 0)
    np.testing.assert_array_equal(first.x_test, digits.x_test.reshape(-1, 64))
    # The same pixels, in another fixed order, with the same labels.
    assert not np.array_equal(first.x_test, second.x_test)
    np.testing.assert_array_equal(np.sort(second.x_test, axis=1), np.sort(first.x_test, axis=1))
    np.testing.assert_array_equal(second.y_test, first.y_test)
    # 10% of the training examples are held out for validation.
    assert len(first.x_val) == 144 and len(first.x_train) == 1437 - 144


def test_rotated(digits):
    stream = TaskStream.make("rotated", digits, num_tasks=2)
    np.testing.assert_allclose(
        stream.tasks[0].x_train, digits.x_train[144:].reshape(-1, 64), atol=1e-6
    )
    assert not np.allclose(stream.tasks[1].x_train, stream.tasks[0].x_train)


@pytest.mark.parametrize(
    "split_scenario, input_dim, num_outputs, labels",
    [("task", 69, 2, [0, 1]), ("domain", 64, 2, [0, 1]), ("class", 64, 10, [2, 3])],
)
def test_split(digits, split_scenario, input_dim, num_outputs, labels):
    stream = TaskStream.make("split", digits, num_tasks=5, split_scenario=split_scenario)
    assert (stream.input_dim, stream.num_outputs) == (input_dim, num_outputs)
    task = stream.tasks[1]
    assert sorted(np.unique(task.y_train)) == labels
    assert task.x_train.shape[1] == input_dim
    if split_scenario == "task":
        np.testing.assert_array_equal(task.x_test[:, 64:], np.eye(5)[[1] * len(task.x_test)])


def test_deterministic_for_a_seed():
    a = TaskStream.make("permuted", "digits", num_tasks=2, seed=3)
    b = TaskStream.make("permuted", "digits", num_tasks=2, seed=3)
    c = TaskStream.make("permuted", "digits", num_tasks=2, seed=4)
    np.testing.assert_array_equal(a.tasks[1].x_train, b.tasks[1].x_train)
    assert not np.array_equal(a.tasks[1].x_train, c.tasks[1].x_train)


def test_max_train_examples(digits):
    stream = TaskStream.make("permuted", digits, num_tasks=1, max_train_examples=100)
    assert len(stream.tasks[0].x_train) + len(stream.tasks[0].x_val) == 100


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scenario": "shuffled"}, "Unknown scenario 'shuffled'"),
        ({"split_scenario": "instance"}, "Unknown split scenario"),
        ({"num_tasks": 0}, "num_tasks"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"scenario": "split", "num_tasks": 3}, "divides its 10 classes"),
        ({"validation_split": float("nan")}, "validation_split"),
        (
            {"validation_split": 0.999},
            r"validation_split=0.999 leaves task 'permuted-0' \d+ training examples",
        ),
        (
            {"scenario": "split", "num_tasks": 5, "validation_split": 0.001},
            "holds out no validation example of task 'split-task-0'",
        ),
    ],
)
def test_bad_arguments(digits, kwargs, match):
    kwargs = {"scenario": "permuted", **kwargs}
    with pytest.raises(ValueError, match=match):
        TaskStream.make(dataset=digits, **kwargs)


def test_tfds_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        data = ImageDataset.load("tfds:mnist")
        stream = TaskStream.make("permuted", data, num_tasks=2)
    assert data.name == "tfds:mnist"
    assert data.x_train.shape == (24, 28, 28, 1) and data.x_test.shape == (24, 28, 28, 1)
    assert data.num_classes == 10
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert stream.input_dim == 784 and len(stream.tasks[1].x_test) == 24


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="no 'no_such_dataset'"):
        ImageDataset.load("tfds:no_such_dataset")
