"""Merging trained models: every method, with and without REPAIR.

The methods are those of `merge_models`: average, fisher (diagonal),
regmean and kfac (Kronecker-factored memories).

Same task: two MLPs with two hidden ReLU layers, trained from seeds 1 and 2
on the same data, merged at the midpoint after alignment (and a raw average
without it). Prints the merged test accuracy over the endpoints' mean for
each method with and without REPAIR, and the test-loss barrier before and
after alignment, on digits (widths 16, 32, 128) and mnist5k (32, 128).

Across tasks: a parent trained briefly on all ten digit classes is
fine-tuned into two children, on classes 0-4 and on 5-9; the children are
merged without alignment (they share the parent's units), and each merge's
accuracy on each half and on all ten classes is printed (parent 1 epoch,
children 30 epochs by default: children that moved far from their parent).

Run: `KERAS_BACKEND=jax python benchmarks/merge_models.py [--part same|tasks]`.
"""

import argparse
import json

import keras
import numpy as np
from _environment import print_environment

from keras_memgeom.merging import merge_models
from keras_memgeom.src.cli.merge_experiment import load_split
from keras_memgeom.src.cli.merge_experiment import merge_experiment
from keras_memgeom.src.cli.merge_experiment import train_mlp
from keras_memgeom.src.merging.merge_models import METHODS

SAME_TASK = "digits:16,digits:32,digits:128,mnist5k:32,mnist5k:128"


def same_task(cases, seeds, epochs):
    names = None
    for case in cases.split(","):
        dataset, width = case.split(":")
        width = int(width)
        result = merge_experiment(
            dataset, width=width, seeds=seeds, epochs=epochs, num_points=5
        )
        if names is None:
            names = list(result["ratio"])
            print(
                f"{'data':>8s} {'width':>5s} {'ends':>6s} "
                + " ".join(f"{n:>15s}" for n in names)
                + f" {'barrier raw':>12s} {'aligned':>8s}"
            )
        print(
            f"{dataset:>8s} {width:5d} {np.mean(result['endpoints']):6.3f} "
            + " ".join(f"{result['ratio'][n]:15.3f}" for n in names)
            + f" {result['barrier']['raw']:12.3f}"
            + f" {result['barrier']['aligned']:8.3f}",
            flush=True,
        )


def across_tasks(width, parent_epochs, child_epochs):
    x_train, x_test, y_train, y_test = load_split("digits")
    parent = train_mlp(width, 1, x_train, y_train, parent_epochs)
    halves = [y_train < 5, y_train >= 5]
    children, data = [], []
    for seed, half in zip((1, 2), halves):
        child = keras.models.clone_model(parent)
        child.set_weights(parent.get_weights())
        children.append(
            train_mlp(
                width,
                seed,
                x_train[half],
                y_train[half],
                child_epochs,
                model=child,
            )
        )
        data.append((x_train[half], y_train[half]))
    models = {
        "parent": parent,
        "child 0-4": children[0],
        "child 5-9": children[1],
    }
    for method in METHODS:
        for repair in (False, True):
            name = method + ("+repair" if repair else "")
            models[name] = merge_models(
                children, method=method, data=data, align=False, repair=repair
            )
    test_halves = [y_test < 5, y_test >= 5]
    print(f"{'model':>16s} {'0-4':>6s} {'5-9':>6s} {'all':>6s}")
    results = {}
    for name, model in models.items():
        predicted = np.argmax(model.predict(x_test, verbose=0), axis=-1)
        accuracy = [
            float(np.mean(predicted[h] == y_test[h])) for h in test_halves
        ]
        accuracy.append(float(np.mean(predicted == y_test)))
        results[name] = accuracy
        print(
            f"{name:>16s} " + " ".join(f"{a:6.3f}" for a in accuracy),
            flush=True,
        )
    return results


def main():
    print_environment()
    parser = argparse.ArgumentParser(
        description="Merged models' accuracy, every method."
    )
    parser.add_argument(
        "--part", default="both", choices=["same", "tasks", "both"]
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--seeds", default="1,2", help="the two training seeds (default: 1,2)"
    )
    parser.add_argument(
        "--cases",
        default=SAME_TASK,
        help=f"DATASET:WIDTH,... (default: {SAME_TASK})",
    )
    parser.add_argument("--task-width", type=int, default=64)
    parser.add_argument("--parent-epochs", type=int, default=1)
    parser.add_argument("--child-epochs", type=int, default=30)
    args = parser.parse_args()
    print(f"backend {keras.backend.backend()}")
    if args.part in ("same", "both"):
        print("same task: midpoint accuracy / mean endpoint accuracy")
        same_task(
            args.cases,
            tuple(int(s) for s in args.seeds.split(",")),
            args.epochs,
        )
    if args.part in ("tasks", "both"):
        print(
            f"\nacross tasks: digits 0-4 vs 5-9, width {args.task_width}, "
            f"parent {args.parent_epochs} epochs, children "
            f"{args.child_epochs}, merged without alignment"
        )
        print(
            json.dumps(
                across_tasks(
                    args.task_width, args.parent_epochs, args.child_epochs
                )
            )
        )


if __name__ == "__main__":
    main()
