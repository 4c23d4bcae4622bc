"""Closed-form combination of memories: the sum of quadratics is quadratic."""

import numpy as np

from keras_memgeom.memory.fisher_memory import FisherMemory
from keras_memgeom.utils.checks import check_number


def merge(memories, *, decay=1.0):
    """Combines memories of the same variables into one.

    With precisions `P_k = n_k F_k`:

        P = sum_k w_k P_k,   anchor = P^-1 sum_k w_k P_k anchor_k,
        n = sum_k n_k,       F = P / n,

    where `w_k = decay ** (number of memories after k)`: memories are given
    oldest first, and `decay < 1` forgets old precision (online
    consolidation). Where no memory holds information (`P = 0`) the anchor is
    the newest memory's.

    Args:
        memories: a non-empty list of `FisherMemory`, oldest first.
        decay: in `(0, 1]`.

    Returns:
        A `FisherMemory`.

    Raises:
        ValueError: if the list is empty or holds something else than
            memories, `decay` is not a finite number in `(0, 1]`, or the
            memories name different variables or shapes (the variable is
            named).

    Example:
    >>> memory = merge([memory_a, memory_b])
    """
    memories = list(memories)
    if not memories:
        raise ValueError("`merge` needs at least one memory.")
    for memory in memories:
        if not isinstance(memory, FisherMemory):
            raise ValueError(f"`merge` takes FisherMemory objects; got {type(memory).__name__}.")
    decay = check_number("decay", decay, minimum=0.0, inclusive_minimum=False, maximum=1.0)
    paths = memories[0].paths
    anchors = [m.anchor for m in memories]
    fishers = [m.fisher for m in memories]
    for k, memory in enumerate(memories[1:], start=1):
        if set(memory.paths) != set(paths):
            raise ValueError(
                "Memories of different variables cannot be merged: "
                f"{sorted(set(paths) ^ set(memory.paths))} differ."
            )
        for path in paths:
            if anchors[k][path].shape != anchors[0][path].shape:
                raise ValueError(
                    f"Memories of different shapes cannot be merged: {path!r} has shape "
                    f"{anchors[0][path].shape} in memory 0 but {anchors[k][path].shape} "
                    f"in memory {k}."
                )
    weights = [decay ** (len(memories) - 1 - k) for k in range(len(memories))]
    num_examples = sum(m.num_examples for m in memories)
    anchor, fisher = {}, {}
    for path in paths:
        newest = anchors[-1][path].astype("float64")
        precision = np.zeros_like(newest)
        moment = np.zeros_like(newest)
        for w, memory, a, f in zip(weights, memories, anchors, fishers):
            p = w * memory.num_examples * f[path].astype("float64")
            precision += p
            moment += p * a[path]
        held = precision > 0
        anchor[path] = np.where(held, moment / np.where(held, precision, 1.0), newest)
        fisher[path] = precision / num_examples
    estimators = {m.estimator for m in memories}
    return FisherMemory(
        anchor, fisher, num_examples, estimator=estimators.pop() if len(estimators) == 1 else "mixed"
    )
