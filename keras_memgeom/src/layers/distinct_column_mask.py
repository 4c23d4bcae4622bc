"""Binary connectivity masks whose columns are pairwise distinct."""

import math

import numpy as np

from keras_memgeom.src.utils.checks import check_positive

# Rounds of redrawing at the requested zero rate before falling back to
# uniform draws, which always finish (coupon collector) even near capacity.
_MAX_REDRAW_ROUNDS = 100


def distinct_column_mask(shape, zero_rate, seed=None):
    """Draws a 0/1 mask with pairwise-distinct, non-empty columns.

    Each entry is 0 with probability `zero_rate`. Columns that repeat an
    earlier column, or that are all zero (a unit with no input), are redrawn
    until every column is unique, so the result is guaranteed, not only
    likely, to break the permutation symmetry of the units (Glukhov 2024, eq.
    37). When redrawing at `zero_rate` stalls (a skewed rate close to the
    capacity `2**rows - 1`), the remaining columns are drawn uniformly, which
    shifts their zero rate slightly but always terminates.

    Args:
        shape: `(rows, columns)`: inputs x units.
        zero_rate: float in (0, 1), the probability of a zero entry.
        seed: int or `None`. `None` draws from NumPy's global generator, so
            `keras.utils.set_random_seed` makes it reproducible.

    Returns:
        A float32 NumPy array of the given shape with entries in {0, 1}.

    Raises:
        ValueError: if `shape` is not two positive integers, if `zero_rate`
            is not a number in (0, 1), or if `columns > 2**rows - 1` (too few
            rows for that many distinct non-empty columns).

    Example:

    ```python
    import keras_memgeom

    mask = keras_memgeom.pruning.distinct_column_mask(
        (8, 20), zero_rate=0.5, seed=0
    )
    print(len({tuple(column) for column in mask.T}))  # 20
    ```
    """
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(
            f"`shape` must be two positive integers (rows, columns); "
            f"got {shape}."
        )
    rows, cols = int(shape[0]), int(shape[1])
    validate_zero_rate(zero_rate)
    if rows < 63 and cols > 2**rows - 1:
        raise ValueError(
            f"Cannot draw {cols} distinct non-empty columns from {rows} rows: "
            f"at most 2**{rows} - 1 = {2**rows - 1} exist. Use fewer units "
            f"(columns) or more inputs (rows). Needed rows: "
            f"{math.ceil(math.log2(cols + 1))}."
        )
    if seed is None:
        seed = np.random.randint(2**31 - 1)
    rng = np.random.default_rng(seed)

    mask = rng.random((rows, cols)) >= zero_rate
    rate, rounds = zero_rate, 0
    while True:
        bad = _repeated_or_empty_columns(mask)
        if not bad.any():
            return mask.astype("float32")
        rounds += 1
        if rounds == _MAX_REDRAW_ROUNDS:
            rate = 0.5
        mask[:, bad] = rng.random((rows, int(bad.sum()))) >= rate


def validate_zero_rate(zero_rate):
    """Returns `zero_rate` as a float after checking `0 < zero_rate < 1`.

    Raises:
        ValueError: naming `zero_rate`, if it is not a finite number (e.g.
            the string `"0.5"`) or is outside (0, 1).
    """
    value = check_positive("zero_rate", zero_rate)
    if value >= 1.0:
        raise ValueError(
            f"`zero_rate` must be strictly between 0 and 1; got {zero_rate!r}."
        )
    return value


def _repeated_or_empty_columns(mask):
    """Boolean flags for columns that are all zero or repeat an earlier one."""
    _, first = np.unique(mask.T, axis=0, return_index=True)
    bad = np.ones(mask.shape[1], dtype=bool)
    bad[first] = False
    bad |= ~mask.any(axis=0)
    return bad
