"""Frontal-lobe consolidation variants against the online memory.

Permuted `digits` with a 2x32 ReLU MLP and permuted `mnist5k` with a 2x64
ReLU MLP, `--tasks` tasks, in the harness of `keras_memgeom.continual`
(Adam 1e-3, batch 32, 10 epochs per task, exact diagonal Fisher, one merged
memory). Every method runs over the same grid of memory strengths: `online`
and the frontal-lobe variants of `--variants`:

- `keep`: the information penalty in the last `--information-epochs`, the
  whole Fisher merged;
- `forget`: the same, the frontal lobe's Fisher dropped;
- `reset`: the information penalty, then the frontal lobe re-initialized
  with zero outgoing weights and kept out of memory;
- `distill`: the rest of the network distilled from the whole one (with the
  frontal lobe silenced) for `--distill-epochs`, then as `reset`.

Each finished run is one JSON file in `--out` (written atomically); a rerun
skips the runs already there, so the grid can be stopped and resumed.
`--report` reads them all, prints per data set the mean over seeds of every
method and strength, the best strength of each method (by mean average
accuracy over seeds at the last task), the best `online` against each
variant seed by seed, at the last task and after task 10 (average over tasks
1..10 of the 20-task accuracy matrix), and draws the curves of the best
`online` and the best variant into `--figures`.

    KERAS_BACKEND=jax python benchmarks/frontal_lobe_continual.py \\
        --datasets digits,mnist5k --seeds 0,1,2
    KERAS_BACKEND=jax python benchmarks/frontal_lobe_continual.py --report
"""

import argparse
import glob
import json
import os
import time

import numpy as np
from _environment import print_environment

import keras_memgeom
from keras_memgeom import continual
from keras_memgeom.src.continual import metrics
from keras_memgeom.src.utils.atomic_write import atomic_write
from keras_memgeom.src.utils.figures import new_figure

WIDTHS = {"digits": 32, "mnist5k": 64}
VARIANTS = ("keep", "forget", "reset", "distill")


def _floats(text):
    return [float(v) for v in text.split(",")]


def _ints(text):
    return [int(v) for v in text.split(",")]


def method_label(variant, args):
    """The name of a method: `online`, or the variant and its settings."""
    if variant == "online":
        return "online"
    label = f"{variant}-f{args.fraction:g}-i{args.information_epochs}"
    if variant == "distill":
        label += f"-d{args.distill_epochs}"
    return label


def make_strategy(variant, strength, args):
    if variant == "online":
        return continual.Online(strength=strength)
    return continual.FrontalLobeStrategy(
        strength=strength,
        frontal_lobe=keras_memgeom.FrontalLobe(
            ["hidden_0", "hidden_1"], fraction=args.fraction
        ),
        information_epochs=args.information_epochs,
        consolidation=variant,
        distill_epochs=args.distill_epochs,
    )


def run_grid(args):
    """Runs every missing (strength, data set, seed, method) of the grid.

    Strengths are the outer loop, so a grid stopped early has every data
    set, seed and method at the strengths it reached.
    """
    os.makedirs(args.out, exist_ok=True)
    streams = {}
    for strength in args.strengths:
        for dataset in args.datasets.split(","):
            for seed in args.seeds:
                for variant in args.variants.split(","):
                    label = method_label(variant, args)
                    path = os.path.join(
                        args.out,
                        f"{dataset}-{label}-s{strength:g}-seed{seed}.json",
                    )
                    if os.path.exists(path):
                        continue
                    if (dataset, seed) not in streams:
                        streams[dataset, seed] = continual.TaskStream.make(
                            "permuted", dataset, num_tasks=args.tasks, seed=seed
                        )
                    run_one(
                        streams[dataset, seed],
                        make_strategy(variant, strength, args),
                        path,
                        dataset=dataset,
                        label=label,
                        strength=strength,
                        seed=seed,
                        epochs=args.epochs,
                    )


def run_one(stream, strategy, path, *, dataset, label, strength, seed, epochs):
    """Runs one method on one stream and writes its entry to `path`."""
    harness = continual.Harness(
        stream, width=WIDTHS[dataset], epochs=epochs, seed=seed
    )
    start = time.perf_counter()
    run = harness.run(strategy)
    run.update(
        dataset=dataset,
        label=label,
        strength_value=strength,
        seed=seed,
        harness=harness.get_config(),
        records=getattr(strategy, "records", None),
    )
    with atomic_write(path) as f:
        f.write(json.dumps(run).encode())
    print(
        f"{dataset} seed {seed} {label} s={strength:g}: "
        f"avg {run['average_accuracy']:.3f} learn "
        f"{run['learning_accuracy']:.3f} forgetting "
        f"{run['forgetting']:.3f} d_eff "
        f"{run['effective_dimension'][-1]:.0f} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )


def _at(run, tasks):
    """Metrics of a run after `tasks` tasks, from its accuracy matrix."""
    matrix = np.asarray(run["accuracy_matrix"])[:tasks, :tasks]
    return metrics.summarize(matrix, run["initial_accuracy"][:tasks])


def report(args):
    runs = []
    for path in sorted(glob.glob(os.path.join(args.out, "*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = [r for r in runs if r["dataset"] == dataset]
        num_tasks = len(mine[0]["accuracy_matrix"])
        stops = sorted({10, num_tasks} & set(range(1, num_tasks + 1)))
        print(
            f"\n## permuted {dataset}, 2x{WIDTHS[dataset]}, {num_tasks} "
            "tasks; mean over seeds (avg / learn / forgetting / d_eff)"
        )
        grid = {}
        for r in mine:
            grid.setdefault((r["label"], r["strength_value"]), []).append(r)
        for (label, strength), group in sorted(grid.items()):
            last = [_at(r, num_tasks) for r in group]
            print(
                f"{label:<24} s={strength:<6g} seeds "
                f"{sorted(r['seed'] for r in group)}: "
                f"{np.mean([m['average_accuracy'] for m in last]):.3f} / "
                f"{np.mean([m['learning_accuracy'] for m in last]):.3f} / "
                f"{np.mean([m['forgetting'] for m in last]):.3f} / "
                f"{np.mean([r['effective_dimension'][-1] for r in group]):.0f}"
            )
        best = {}
        for label in sorted({label for label, _ in grid}):
            options = [
                (np.mean([_at(r, num_tasks)["average_accuracy"] for r in g]), s)
                for (lab, s), g in grid.items()
                if lab == label
            ]
            best[label] = max(options)[1]
        if "online" not in best:
            continue
        online = {r["seed"]: r for r in grid[("online", best["online"])]}
        print(f"\nbest strengths: {best}")
        for label, strength in best.items():
            if label == "online":
                continue
            lobe = {r["seed"]: r for r in grid[(label, strength)]}
            for stop in stops:
                gaps = []
                for seed in sorted(set(online) & set(lobe)):
                    a = _at(lobe[seed], stop)["average_accuracy"]
                    b = _at(online[seed], stop)["average_accuracy"]
                    gaps.append(
                        f"seed {seed}: {a:.3f} vs {b:.3f} "
                        f"({100 * (a - b):+.1f})"
                    )
                print(
                    f"{label} s={strength:g} against online "
                    f"s={best['online']:g}, after task {stop}: "
                    + "; ".join(gaps)
                )
        variants = [label for label in best if label != "online"]
        if variants and args.figures:

            def score(label):
                return np.mean(
                    [
                        _at(r, num_tasks)["average_accuracy"]
                        for r in grid[(label, best[label])]
                    ]
                )

            shown = ["online", max(variants, key=score)]
            emptying = [
                label
                for label in variants
                if label.startswith(("reset", "distill"))
            ]
            if emptying and max(emptying, key=score) not in shown:
                shown.append(max(emptying, key=score))
            plot(
                dataset,
                {
                    f"{label} s={best[label]:g}": grid[(label, best[label])]
                    for label in shown
                },
                os.path.join(args.figures, f"frontal_lobe_{dataset}.png"),
            )


def plot(dataset, groups, path):
    """Average accuracy, learning accuracy, forgetting and d_eff over tasks."""
    figure = new_figure(figsize=(11, 2.8), layout="constrained")
    axes = figure.subplots(1, 4)
    for (label, group), color in zip(groups.items(), ("C0", "C3", "C2")):
        for r in group:
            matrix = np.asarray(r["accuracy_matrix"])
            steps = np.arange(1, len(matrix) + 1)
            curves = (
                metrics.average_accuracy_curve(matrix),
                np.diag(matrix),
                [metrics.forgetting(matrix[:t, :t]) for t in steps],
                r["effective_dimension"],
            )
            for axis, curve in zip(axes, curves):
                axis.plot(
                    steps,
                    curve,
                    color=color,
                    alpha=0.8,
                    label=label if r is group[0] else None,
                )
    titles = (
        "average accuracy on tasks seen",
        "accuracy on the task just learned",
        "forgetting",
        "memory effective dimension",
    )
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("tasks learned", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"permuted {dataset}, one line per seed", fontsize=9)
    with atomic_write(path) as f:
        figure.savefig(f, format="png", dpi=80)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist5k")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument(
        "--strengths", type=_floats, default=[10.0, 100.0, 1000.0]
    )
    parser.add_argument("--variants", default="online,distill")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--information-epochs", type=int, default=0)
    parser.add_argument("--distill-epochs", type=int, default=5)
    parser.add_argument("--out", default="memgeom_runs/frontal_lobe")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    for variant in args.variants.split(","):
        if variant != "online" and variant not in VARIANTS:
            raise ValueError(
                f"Unknown variant {variant!r}; expected online or one of "
                f"{VARIANTS}."
            )
    if args.report:
        report(args)
    else:
        print_environment()
        run_grid(args)


if __name__ == "__main__":
    main()
