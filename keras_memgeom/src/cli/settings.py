"""The settings of a bench run: what shapes its results, and what applies.

A method is the name of a registered strategy
(`keras_memgeom.continual.register_strategy`); the options of a run go to
the strategies whose constructors take them.
"""

import inspect
import json

import keras

from keras_memgeom import continual
from keras_memgeom.src.cli.parser import GIVEN

# Options that do not change the results.
_NOT_SETTINGS = ("command", "out", "resume", "quiet", GIVEN)

# Option (as in `vars(args)`) -> what it applies to: a constructor argument
# of the strategies, or a test of the settings.
_STRATEGY_OPTIONS = (
    "strength",
    "estimator",
    "decay",
    "gamma",
    "max_examples",
    "structure",
    "information_epochs",
)


def method_names(methods):
    """The names of a `--methods` value, in its order, blanks dropped."""
    return [name.strip() for name in methods.split(",") if name.strip()]


def settings(args):
    """The options that shape the results, as they read back from JSON."""
    options = {
        k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS
    }
    return json.loads(json.dumps(options))


def accepts(method, key):
    """Whether the method's strategy takes `key`; its default if so."""
    try:
        parameters = inspect.signature(
            continual.get_strategy_class(method)
        ).parameters
    except ValueError:
        return False, None
    if key not in parameters:
        return False, None
    return True, parameters[key].default


def normalized(settings):
    """The settings that shape the results, as one run reads them.

    Defaults are filled in (`--data-seed` from `--seed`, each method's own
    strength and estimator), the methods are sorted (their order only
    orders the table), and options that no method of the run takes are
    left out.
    """
    settings = dict(settings)
    if "fisher_examples" in settings:  # its name in older results files
        settings["max_examples"] = settings.pop("fisher_examples")
    seed = settings.pop("seed", 0)
    for key in ("data_seed", "init_seed"):
        if settings.get(key) is None:
            settings[key] = seed
    methods = sorted(set(method_names(str(settings.get("methods", "")))))
    settings["methods"] = methods
    if settings.get("structure", "diagonal") == "diagonal":
        settings.pop("rank", None)  # only Kronecker factors are truncated
    for key in _STRATEGY_OPTIONS:
        value = settings.pop(key, None)
        default, by_method = (
            value if key in ("strength", "estimator") and value else (value, {})
        )
        per_method = {}
        for method in methods:
            accepted, own = accepts(method, key)
            if accepted:
                chosen = by_method.get(method, default)
                per_method[method] = own if chosen is None else chosen
        if per_method:
            settings[key] = per_method
    strengths = settings.get("strength", {}).values()
    if not any(s in ("auto", "sweep") for s in strengths):
        settings.pop("strength_grid", None)
    if settings.get("scenario") != "split":
        settings.pop("split_scenario", None)
    return json.loads(json.dumps(settings))


def check_options_apply(args):
    """Refuses an option typed that no method of the run (or scenario) uses.

    Args:
        args: the parsed arguments; `given_options` names the options
            typed on the command line.

    Raises:
        ValueError: naming the option and the methods it applies to.
    """
    given = getattr(args, GIVEN)
    methods = method_names(args.methods)
    for key in _STRATEGY_OPTIONS + ("prior_precision",):
        if key not in given:
            continue
        # The effective dimension is that of a memory: methods with one.
        takes = "strength" if key == "prior_precision" else key
        if any(accepts(method, takes)[0] for method in methods):
            continue
        users = [
            m for m in continual.available_strategies() if accepts(m, takes)[0]
        ]
        raise ValueError(
            f"--{key.replace('_', '-')} applies to {', '.join(users)}; none "
            f"of --methods {','.join(methods)} uses it: drop it or add one of "
            "those methods."
        )
    if "rank" in given and args.structure != "kfac":
        raise ValueError(
            "--rank truncates Kronecker factors: it applies with --structure "
            "kfac only."
        )
    if "strength_grid" in given:
        default, by_method = args.strength
        if not any(
            v in ("auto", "sweep") for v in (default, *by_method.values())
        ):
            raise ValueError(
                "--strength-grid applies to --strength auto or sweep; no "
                "method of the run uses either: drop it or set --strength."
            )
    if "split_scenario" in given and args.scenario != "split":
        raise ValueError(
            "--split-scenario applies to --scenario split only: drop it or "
            "set --scenario split."
        )


def check_resume(previous, settings, folder):
    """Raises a ValueError naming every changed setting from the stored run.

    The settings are compared once normalized (`normalized`): repeating a
    default or listing the methods in another order changes nothing.
    """
    stored = normalized(previous["config"]["settings"])
    settings = normalized(settings)
    show = json.dumps
    changed = [
        f"--{key.replace('_', '-')} {show(stored.get(key))} (now "
        f"{show(settings.get(key))})"
        for key in sorted(set(stored) | set(settings))
        if stored.get(key) != settings.get(key)
    ]
    if previous["backend"] != keras.backend.backend():
        changed.append(
            f"backend {previous['backend']} (now {keras.backend.backend()})"
        )
    if changed:
        raise ValueError(
            f"--resume {folder}: the run was made with other settings: "
            f"{'; '.join(changed)}. Continue it with the same settings, or "
            "start a new run."
        )
