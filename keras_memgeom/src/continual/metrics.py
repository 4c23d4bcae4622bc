"""Continual-learning metrics of an accuracy matrix.

`R[i, j]` is the accuracy on task `j` after training on tasks `0..i`
(Lopez-Paz & Ranzato, 2017). With `T` tasks:

- average accuracy: `mean_j R[T-1, j]`;
- backward transfer: `mean_{j<T-1} (R[T-1, j] - R[j, j])` (negative:
  forgetting);
- forward transfer: `mean_{j>0} (R[j-1, j] - b[j])`, `b[j]` the accuracy
  of the untrained model on task `j`;
- forgetting: `mean_{j<T-1} (max_{j<=l<T-1} R[l, j] - R[T-1, j])`
  (Chaudhry et al., 2018);
- learning accuracy: `mean_j R[j, j]`, accuracy right after learning a
  task, i.e. plasticity (Riemer et al., 2019).

Measures that need two tasks or more are `None` for a single task.
"""

import numpy as np


def _matrix(accuracy_matrix):
    matrix = np.asarray(accuracy_matrix, dtype="float64")
    if (
        matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
        or not matrix.size
    ):
        raise ValueError(
            "The accuracy matrix must be square and non-empty, got shape "
            f"{matrix.shape}."
        )
    return matrix


def average_accuracy(accuracy_matrix):
    """Mean accuracy over all tasks after training on the last one."""
    return float(_matrix(accuracy_matrix)[-1].mean())


def average_accuracy_curve(accuracy_matrix):
    """Mean accuracy over the tasks seen so far, after each task.

    Returns:
        A list whose entry `i` is `mean_{j<=i} R[i, j]`.
    """
    matrix = _matrix(accuracy_matrix)
    return [float(matrix[i, : i + 1].mean()) for i in range(len(matrix))]


def backward_transfer(accuracy_matrix):
    """How training on later tasks changed the accuracy on earlier ones."""
    matrix = _matrix(accuracy_matrix)
    if len(matrix) < 2:
        return None
    return float((matrix[-1, :-1] - np.diag(matrix)[:-1]).mean())


def forward_transfer(accuracy_matrix, initial_accuracy):
    """How training on earlier tasks helps a task before it is trained on.

    Args:
        accuracy_matrix: the `T x T` accuracy matrix.
        initial_accuracy: accuracy of the untrained model on each task.
    """
    matrix = _matrix(accuracy_matrix)
    if len(matrix) < 2:
        return None
    baseline = np.asarray(initial_accuracy, dtype="float64")
    if baseline.shape != (len(matrix),):
        raise ValueError(
            f"initial_accuracy needs one entry per task ({len(matrix)}), got "
            f"shape {baseline.shape}."
        )
    return float((np.diag(matrix, k=1) - baseline[1:]).mean())


def forgetting(accuracy_matrix):
    """Mean drop from the best earlier accuracy to the final accuracy."""
    matrix = _matrix(accuracy_matrix)
    if len(matrix) < 2:
        return None
    drops = [
        matrix[j:-1, j].max() - matrix[-1, j] for j in range(len(matrix) - 1)
    ]
    return float(np.mean(drops))


def learning_accuracy(accuracy_matrix):
    """Mean accuracy on each task right after training on it."""
    return float(np.diag(_matrix(accuracy_matrix)).mean())


def summarize(accuracy_matrix, initial_accuracy):
    """All the metrics above, by name.

    Args:
        accuracy_matrix: the `T x T` accuracy matrix.
        initial_accuracy: accuracy of the untrained model on each task.

    Returns:
        A dict with keys `average_accuracy`, `average_accuracy_curve`,
        `backward_transfer`, `forward_transfer`, `forgetting` and
        `learning_accuracy`.

    Example:

    >>> round(summarize([[0.9, 0.1], [0.6, 0.8]], [0.1, 0.1])["forgetting"], 2)
    0.3
    """
    return {
        "average_accuracy": average_accuracy(accuracy_matrix),
        "average_accuracy_curve": average_accuracy_curve(accuracy_matrix),
        "backward_transfer": backward_transfer(accuracy_matrix),
        "forward_transfer": forward_transfer(accuracy_matrix, initial_accuracy),
        "forgetting": forgetting(accuracy_matrix),
        "learning_accuracy": learning_accuracy(accuracy_matrix),
    }
