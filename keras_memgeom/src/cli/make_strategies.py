"""The strategies that `--methods` names, with the options each one takes."""

import inspect

from keras_memgeom import continual
from keras_memgeom.src.cli.settings import method_names


def make_strategies(
    methods, *, strength=(None, {}), estimator=(None, {}), **options
):
    """Builds the strategies named on the command line.

    A method is the name of a registered strategy. Every strategy gets
    the options its constructor accepts: `strength` and `estimator` (a
    default and per-method values) and the rest of `options` (e.g.
    `decay`, `max_examples`).

    Args:
        methods: comma-separated method names, as `--methods` takes them.
        strength, estimator: `(default, {method: value})`, as parsed from
            `--strength` and `--estimator`.
        **options: further constructor arguments; one a strategy does not
            take is not given to it.

    Returns:
        The strategies, in the order of `methods`.

    Raises:
        ValueError: for an unknown or repeated method, or a per-method
            setting for a method that is not run or takes no such setting.

    Example:
    >>> make_strategies("finetune,online", strength=(100.0, {}))
    """
    methods = method_names(methods)
    if not methods:
        raise ValueError("--methods names no method.")
    if len(set(methods)) != len(methods):
        raise ValueError(
            f"--methods names a method twice: {','.join(methods)}."
        )
    for flag, (_, by_method) in (
        ("--strength", strength),
        ("--estimator", estimator),
    ):
        for method in by_method:
            if method not in methods:
                raise ValueError(
                    f"{flag} sets {method!r}, which is not in --methods."
                )
    strategies = []
    for method in methods:
        strategy_class = continual.get_strategy_class(method)
        accepted = inspect.signature(strategy_class).parameters
        kwargs = {
            k: v for k, v in options.items() if k in accepted and v is not None
        }
        if "rank" in options and "rank" in accepted:
            kwargs["rank"] = options["rank"]  # `None` is whole factors
        if (
            options.get("structure", "diagonal") != "diagonal"
            and "structure" not in accepted
        ):
            raise ValueError(
                f"Method {method!r} keeps no Fisher memory of structure "
                f"{options['structure']!r}; run it without --structure or drop "
                "it from --methods."
            )
        for key, (default, by_method) in (
            ("strength", strength),
            ("estimator", estimator),
        ):
            value = by_method.get(method, default)
            if method in by_method and key not in accepted:
                raise ValueError(f"Method {method!r} takes no {key}.")
            if value is not None and key in accepted:
                kwargs[key] = value
        strategies.append(strategy_class(**kwargs))
    return strategies
