"""Continual learning of a small CNN on rotated (or permuted) 8x8 digits.

The tasks are built by hand from scikit-learn's digits, as one would from
one's own data, and handed to the harness with `TaskStream.from_arrays`;
the model is a small Keras CNN (Conv2D on 8x8x1 images). It compares
finetune (no memory), ewc (one penalty per task), online-ewc (one running
importance anchored at the latest weights), online (the package's merged
memory) and joint (all data so far), over one or more init seeds.

Run: `python examples/continual_cnn_digits.py` (any `KERAS_BACKEND`; about
a minute), or e.g. `--scenario permuted --seeds 3 --epochs 5`.
"""

import argparse

import keras
import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from keras_memgeom import continual

METHODS = ("finetune", "ewc", "online-ewc", "online", "joint")


def make_tasks(scenario, num_tasks, seed=0):
    """One `(x, y)` pair per task: images `(N, 8, 8, 1)` in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    images = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(num_tasks):
        if scenario == "rotated":
            angle = 180.0 * t / num_tasks
            changed = ndimage.rotate(
                images, angle, axes=(1, 2), reshape=False, order=1
            )
        else:
            order = np.arange(64) if t == 0 else rng.permutation(64)
            changed = images.reshape(-1, 64)[:, order].reshape(images.shape)
        tasks.append((changed, y))
    return tasks


def make_cnn():
    """A small CNN: two 3x3 convolutions, then a dense layer, 10 logits."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


def run(
    scenario="rotated",
    num_tasks=3,
    epochs=5,
    seeds=1,
    strength=100.0,
    max_examples=None,
    methods=METHODS,
    progress=None,
):
    """Trains every method on the stream; returns the results document.

    Args:
        scenario: `"rotated"` or `"permuted"`.
        num_tasks: number of tasks.
        epochs: epochs per task.
        seeds: init seeds 0, 1, ... to repeat every method with.
        strength: penalty strength of the memory methods.
        max_examples: use at most this many digits per task (all: 1797).
        methods: names of the methods to compare.
        progress: `None`, or a callable taking one line of progress text.
    """
    tasks = [
        (x[:max_examples], y[:max_examples])
        for x, y in make_tasks(scenario, num_tasks)
    ]
    stream = continual.TaskStream.from_arrays(
        tasks, name=f"{scenario}-digits", seed=0
    )
    harness = continual.Harness(
        stream,
        model=make_cnn(),
        epochs=epochs,
        batch_size=32,
        repeats=seeds,
        progress=progress,
    )
    strategies = [
        continual.get_strategy(name, strength=strength)
        if name in ("ewc", "online-ewc", "online")
        else continual.get_strategy(name)
        for name in methods
    ]
    return harness.compare(strategies)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", choices=("rotated", "permuted"), default="rotated"
    )
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--strength", type=float, default=100.0)
    args = parser.parse_args()
    document = run(
        args.scenario, args.tasks, args.epochs, args.seeds, args.strength
    )
    print(
        f"backend: {keras.backend.backend()}; {args.scenario} digits, "
        f"{args.tasks} tasks, CNN, {args.epochs} epochs per task, {args.seeds} "
        "init seed(s)"
    )
    print(continual.format_table(document))


if __name__ == "__main__":
    main()
