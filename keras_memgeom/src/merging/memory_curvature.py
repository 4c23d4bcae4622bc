"""A Fisher memory's curvature on a model's variables, for the merges."""

import warnings

import numpy as np
from keras import ops

from keras_memgeom.src.memory.fisher_memory import FisherMemory
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker import factor_size
from keras_memgeom.src.memory.kronecker import permuted_factors
from keras_memgeom.src.memory.kronecker import untruncated
from keras_memgeom.src.symmetry.align import permuted_copy
from keras_memgeom.src.symmetry.unit_chain import copy_model


def check_memory_order(models, memories):
    """Refuses a memory whose anchor is not its model's weights.

    The merge weighs each model's weights by its memory's curvature, so a
    memory of another model (lists in different orders) would silently
    weigh the wrong weights.
    """
    for k, memory in enumerate(memories):
        if not isinstance(memory, FisherMemory):
            raise ValueError(
                "`memories` takes FisherMemory objects; got "
                f"{type(memory).__name__} as memories[{k}]."
            )
    for k, (model, memory) in enumerate(zip(models, memories)):
        path = _anchor_mismatch(model, memory)
        if path is None:
            continue
        owner = next(
            (
                j
                for j, other in enumerate(models)
                if j != k and _anchor_mismatch(other, memory, own=False) is None
            ),
            None,
        )
        hint = (
            f" It is the memory of models[{owner}]: give `memories` in the "
            "order of `models`."
            if owner is not None
            else " Estimate each memory on its model's current weights."
        )
        raise ValueError(
            f"memories[{k}] is not a memory of models[{k}] ({model.name!r}): "
            f"its anchor of {path!r} differs from the model's weights.{hint}"
        )


def _anchor_mismatch(model, memory, own=True):
    """The first path whose anchor is not `model`'s weight, or `None`.

    A memory that does not fit its `own` model raises `match`'s error;
    tried on another model, it just does not match.
    """
    if own:
        pairs = memory.match(model)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pairs = memory.match(model)
        except ValueError:
            return memory.paths[0]
    anchor = memory.anchor
    for path, variable in pairs:
        if not np.allclose(
            anchor[path], ops.convert_to_numpy(variable), rtol=1e-5, atol=1e-7
        ):
            return path
    return None


def memory_curvature(model, memory, structure):
    """`(diagonal, blocks)`: a memory's precision on the trainable variables.

    `diagonal` is the diagonal of the precision `n F` of each variable, in
    order. For `structure="kfac"`, `blocks` maps a kernel's index among the
    variables to a `KroneckerBlock` with the bias's index and the factors
    of the precision, `n A (x) G`; for `"diagonal"` it is empty.
    """
    if not isinstance(memory, FisherMemory):
        raise ValueError(
            "`memories` takes FisherMemory objects; got "
            f"{type(memory).__name__}."
        )
    if structure == "kfac" and memory.structure != "kfac":
        raise ValueError(
            "method='kfac' needs Kronecker-factored memories, "
            "`FisherMemory.estimate(model, data, structure='kfac')`; got a "
            "diagonal one."
        )
    pairs = memory.match(model)
    by_variable = {
        id(v): memory.num_examples * memory.fisher[path] for path, v in pairs
    }
    variables = model.trainable_variables
    diagonal = [
        by_variable.get(id(v), np.zeros(tuple(v.shape), "float32"))
        for v in variables
    ]
    if structure != "kfac":
        return diagonal, {}
    index = {id(v): i for i, v in enumerate(variables)}
    by_path = {path: index[id(v)] for path, v in pairs}
    blocks = {
        by_path[kernel]: KroneckerBlock(
            None if block.bias is None else by_path[block.bias],
            memory.num_examples * untruncated(block.a),
            untruncated(block.g),
            block.mask,
            block.axes,
        )
        for kernel, block in memory.kronecker.items()
    }
    return diagonal, blocks


def permuted_curvature(model, permutations, values, blocks=None):
    """Permutes a memory's curvature on `model` with its hidden units.

    Per-variable `values` are carried through the `permutations` (as
    `keras_memgeom.src.symmetry.align.unit_permutations` returns); so are
    the indices of each blocked kernel's entries, which say how the rows of
    its `A` (the bias coordinate stays last) and of its `G` move.

    Returns:
        `(values, blocks)`, permuted.
    """
    values = _carried(model, permutations, values)
    if not blocks:
        return values, blocks
    # Entry indices are exact in float32 below 2**24 entries per kernel.
    variables = model.trainable_variables
    indices = _carried(
        model,
        permutations,
        [
            np.arange(np.prod(v.shape)).reshape(v.shape)
            if i in blocks
            else np.zeros(v.shape)
            for i, v in enumerate(variables)
        ],
    )
    permuted = {}
    for i, block in blocks.items():
        # `unit_chain` refuses an EinsumDense that is not a Dense's, so no
        # block here has kernel axes: its kernel is its matrix, reshaped.
        units = factor_size(block.g)
        moved = np.rint(indices[i]).astype("int64").reshape(-1, units)
        rows, columns = moved[:, 0] // units, moved[0] % units
        a_rows = np.append(rows, len(rows)) if block.bias is not None else rows
        mask = (
            None
            if block.mask is None
            else np.asarray(block.mask)[rows][:, columns]
        )
        permuted[i] = KroneckerBlock(
            block.bias,
            *permuted_factors(block.a, block.g, a_rows, columns),
            mask,
        )
    return values, permuted


def _carried(model, permutations, values):
    """Per-variable arrays of `model` permuted with its hidden units."""
    carrier = copy_model(model)
    for variable, value in zip(carrier.trainable_variables, values):
        variable.assign(value)
    carried = permuted_copy(carrier, permutations)
    return [ops.convert_to_numpy(v) for v in carried.trainable_variables]
