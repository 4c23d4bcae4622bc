"""Closed-form combination of memories: the sum of quadratics is quadratic."""

import numpy as np

from keras_memgeom.memory.fisher_memory import FisherMemory


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
        ValueError: if the list is empty, `decay` is out of range, or the
            memories name different variables or shapes.

    Example:
    >>> memory = merge([memory_a, memory_b])
    """
    memories = list(memories)
    if not memories:
        raise ValueError("`merge` needs at least one memory.")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"`decay` must be in (0, 1]; got {decay}.")
    paths = memories[0].paths
    for memory in memories[1:]:
        if memory.paths != paths:
            raise ValueError(
                "Memories of different variables cannot be merged: "
                f"{sorted(set(paths) ^ set(memory.paths))} differ."
            )
    weights = [decay ** (len(memories) - 1 - k) for k in range(len(memories))]
    num_examples = sum(m.num_examples for m in memories)
    anchor, fisher = {}, {}
    for path in paths:
        newest = memories[-1].anchor[path].astype("float64")
        precision = np.zeros_like(newest)
        moment = np.zeros_like(newest)
        for w, memory in zip(weights, memories):
            p = w * memory.num_examples * memory.fisher[path].astype("float64")
            precision += p
            moment += p * memory.anchor[path]
        held = precision > 0
        anchor[path] = np.where(held, moment / np.where(held, precision, 1.0), newest)
        fisher[path] = precision / num_examples
    estimators = {m.estimator for m in memories}
    return FisherMemory(
        anchor, fisher, num_examples, estimator=estimators.pop() if len(estimators) == 1 else "mixed"
    )
