"""Normalization statistics under a memory: what each policy keeps of task A.

A small BatchNorm CNN (Conv2D, DepthwiseConv2D, SeparableConv2D, each
followed by BatchNormalization) learns sklearn's 8x8 digits (task A), then
the same digits rotated by 90 degrees (task B) with a `FisherMemory` of A,
once per `normalization_statistics` policy. Printed per strength: task-A
test accuracy after A; after B under each policy; after B under `"update"`
with A's moving statistics put back (what a per-task snapshot and restore
would give); and task-B test accuracy of each. docs/memory.md quotes it.

    KERAS_BACKEND=jax python benchmarks/batchnorm_statistics.py

3 to 6 minutes with JAX on 2 CPU cores shared with other jobs.
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment
from sklearn.datasets import load_digits

import keras_memgeom

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits(seed, task_b):
    """Task A (digits) and task B (rotated digits): train and test splits.

    `task_b="rotated-inverted"` also inverts B's intensities (`1 - x`), so
    that B's normalization statistics differ from A's.
    """
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = 1200
    rotated = np.rot90(x, axes=(1, 2)).copy()
    if task_b == "rotated-inverted":
        rotated = 1.0 - rotated
    return {
        "A": ((x[:split], y[:split]), (x[split:], y[split:])),
        "B": ((rotated[:split], y[:split]), (rotated[split:], y[split:])),
    }


def make_model(seed):
    keras.utils.set_random_seed(seed)
    return keras_memgeom.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.SeparableConv2D(16, 3, use_bias=False),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def accuracy(model, data):
    x, y = data
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def moving_statistics(model):
    """The moving means and variances of the model's BatchNormalization."""
    return [
        variable
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in (layer.moving_mean, layer.moving_variance)
    ]


def run(args):
    tasks = digits(args.seed, args.task_b)
    (train_a, test_a), (train_b, test_b) = tasks["A"], tasks["B"]
    model = make_model(args.seed)
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(*train_a, epochs=args.epochs, batch_size=32, verbose=0)
    after_a = accuracy(model, test_a)
    memory = keras_memgeom.FisherMemory.estimate(
        model, train_a, estimator="empirical"
    )
    weights_a = model.get_weights()
    stats_a = [keras.ops.convert_to_numpy(v) for v in moving_statistics(model)]
    print(f"task A after A: {after_a:.3f}  ({memory})", flush=True)
    print(
        "strength | A: freeze  update  update+A's stats | "
        "B: freeze  update  update+A's stats"
    )
    for strength in args.strengths:
        row_a, row_b = {}, {}
        for policy in ("freeze", "update"):
            model.set_weights(weights_a)
            model.compile(
                keras.optimizers.Adam(3e-3),
                LOSS,
                memories=[memory],
                strength=strength,
                normalization_statistics=policy,
            )
            model.fit(*train_b, epochs=args.epochs, batch_size=32, verbose=0)
            row_a[policy] = accuracy(model, test_a)
            row_b[policy] = accuracy(model, test_b)
        # The last run was "update": put A's moving statistics back.
        for variable, value in zip(moving_statistics(model), stats_a):
            variable.assign(value)
        row_a["restored"] = accuracy(model, test_a)
        row_b["restored"] = accuracy(model, test_b)
        print(
            f"{strength:>8g} |    {row_a['freeze']:.3f}   {row_a['update']:.3f}"
            f"   {row_a['restored']:.3f}            |"
            f"    {row_b['freeze']:.3f}   {row_b['update']:.3f}"
            f"   {row_b['restored']:.3f}",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=[10.0, 1000.0, 1e6]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--task-b", choices=["rotated", "rotated-inverted"], default="rotated"
    )
    args = parser.parse_args()
    print_environment()
    print(f"# task B: {args.task_b} digits; {args.epochs} epochs per task")
    start = time.perf_counter()
    run(args)
    print(f"# {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
