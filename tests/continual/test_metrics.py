import numpy as np
import pytest

from keras_memgeom.src.continual import metrics

# Three tasks; the untrained model scores 0.1 everywhere.
R = [
    [0.9, 0.2, 0.1],
    [0.7, 0.8, 0.3],
    [0.5, 0.6, 0.9],
]
B = [0.1, 0.1, 0.1]


def test_average_accuracy():
    assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.6 + 0.9) / 3)


def test_average_accuracy_curve():
    assert metrics.average_accuracy_curve(R) == pytest.approx(
        [0.9, 0.75, 2.0 / 3]
    )


def test_backward_transfer():
    # ((0.5 - 0.9) + (0.6 - 0.8)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.3)


def test_forward_transfer():
    # ((0.2 - 0.1) + (0.3 - 0.1)) / 2
    assert metrics.forward_transfer(R, B) == pytest.approx(0.15)


def test_forgetting_uses_best_earlier_accuracy():
    # Task 0: best 0.9, final 0.5; task 1: best 0.8, final 0.6.
    assert metrics.forgetting(R) == pytest.approx(0.3)
    # Accuracy that rose before falling counts from its peak, not its start.
    assert metrics.forgetting(
        [[0.5, 0, 0], [0.9, 0.8, 0], [0.4, 0.8, 1]]
    ) == pytest.approx(0.25)


def test_learning_accuracy():
    assert metrics.learning_accuracy(R) == pytest.approx((0.9 + 0.8 + 0.9) / 3)


def test_summarize_and_single_task():
    summary = metrics.summarize(np.array([[0.7]]), [0.1])
    assert summary["average_accuracy"] == pytest.approx(0.7)
    assert summary["learning_accuracy"] == pytest.approx(0.7)
    assert summary["backward_transfer"] is None
    assert summary["forward_transfer"] is None
    assert summary["forgetting"] is None
    assert set(metrics.summarize(R, B)) == {
        "average_accuracy",
        "average_accuracy_curve",
        "backward_transfer",
        "forward_transfer",
        "forgetting",
        "learning_accuracy",
    }


def test_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="initial_accuracy"):
        metrics.forward_transfer(R, [0.1])
