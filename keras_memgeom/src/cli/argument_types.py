"""The argparse types of `memgeom`'s options: each refuses bad text by name."""

import argparse

from keras_memgeom.src.memory.fisher import ESTIMATORS
from keras_memgeom.src.utils.checks import check_number


def positive_int(text):
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        )
    return value


def non_negative_int(text):
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0, got {text!r}"
        )
    return value


def rank(text):
    """A positive integer, or `None` for "full" (whole Kronecker factors)."""
    return None if text == "full" else positive_int(text)


def finite(describe, *, minimum=0.0, maximum=None):
    """An argparse type: a finite number above `minimum`, up to `maximum`."""

    def parse(text):
        try:
            return check_number(
                "value",
                float(text),
                minimum=minimum,
                maximum=maximum,
                inclusive_minimum=False,
            )
        except ValueError:
            # inf or nan would pass here and wreck a run tasks later.
            raise argparse.ArgumentTypeError(
                f"expected {describe}, got {text!r}"
            ) from None

    parse.__doc__ = describe[0].upper() + describe[1:] + "."
    return parse


positive_float = finite("a finite positive number")
decay = finite("a finite number in (0, 1]", maximum=1.0)


def strength(text):
    """A positive number, or "auto" or "sweep"."""
    return text if text in ("auto", "sweep") else positive_float(text)


def per_method(convert):
    """Parses `VALUE` or `METHOD=VALUE,...` (both may be mixed).

    Returns:
        An argparse type whose value is `(default, {method: value})`.
    """

    def parse(text):
        """A value, or per method: `VALUE` or `METHOD=VALUE,...`."""
        default, by_method = None, {}
        for item in text.split(","):
            name, _, value = item.rpartition("=")
            if name:
                by_method[name.strip()] = convert(value.strip())
            else:
                default = convert(value.strip())
        return default, by_method

    return parse


def estimator(text):
    """The name of a Fisher estimator."""
    if text not in ESTIMATORS:
        raise argparse.ArgumentTypeError(
            f"unknown Fisher estimator {text!r}; choose one of "
            f"{', '.join(ESTIMATORS)}"
        )
    return text


def fraction(text):
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1), got {text!r}"
        )
    return value


def strength_grid(text):
    """Comma-separated finite positive numbers."""
    return [positive_float(s) for s in text.split(",")]
