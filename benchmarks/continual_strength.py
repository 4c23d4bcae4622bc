"""Strength sweep of the online memory: the measurements behind the defaults.

Runs finetune, joint and `online` at several strengths on permuted
`mnist5k` (10 tasks, width 400) and permuted `digits` (10 tasks, widths
1000 and 100), prints a table per setting and writes each results
document to `--out`. docs/harness.md quotes the tables.

    KERAS_BACKEND=jax python benchmarks/continual_strength.py --setting all

About 5 minutes per setting on 2 CPU cores with JAX.
"""

import argparse
import os
import time

from _environment import print_environment

from keras_memgeom import continual

SETTINGS = {
    "mnist5k": dict(
        dataset="mnist5k", width=400, strengths=(1, 100, 300, 1000)
    ),
    "digits": dict(dataset="digits", width=1000, strengths=(100, 1000, 10000)),
    "digits-narrow": dict(dataset="digits", width=100, strengths=(100, 1000)),
}


def sweep(name, out, *, tasks, epochs, seed):
    setting = SETTINGS[name]
    stream = continual.TaskStream.make(
        "permuted", setting["dataset"], num_tasks=tasks, seed=seed
    )
    harness = continual.Harness(
        stream, width=setting["width"], epochs=epochs, seed=seed
    )
    runs = {}
    for strategy in [continual.Finetune(), continual.Joint()] + [
        continual.Online(strength=s) for s in setting["strengths"]
    ]:
        key = (
            strategy.name
            if strategy.strength is None
            else f"online-{strategy.strength:g}"
        )
        runs[key] = harness.run(strategy)
        print(
            f"{name}: {key} average accuracy "
            f"{runs[key]['average_accuracy']:.3f}",
            flush=True,
        )
    document = continual.make_document(harness.get_config(), seed, runs)
    continual.save_results(document, os.path.join(out, f"strength-{name}.json"))
    return document


def main():
    print_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setting", choices=[*SETTINGS, "all"], default="mnist5k"
    )
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="memgeom_runs/strength")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in SETTINGS if args.setting == "all" else [args.setting]:
        start = time.perf_counter()
        document = sweep(
            name, args.out, tasks=args.tasks, epochs=args.epochs, seed=args.seed
        )
        print(f"\n{name} ({time.perf_counter() - start:.0f} s)")
        print(continual.format_table(document), "\n", flush=True)


if __name__ == "__main__":
    main()
