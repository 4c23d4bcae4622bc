import os

# Set before TensorFlow is imported, or it prints its start-up log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_memgeom import backend  # noqa: E402
from keras_memgeom.src.continual import strategy  # noqa: E402


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Auto-numbered layer names depend on what ran before; tests must not.
    # Without its full garbage collection (about 0.5 s a test), which the
    # interpreter's own collector makes unnecessary.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    # Strategies registered by a test (or a docs example) stay with it.
    registered = dict(strategy._STRATEGIES)
    yield
    strategy._STRATEGIES.clear()
    strategy._STRATEGIES.update(registered)


@pytest.fixture
def full_precision():
    """Full float32 matmuls: GPUs default to TF32, too coarse for tests."""
    with backend.full_precision_matmul():
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def other_backends():
    return [
        b
        for b in ("jax", "tensorflow", "torch")
        if b != keras.backend.backend()
    ]
