"""The acceptance benchmark of the `memgeom` command, with its checks.

Runs, through the command, with its defaults:

    memgeom bench --scenario permuted --tasks 10 --dataset mnist5k \
        --methods finetune,online,joint

and checks that `online` reaches at least 0.85 average accuracy, that
`finetune` stays below 0.70 and that `joint` is the best. About 4 minutes
on 2 CPU cores with JAX.

    KERAS_BACKEND=jax python benchmarks/continual_acceptance.py [--out DIR]
"""

import argparse
import sys
import time

from _environment import print_environment

from keras_memgeom import continual
from keras_memgeom.src.cli.main import main as memgeom


def main():
    print_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="memgeom_runs/acceptance")
    args = parser.parse_args()
    start = time.perf_counter()
    code = memgeom(
        [
            "bench",
            "--scenario",
            "permuted",
            "--tasks",
            "10",
            "--dataset",
            "mnist5k",
            "--methods",
            "finetune,online,joint",
            "--out",
            args.out,
        ]
    )
    if code:
        return code
    accuracy = {
        name: run["average_accuracy"]
        for name, run in continual.load_results(f"{args.out}/results.json")[
            "methods"
        ].items()
    }
    checks = {
        "online >= 0.85": accuracy["online"] >= 0.85,
        "finetune < 0.70": accuracy["finetune"] < 0.70,
        "joint is the upper bound": accuracy["joint"] >= max(accuracy.values()),
    }
    for check, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
