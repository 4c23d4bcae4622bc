import pytest

from keras_memgeom import continual


@pytest.fixture(scope="session")
def tiny_stream():
    """Two permuted-digits tasks of 200 training examples: seconds to learn."""
    return continual.TaskStream.make(
        "permuted", "digits", num_tasks=2, max_train_examples=200
    )


@pytest.fixture(scope="session")
def tiny_progress():
    """The progress lines `tiny_document` printed."""
    return []


@pytest.fixture(scope="session")
def tiny_document(tiny_stream, tiny_progress):
    """Every method run end to end on `tiny_stream`, once per session."""
    harness = continual.Harness(
        tiny_stream,
        width=16,
        epochs=1,
        strength_grid=(1, 1000),
        progress=tiny_progress.append,
    )
    return harness.compare(
        [
            continual.Finetune(),
            continual.Joint(),
            continual.EWC(estimator="sampled"),
            continual.Online(strength="auto", decay=0.5),
        ]
    )
