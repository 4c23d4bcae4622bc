"""Forgetting of a BatchNorm CNN on rotated digits: fine-tuning against memory.

A small CNN (two Conv2D + BatchNormalization + ReLU blocks, max pooling,
Dense) learns a stream of 4 tasks made from scikit-learn's 8x8 digits
rotated by 0, 90, 180 and 270 degrees (exact rotations, same labels:
domain-incremental). The package's harness compares plain fine-tuning with
the online diagonal Fisher memory (`Online`, exact Fisher) at every strength
of a small sweep, each over 2 init seeds, and prints per run and per method
the average final accuracy, backward transfer (BWT) and learning accuracy.

BatchNorm's moving mean and variance are not trainable, so no memory holds
them. Under the harness the memory is attached with the package's default
`normalization_statistics="freeze"`: they are learned on the first task
(no memory is attached yet) and frozen from the second task on, while
gamma and beta stay trainable under the memory. Fine-tuning updates them
on every task. `--statistics freeze update` adds `online-update` runs, the
memory with Keras's behaviour (statistics updated on every task).

    KERAS_BACKEND=jax OMP_NUM_THREADS=1 python benchmarks/batchnorm_continual.py

(likewise `tensorflow` and `torch`). About 5 minutes per backend on 2
CPU cores shared with other jobs; twice that with both policies.
"""

import argparse
import os
import time

import keras
import numpy as np
from _environment import print_environment
from sklearn.datasets import load_digits

from keras_memgeom import continual


def rotated_digits(num_tasks=4):
    """One `(x, y)` pair per task: the digits rotated by `90 * t` degrees."""
    x, y = load_digits(return_X_y=True)
    images = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return [
        (np.rot90(images, t, axes=(1, 2)).copy(), y) for t in range(num_tasks)
    ]


def make_cnn():
    """Conv-BN-ReLU twice, max pooling, 10 logits; a new model per call."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name="bn_cnn",
    )


class OnlineUpdatingStatistics(continual.Online):
    """`Online` under `normalization_statistics="update"`, named apart."""

    name = "online-update"

    def __init__(self, *, normalization_statistics="update", **kwargs):
        super().__init__(
            normalization_statistics=normalization_statistics, **kwargs
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=[10.0, 100.0, 1000.0]
    )
    parser.add_argument(
        "--statistics",
        nargs="+",
        choices=("freeze", "update"),
        default=["freeze"],
        help="normalization_statistics policies of the memory runs",
    )
    parser.add_argument("--out", default="memgeom_runs/batchnorm_continual")
    args = parser.parse_args()
    print_environment()
    start = time.perf_counter()
    stream = continual.TaskStream.from_arrays(
        rotated_digits(args.tasks), name="rotated90-digits", seed=0
    )
    harness = continual.Harness(
        stream,
        model=make_cnn,
        epochs=args.epochs,
        batch_size=32,
        strength_grid=args.strengths,
        repeats=args.seeds,
    )
    memories = {"freeze": continual.Online, "update": OnlineUpdatingStatistics}
    document = harness.compare(
        [continual.Finetune()]
        + [memories[policy](strength="sweep") for policy in args.statistics]
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"results-{keras.backend.backend()}.json")
    continual.save_results(document, path)
    print(
        f"# {args.tasks} tasks (digits rotated by 0, 90, ... degrees), "
        f"{stream.tasks[0].num_examples('train')} training examples each, "
        f"BatchNorm CNN, {args.epochs} epochs per task, init seeds "
        f"0-{args.seeds - 1}; moving statistics under the memory: "
        f"{', '.join(args.statistics)}"
    )
    print(continual.format_table(document))
    print(f"# {time.perf_counter() - start:.0f} s; results in {path}")


if __name__ == "__main__":
    main()
