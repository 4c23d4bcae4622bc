import numpy as np
import pytest

from keras_memgeom.continual import ImageDataset
from keras_memgeom.continual import TaskStream


@pytest.fixture(scope="module")
def digits():
    return ImageDataset.load("digits", seed=0)


def test_digits_split(digits):
    assert digits.x_train.shape == (1437, 8, 8, 1)
    assert digits.x_test.shape == (360, 8, 8, 1)
    assert digits.num_classes == 10
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    assert (
        digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    )


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
    assert (stream.input_shape, stream.input_dim, stream.num_outputs) == (
        (8, 8, 1),
        64,
        10,
    )
    assert not stream.task_incremental
    # Images keep their shape.
    np.testing.assert_array_equal(first.x_test, digits.x_test)
    # The same pixels, in another fixed order, with the same labels.
    assert second.x_test.shape == first.x_test.shape
    assert not np.array_equal(first.x_test, second.x_test)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    np.testing.assert_array_equal(
        np.sort(flat(second.x_test), axis=1),
        np.sort(flat(first.x_test), axis=1),
    )
    np.testing.assert_array_equal(second.y_test, first.y_test)
    # 10% of the training examples are held out for validation.
    assert len(first.x_val) == 144 and len(first.x_train) == 1437 - 144


def test_rotated(digits):
    stream = TaskStream.make("rotated", digits, num_tasks=2)
    np.testing.assert_allclose(
        stream.tasks[0].x_train, digits.x_train[144:], atol=1e-6
    )
    assert stream.tasks[1].x_train.shape == (1437 - 144, 8, 8, 1)
    assert not np.allclose(stream.tasks[1].x_train, stream.tasks[0].x_train)
    # Task 1 of 2 turns the images by 90 degrees.
    np.testing.assert_allclose(
        stream.tasks[1].x_train,
        np.rot90(digits.x_train[144:], axes=(1, 2)),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "split_scenario, num_outputs, labels, classes",
    [
        ("task", 10, [2, 3], (2, 3)),
        ("domain", 2, [0, 1], None),
        ("class", 10, [2, 3], None),
    ],
)
def test_split(digits, split_scenario, num_outputs, labels, classes):
    stream = TaskStream.make(
        "split", digits, num_tasks=5, split_scenario=split_scenario
    )
    assert (stream.input_shape, stream.num_outputs) == ((8, 8, 1), num_outputs)
    task = stream.tasks[1]
    assert sorted(np.unique(task.y_train)) == labels
    assert task.x_train.shape[1:] == (8, 8, 1)
    # Task-incremental: the task's classes, whose logits the harness keeps.
    assert task.classes == classes
    assert stream.task_incremental == (split_scenario == "task")


def test_deterministic_for_a_seed():
    a = TaskStream.make("permuted", "digits", num_tasks=2, seed=3)
    b = TaskStream.make("permuted", "digits", num_tasks=2, seed=3)
    c = TaskStream.make("permuted", "digits", num_tasks=2, seed=4)
    np.testing.assert_array_equal(a.tasks[1].x_train, b.tasks[1].x_train)
    assert not np.array_equal(a.tasks[1].x_train, c.tasks[1].x_train)


def test_max_train_examples(digits):
    stream = TaskStream.make(
        "permuted", digits, num_tasks=1, max_train_examples=100
    )
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
            r"validation_split=0.999 leaves task 'permuted-0' \d+ training "
            r"examples",
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


def _as_arrays(dataset):
    pairs = list(dataset.batch(1024).as_numpy_iterator())
    return tuple(np.concatenate([p[i] for p in pairs]) for i in (0, 1))


def test_tfds_under_mock_data_is_streamed():
    tfds = pytest.importorskip("tensorflow_datasets")
    from keras_memgeom.src.continual.image_dataset import StreamedImageDataset

    with tfds.testing.mock_data(num_examples=24):
        data = ImageDataset.load("tfds:mnist")
        stream = TaskStream.make("permuted", data, num_tasks=2)
        x, y = _as_arrays(data.train)
        x_test, _ = _as_arrays(stream.tasks[1].data("test"))
    assert isinstance(data, StreamedImageDataset)
    assert data.name == "tfds:mnist" and data.num_classes == 10
    assert data.image_shape == (28, 28, 1) and x.shape == (24, 28, 28, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert stream.input_dim == 784 and x_test.shape == (24, 28, 28, 1)
    # Nothing of the examples is held: the stream needs no memory for them.
    assert TaskStream.estimate_nbytes(data, "permuted", 2)["nbytes"] == 0


@pytest.mark.parametrize(
    "scenario, split_scenario",
    [
        ("permuted", "task"),
        ("rotated", "task"),
        ("split", "task"),
        ("split", "domain"),
        ("split", "class"),
    ],
)
def test_streamed_tasks_equal_the_tasks_of_the_same_arrays(
    scenario, split_scenario
):
    """A map or filter per example gives what the array code gives."""
    tfds = pytest.importorskip("tensorflow_datasets")
    options = dict(
        num_tasks=2,
        split_scenario=split_scenario,
        validation_split=0.2,
        max_train_examples=50,
        seed=3,
    )
    with tfds.testing.mock_data(num_examples=60):
        streamed = ImageDataset.load("tfds:mnist")
        arrays = ImageDataset(
            "tfds:mnist",
            *_as_arrays(streamed.train),
            *_as_arrays(streamed.test),
            streamed.num_classes,
        )
        expected = TaskStream.make(scenario, arrays, **options)
        stream = TaskStream.make(scenario, streamed, **options)
        for task, reference in zip(stream.tasks, expected.tasks, strict=True):
            assert task.name == reference.name
            assert task.classes == reference.classes
            for split in ("train", "val", "test"):
                size = task.num_examples(split)
                assert size == reference.num_examples(split)
                if not size:
                    continue
                x, y = _as_arrays(task.data(split))
                x_ref, y_ref = reference.data(split)
                np.testing.assert_array_equal(y, y_ref)
                np.testing.assert_allclose(x, x_ref, atol=1e-6)
    assert stream.num_outputs == expected.num_outputs
    assert stream.input_shape == expected.input_shape


def test_streamed_split_refuses_a_task_count_that_does_not_divide():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        with pytest.raises(ValueError, match="divides its 10 classes"):
            TaskStream.make("split", "tfds:mnist", num_tasks=3)


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="no 'no_such_dataset'"):
        ImageDataset.load("tfds:no_such_dataset")


def test_from_arrays_keeps_shapes_and_splits(digits):
    x, y = digits.x_train[:100], digits.y_train[:100]
    stream = TaskStream.from_arrays(
        [(x[:50], y[:50]), (x[50:], y[50:])],
        test_split=0.2,
        validation_split=0.1,
        name="mine",
    )
    assert (stream.scenario, stream.dataset, stream.input_shape) == (
        "custom",
        "mine",
        (8, 8, 1),
    )
    task = stream.tasks[1]
    # 50 examples: 10 test, 4 of the other 40 for validation, 36 to train.
    assert (len(task.y_test), len(task.y_val), len(task.y_train)) == (10, 4, 36)
    assert (
        task.x_train.shape == (36, 8, 8, 1) and task.x_train.dtype == np.float32
    )
    assert stream.num_outputs == int(y.max()) + 1
    # A task given with its own test split keeps it.
    kept = TaskStream.from_arrays([(x[:40], y[:40], x[40:50], y[40:50])])
    np.testing.assert_array_equal(kept.tasks[0].x_test, x[40:50])


@pytest.mark.parametrize(
    "tasks, match",
    [
        (
            [(np.zeros((4, 8, 8, 1)), np.zeros(3, int))],
            "Task 0 has 4 inputs but 3 labels",
        ),
        (
            [(np.zeros((4, 8, 8, 1)), np.array([0, 1, 0.5, 1]))],
            "Task 0's labels hold 0.5 at index 2: labels must be integer",
        ),
        (
            [(np.zeros((4, 8, 8, 1)), np.array([0, 1, np.nan, 1]))],
            "Task 0's labels hold nan at index 2",
        ),
        (
            [
                (np.zeros((4, 2)), np.arange(4) % 2),
                (np.zeros((4, 2)), np.array([1, 0, -1, 0])),
            ],
            "Task 1's labels hold -1 at index 2",
        ),
        (
            [
                (np.zeros((4, 2)), np.arange(4) % 2),
                (np.zeros((4, 2)), np.array([1, 0, 1, 0])),
                (
                    np.zeros((4, 2)),
                    np.arange(4) % 2,
                    np.zeros((2, 2)),
                    np.array([1, 1_000_000]),
                ),
            ],
            r"Task 2's test labels hold 1000000 at index 1, though only 3 "
            "distinct labels appear",
        ),
        (
            [(np.array([[0.0], [np.inf], [1.0], [2.0]]), np.arange(4) % 2)],
            r"Task 0's inputs holds 1 NaN or infinite value\(s\), the first "
            r"at index \(1, 0\)",
        ),
        (
            # Finite in float64, infinite once cast to the float32 trained on.
            [(np.array([[0.0], [1e300], [1.0], [2.0]]), np.arange(4) % 2)],
            r"Task 0's inputs holds 1 NaN or infinite",
        ),
        (
            [
                (np.zeros((10, 8, 8, 1)), np.arange(10) % 2),
                (np.zeros((10, 4)), np.arange(10) % 2),
            ],
            r"Task 1 has inputs of shape \(4,\), other than task 0's "
            r"\(8, 8, 1\)",
        ),
        ([], "at least one task"),
    ],
)
def test_from_arrays_refuses_bad_tasks(tasks, match):
    with pytest.raises(ValueError, match=match):
        TaskStream.from_arrays(tasks)


def test_from_arrays_takes_a_wide_label_range_with_num_classes():
    x = np.random.default_rng(0).normal(size=(8, 2))
    y = np.array([0, 500, 0, 500, 0, 500, 0, 500])
    with pytest.raises(ValueError, match="hold 500 at index 1"):
        TaskStream.from_arrays([(x, y)])
    stream = TaskStream.from_arrays([(x, y)], num_classes=501)
    assert stream.num_outputs == 501
    with pytest.raises(ValueError, match="hold 500 at index 1, not below"):
        TaskStream.from_arrays([(x, y)], num_classes=500)
    # Labels up to the limit pass however few classes appear.
    stream = TaskStream.from_arrays([(x, np.where(y, 99, 0))])
    assert stream.num_outputs == 100


def test_from_datasets_reads_tf_data_and_tfds_builders():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    y = np.arange(30) % 3
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    with tfds.testing.mock_data(num_examples=12):
        builder = tfds.builder("mnist")
        stream = TaskStream.from_datasets(
            [unbatched, unbatched.batch(7)], seed=0
        )
        mnist = TaskStream.from_datasets([builder], validation_split=0)
    assert stream.input_shape == (8, 8, 1) and stream.num_outputs == 3
    assert (
        sum(
            len(getattr(stream.tasks[1], f"y_{s}"))
            for s in ("train", "val", "test")
        )
        == 30
    )
    assert (
        0 <= stream.tasks[0].x_train.min()
        and stream.tasks[0].x_train.max() <= 1
    )
    assert mnist.input_shape == (28, 28, 1) and len(mnist.tasks[0].y_test) == 12
    with pytest.raises(ValueError, match="Task 0: expected a tf.data.Dataset"):
        TaskStream.from_datasets([x])


def test_scenarios_on_an_npz_file(tmp_path):
    path = str(tmp_path / "blobs.npz")
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8),
        y=np.arange(40) % 4,
    )
    data = ImageDataset.load(path, seed=0)
    assert data.x_train.shape == (32, 6, 6, 1) and data.num_classes == 4
    for scenario in ("permuted", "rotated", "split"):
        stream = TaskStream.make(
            scenario, path, num_tasks=2, validation_split=0
        )
        assert stream.tasks[1].x_test.shape[1:] == (6, 6, 1)
    np.savez(path, images=np.zeros((4, 6, 6)))
    with pytest.raises(ValueError, match="must hold arrays 'x' and 'y'"):
        ImageDataset.load(path)


def test_harness_trains_evaluates_and_remembers_streamed_tasks():
    """Fit, evaluation and the Fisher read streamed tasks batch by batch."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import keras

    import keras_memgeom
    from keras_memgeom import continual
    from keras_memgeom.src.continual.task_stream import batched

    with tfds.testing.mock_data(num_examples=40):
        streamed = ImageDataset.load("tfds:mnist")
        arrays = ImageDataset(
            "tfds:mnist",
            *_as_arrays(streamed.train),
            *_as_arrays(streamed.test),
            streamed.num_classes,
        )
        stream = TaskStream.make("split", streamed, num_tasks=2)
        reference = TaskStream.make("split", arrays, num_tasks=2)
        harness = continual.Harness(stream, width=8, epochs=1, batch_size=8)
        model = harness.build_model(continual.Finetune())
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        task, twin = stream.tasks[1], reference.tasks[1]
        for split in ("val", "test"):
            assert harness._accuracy(model, task, split) == pytest.approx(
                harness._accuracy(model, twin, split)
            )
        memory = keras_memgeom.FisherMemory.estimate(
            model, batched(task.data("train"), 7)
        )
        expected = keras_memgeom.FisherMemory.estimate(
            model, twin.data("train")
        )
        assert memory.num_examples == twin.num_examples("train")
        for path in expected.paths:
            np.testing.assert_allclose(
                memory.fisher[path], expected.fisher[path], rtol=1e-5
            )
        document = harness.compare(
            [continual.Finetune(), continual.Online(), continual.Joint()]
        )
    for run in document["methods"].values():
        matrix = np.asarray(run["accuracy_matrix"])
        assert matrix.shape == (2, 2)
        assert np.all((0 <= matrix) & (matrix <= 1))
    assert document["methods"]["online"]["effective_dimension"][-1] > 0
