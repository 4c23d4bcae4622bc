"""Closed-form combination of memories: the sum of quadratics is quadratic."""

import numpy as np

from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker import block_matrix_shape
from keras_memgeom.src.memory.kronecker import factor_rank
from keras_memgeom.src.memory.kronecker import kernel_matrix
from keras_memgeom.src.memory.kronecker import kronecker_sum_minimizer
from keras_memgeom.src.memory.kronecker import matrix_kernel
from keras_memgeom.src.memory.kronecker import merge_anchor
from keras_memgeom.src.memory.kronecker import nearest_kronecker
from keras_memgeom.src.memory.kronecker import truncate_factor
from keras_memgeom.src.memory.kronecker import untruncated
from keras_memgeom.src.utils.checks import check_positive


def merge(memories, *, decay=1.0):
    """Combines memories of the same variables into one.

    With precisions `P_k = n_k F_k`:

        P = sum_k w_k P_k,   anchor = P^-1 sum_k w_k P_k anchor_k,
        n = sum_k n_k,       F = P / n,

    where `w_k = decay ** (number of memories after k)`: memories are given
    oldest first, and `decay < 1` forgets old precision (online
    consolidation). Where no memory holds information (`P = 0`) the anchor is
    the newest memory's. Otherwise, with `decay = 1`, the merge is the sum
    of the quadratics and does not depend on the order. A Kronecker block
    keeps the exact minimizer of the summed quadratics as its anchor and
    the single product nearest to the summed precision.

    Args:
        memories: a non-empty list of `FisherMemory`, oldest first.
        decay: in `(0, 1]`.

    Returns:
        A `FisherMemory`.

    Raises:
        ValueError: if `memories` is not a list, is empty or holds
            something else than memories (the index is named), `decay` is
            not a finite number in `(0, 1]`, or the memories name different
            variables, shapes or Kronecker blocks (the variable is named).

    Example:

    ```python
    import keras
    import numpy as np

    import keras_memgeom

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 3
    model = keras_memgeom.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    model.fit(x, y, epochs=2, verbose=0)

    memory_a = keras_memgeom.FisherMemory.estimate(model, (x, y))
    model.fit(x[:, ::-1], y, epochs=2, verbose=0)
    memory_b = keras_memgeom.FisherMemory.estimate(model, (x[:, ::-1], y))
    merged = keras_memgeom.merge([memory_a, memory_b], decay=0.9)
    print(merged.num_examples)  # 128
    ```
    """
    if not isinstance(memories, (list, tuple)):
        raise ValueError(
            "`merge` takes a list of FisherMemory objects, oldest first; got "
            f"one {type(memories).__name__}."
        )
    memories = list(memories)
    if not memories:
        raise ValueError("`merge` needs at least one memory.")
    for k, memory in enumerate(memories):
        if not isinstance(memory, FisherMemory):
            raise ValueError(
                "`merge` takes FisherMemory objects; got "
                f"{type(memory).__name__} as memories[{k}]."
            )
    decay = check_positive("decay", decay, maximum=1.0)
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
                    f"Memories of different shapes cannot be merged: {path!r} "
                    f"has shape {anchors[0][path].shape} in memory 0 but "
                    f"{anchors[k][path].shape} in memory {k}."
                )
    weights = [decay ** (len(memories) - 1 - k) for k in range(len(memories))]
    num_examples = sum(m.num_examples for m in memories)
    blocks = common_blocks(memories)
    covered = set(blocks) | {
        b.bias for b in blocks.values() if b.bias is not None
    }
    anchor, fisher, kronecker = {}, {}, {}
    for kernel, block in blocks.items():
        anchor[kernel], bias_anchor, kronecker[kernel] = _merge_block(
            kernel, block.bias, memories, anchors, weights, num_examples
        )
        if block.bias is not None:
            anchor[block.bias] = bias_anchor
    for path in (p for p in paths if p not in covered):
        newest = anchors[-1][path].astype("float64")
        precision = np.zeros_like(newest)
        moment = np.zeros_like(newest)
        for w, memory, a, f in zip(weights, memories, anchors, fishers):
            p = w * memory.num_examples * f[path].astype("float64")
            precision += p
            moment += p * a[path]
        held = precision > 0
        anchor[path] = np.where(
            held, moment / np.where(held, precision, 1.0), newest
        )
        fisher[path] = precision / num_examples
    estimators = {m.estimator for m in memories}
    return FisherMemory(
        {p: anchor[p] for p in paths},
        fisher,
        num_examples,
        estimator=estimators.pop() if len(estimators) == 1 else "mixed",
        kronecker=kronecker,
    )


def common_blocks(memories):
    """The Kronecker blocks all `memories` share; errors name a difference."""
    layouts = [
        {
            k: (b.bias, None if b.mask is None else b.mask.tobytes(), b.axes)
            for k, b in m.kronecker.items()
        }
        for m in memories
    ]
    for k, layout in enumerate(layouts[1:], start=1):
        if layout != layouts[0]:
            raise ValueError(
                "Memories of different structures cannot be combined: memory 0 "
                "has Kronecker blocks (with their biases, masks and kernel "
                "axes) on "
                f"{sorted(layouts[0])} but memory {k} on {sorted(layout)}. "
                "`memory.diagonal()` makes a diagonal memory of either."
            )
    return memories[-1].kronecker


def _merge_block(kernel, bias, memories, anchors, weights, num_examples):
    """Merges one layer's Kronecker terms into one block.

    A sum of Kronecker products is not one. The anchor is the exact
    minimizer of the sum of all the memories' quadratics (`merge_anchor`
    for two unmasked ones, else `kronecker_sum_minimizer`; both leave
    directions no memory constrains at the newest anchor, as the diagonal
    merge does), and the precision is the single product nearest to the sum
    (`nearest_kronecker`). Both are symmetric in the terms: with
    `decay = 1` the order of the memories changes nothing but which anchor
    the unconstrained directions keep.

    Truncated factors (`EigenFactor`) are merged as the full matrices they
    stand for, which is exact for what they hold, and the merged factors
    are truncated again to the newest memory's rank (or kept whole where it
    keeps them whole): a memory's size stays bounded over any number of
    merges, at the host cost of one eigendecomposition per factor.
    Diagonal factors (an `Embedding`'s) merge as diagonals, in
    `O(vocabulary)`.
    """
    shape = anchors[0][kernel].shape
    first = memories[0].kronecker[kernel]

    def stacked(a):
        matrix = kernel_matrix(a[kernel], first).astype("float64")
        return (
            np.concatenate([matrix, a[bias].reshape(1, -1)], axis=0)
            if bias is not None
            else matrix
        )

    terms = [
        (
            stacked(a),
            w * m.num_examples,
            untruncated(m.kronecker[kernel].a),
            untruncated(m.kronecker[kernel].g),
        )
        for w, m, a in zip(weights, memories, anchors)
    ]
    if len(terms) == 1:
        anchor, (_, weight, a, g) = terms[0][0], terms[0]
        a = a * weight
    else:
        if len(terms) == 2 and first.mask is None:
            # Exact, in the joint eigenbasis; what online merges take.
            anchor = merge_anchor(*terms)
        else:
            anchor = kronecker_sum_minimizer(terms, terms[-1][0], first.mask)
        a, g = nearest_kronecker([term[1:] for term in terms])
    # Per-example factors: n A (x) G is the precision.
    a = a / num_examples
    newest = memories[-1].kronecker[kernel]
    a, g = (
        truncate_factor(factor, factor_rank(own))
        for factor, own in ((a, newest.a), (g, newest.g))
    )
    fan_in = block_matrix_shape(first, shape)[0]
    bias_anchor = None
    if bias is not None:
        bias_anchor = anchor[fan_in].reshape(anchors[0][bias].shape)
    return (
        matrix_kernel(anchor[:fan_in], first, shape),
        bias_anchor,
        KroneckerBlock(bias, a, g, first.mask, first.axes),
    )
