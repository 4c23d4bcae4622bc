"""One way to keep an argument's old name working after a rename."""

import warnings


def renamed_argument(name, value, old_name, old_value, *, default=None):
    """Returns the value of a renamed argument, given either of its names.

    The old name stays a deprecated alias: passing it warns, naming the new
    name, and passing both names is an error, never a silent choice.

    Args:
        name: the argument's new name.
        value: what the caller passed under `name` (`default` if nothing).
        old_name: the argument's deprecated name.
        old_value: what the caller passed under `old_name`, `None` if
            nothing.
        default: the default of `name`, which says that it was not passed.

    Returns:
        `old_value` if the old name was passed, else `value`.

    Raises:
        ValueError: if both names were passed.

    Example:

    ```python
    import warnings

    from keras_memgeom.src.utils.renamed_argument import renamed_argument

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print(renamed_argument("memories", None, "regularizers", [1]))  # [1]
    print(caught[0].category.__name__)  # DeprecationWarning
    ```
    """
    if old_value is None:
        return value
    if value is not default:
        raise ValueError(
            f"Pass `{name}` only: `{old_name}` is its deprecated alias; got "
            "both."
        )
    warnings.warn(
        f"`{old_name}` is deprecated; use `{name}` instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
