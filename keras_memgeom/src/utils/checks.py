"""Argument checks shared by the package: one wording for each kind of error."""

import math
import numbers

import keras
import numpy as np


def check_number(
    name, value, *, minimum=None, maximum=None, inclusive_minimum=True
):
    """Returns `value` as a float after checking it is a finite real number.

    Args:
        name: the argument's name, quoted in the error.
        value: what the caller passed.
        minimum: the smallest value allowed, or `None`.
        maximum: the largest value allowed (inclusive), or `None`.
        inclusive_minimum: whether `minimum` itself is allowed.

    Returns:
        A float.

    Raises:
        ValueError: if `value` is not a real number (a string, `None`, a
            bool), is NaN or infinite, or is out of range. The message names
            the argument and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a number; got {value!r} "
            f"({type(value).__name__})."
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if minimum is not None:
        if value < minimum or (value == minimum and not inclusive_minimum):
            bound = ">=" if inclusive_minimum else ">"
            raise ValueError(
                f"`{name}` must be {bound} {minimum}; got {value!r}."
            )
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}; got {value!r}.")
    return value


def check_positive(name, value, *, maximum=None):
    """Returns `value` as a float after checking it is finite and `> 0`.

    Args:
        name: the argument's name, quoted in the error.
        value: what the caller passed.
        maximum: the largest value allowed (inclusive), or `None`.

    Returns:
        A float.

    Raises:
        ValueError: as `check_number` with `minimum=0` excluded.
    """
    return check_number(
        name, value, minimum=0.0, inclusive_minimum=False, maximum=maximum
    )


def check_positive_int(name, value, *, allow_none=False):
    """Returns `value` as an int after checking it is a whole number >= 1.

    Args:
        name: the argument's name, quoted in the error.
        value: what the caller passed; integral floats (`3.0`) are accepted.
        allow_none: whether `None` passes through.

    Returns:
        An int, or `None` where allowed.

    Raises:
        ValueError: if `value` is not a whole number, or is below 1.
    """
    if value is None and allow_none:
        return None
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real)
        and math.isfinite(value)
        and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise ValueError(f"`{name}` must be a whole number; got {value!r}.")
    if int(value) < 1:
        raise ValueError(f"`{name}` must be at least 1; got {value!r}.")
    return int(value)


def check_finite_data(name, data):
    """Refuses arrays (or nested structures of arrays) holding NaN or inf.

    The one check of data where it enters the package (task streams, Fisher
    estimation, merges), so a bad pixel is named at once instead of training
    to chance or returning NaN weights.

    Args:
        name: what the data is, quoted in the error (e.g. `"data"`,
            `"task 2's training inputs"`).
        data: an array-like, or a nested structure (tuple, list, dict) of
            them. Non-float leaves (integer labels, strings) pass.

    Returns:
        `data`, unchanged.

    Raises:
        ValueError: if a floating-point leaf holds NaN or infinite values;
            the message names the data, the count and the first position.

    Example:

    ```python
    import numpy as np
    from keras_memgeom.src.utils.checks import check_finite_data

    check_finite_data("x", np.zeros((2, 3)))
    try:
        check_finite_data("x", np.array([[0.0, np.nan]]))
    except ValueError as error:
        print(error)
    ```
    """
    for leaf in keras.tree.flatten(data):
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            position = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} holds {int(bad.sum())} NaN or infinite value(s), the "
                f"first at index {position}: clean or drop those examples."
            )
    return data
