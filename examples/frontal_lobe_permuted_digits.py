"""Frontal lobe vs online memory vs fine-tuning on permuted digits.

A deliberately small network (two hidden ReLU layers of `--width` units,
the same for every method, so the same parameter count) learns `--tasks`
pixel-permuted versions of scikit-learn's 8x8 digits in the harness of
`keras_memgeom.continual`. Every method gets `--epochs` epochs per task;
`frontal-lobe` spends the last `--information-epochs` of them in phase 2.
`online` and `frontal-lobe` run over the same grid of memory strengths, and
`frontal-lobe` over the grids of `lambda` (`--lambdas`), frontal-lobe size
(`--fractions`) and `--forget` (drop the frontal lobe from the memory).

Prints one row per run (average accuracy, learning accuracy, backward
transfer, effective dimension of the memory after the last task), the
best `online` against the best `frontal-lobe`, the effective dimension per
task of those two, and for `frontal-lobe` the Fisher trace of the frontal
lobe before and after phase 2 in every task. Writes every run to `--out`
(JSON).

Run:

    KERAS_BACKEND=tensorflow python examples/frontal_lobe_permuted_digits.py \\
        --tasks 10

The consolidation variants (`reset`, `distill`) are measured by
`benchmarks/frontal_lobe_continual.py`.
"""

import argparse
import itertools
import json

import keras

import keras_memgeom
from keras_memgeom import continual
from keras_memgeom.frontal_lobe import FrontalLobeStrategy


def _floats(text):
    return [float(v) for v in text.split(",")]


def _row(label, run):
    dims = run["effective_dimension"]
    last = "-" if dims[-1] is None else f"{dims[-1]:.0f}"
    return (
        f"{label:<44} {run['average_accuracy']:6.3f} "
        f"{run['learning_accuracy']:6.3f} "
        f"{run['backward_transfer']:7.3f} {last:>6}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--strengths", type=_floats, default=[10.0, 100.0, 1000.0]
    )
    parser.add_argument("--lambdas", type=_floats, default=[1.0])
    parser.add_argument("--fractions", type=_floats, default=[0.5])
    parser.add_argument("--information-epochs", type=int, default=3)
    parser.add_argument("--information-estimator", default="empirical")
    parser.add_argument("--forget", default="no", choices=["no", "yes", "both"])
    parser.add_argument("--methods", default="finetune,online,frontal-lobe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="frontal_lobe_permuted_digits.json")
    args = parser.parse_args()
    methods = args.methods.split(",")
    forget = {"no": [False], "yes": [True], "both": [False, True]}[args.forget]

    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=args.tasks, seed=args.seed
    )
    harness = continual.Harness(
        stream, width=args.width, epochs=args.epochs, seed=args.seed
    )
    print(
        f"backend {keras.backend.backend()}, permuted digits, "
        f"{args.tasks} tasks, 2x{args.width} ReLU, {args.epochs} epochs per "
        f"task, seed {args.seed}",
        flush=True,
    )
    print(
        f"{'run':<44} {'avg':>6} {'learn':>6} {'bwt':>7} {'d_eff':>6}",
        flush=True,
    )
    runs = {}

    def record(label, strategy):
        run = harness.run(strategy)
        run["records"] = getattr(strategy, "records", None)
        runs[label] = run
        print(_row(label, run), flush=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f)

    if "finetune" in methods:
        record("finetune", continual.Finetune())
    if "online" in methods:
        for strength in args.strengths:
            record(
                f"online s={strength:g}", continual.Online(strength=strength)
            )
    if "frontal-lobe" in methods:
        for strength, lam, fraction, drop in itertools.product(
            args.strengths, args.lambdas, args.fractions, forget
        ):
            label = (
                f"frontal-lobe s={strength:g} lambda={lam:g} frac={fraction:g}"
            )
            label += " forget" if drop else ""
            record(
                label,
                FrontalLobeStrategy(
                    strength=strength,
                    frontal_lobe=keras_memgeom.FrontalLobe(
                        ["hidden_0", "hidden_1"],
                        fraction=fraction,
                        information_strength=lam,
                        estimator=args.information_estimator,
                    ),
                    information_epochs=args.information_epochs,
                    consolidation="forget" if drop else "keep",
                ),
            )

    def best(prefix):
        labels = [k for k in runs if k.startswith(prefix)]
        return (
            max(labels, key=lambda k: runs[k]["average_accuracy"])
            if labels
            else None
        )

    best_online, best_lobe = best("online"), best("frontal-lobe")
    if best_online and best_lobe:
        gap = (
            runs[best_lobe]["average_accuracy"]
            - runs[best_online]["average_accuracy"]
        )
        print(
            f"\nbest online: {best_online}; best frontal lobe: {best_lobe}; "
            f"difference {100 * gap:+.1f} points of average accuracy"
        )
    for label in (best_online, best_lobe):
        if label:
            dims = " ".join(
                f"{d:.0f}" for d in runs[label]["effective_dimension"]
            )
            print(f"effective dimension per task, {label}: {dims}")
    if best_lobe:
        print(
            "frontal-lobe Fisher trace per task (end of phase 1 -> end of "
            f"phase 2), {best_lobe}:"
        )
        for task, records in enumerate(runs[best_lobe]["records"]):
            traces = [
                r["frontal_lobe_fisher_trace"]
                for r in records
                if "frontal_lobe_fisher_trace" in r
            ]
            dims = [
                (
                    r["frontal_lobe_effective_dimension"],
                    r["rest_effective_dimension"],
                )
                for r in records
                if "rest_effective_dimension" in r
            ]
            trace = " -> ".join(f"{t:.2f}" for t in traces)
            print(
                f"  task {task + 1}: trace {trace}; memory d_eff frontal "
                f"lobe {dims[-1][0]:.0f}, rest {dims[-1][1]:.0f}"
            )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
