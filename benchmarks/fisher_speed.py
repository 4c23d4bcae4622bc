"""Fisher estimation cost against one `fit` epoch, measured side by side.

An MLP 784-400-400-10 on N examples (MNIST-sized random inputs, so the
script runs anywhere). Prints, for the current `KERAS_BACKEND`, the time of
one `fit` epoch (batch size 32, Keras' default) and of each diagonal Fisher
estimator over the same N examples, as ratios to the epoch; and the same
estimator as a Python loop over single examples (timed on a subset, scaled
to N), with the loop's time over the vectorized one.
Steady state: each function runs once to compile before it is timed.

Goals (issue "Foundation"): empirical and sampled at most 1.5x an epoch,
exact (10 classes) at most 6x, all at least 30x faster than the loop.

Run: `KERAS_BACKEND=jax python benchmarks/fisher_speed.py [--examples 4096]`.
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment

from keras_memgeom import FisherMemory


def _timed(fn, repeats=1):
    fn()  # compile / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    print_environment()
    parser = argparse.ArgumentParser(description="Fisher cost / fit epoch.")
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--loop-examples", type=int, default=128)
    parser.add_argument(
        "--batch-size", type=int, default=256, help="Fisher batch size"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.examples, 784)).astype("float32")
    y = rng.integers(0, 10, args.examples)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(400, activation="relu"),
            keras.layers.Dense(400, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )

    epoch = _timed(lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0))
    print(
        f"backend {keras.backend.backend()}, {args.examples} examples, MLP "
        "784-400-400-10"
    )
    print(f"fit epoch (batch 32): {epoch:.3f} s")
    print(
        f"{'estimator':10s} {'seconds':>9s} {'/ epoch':>9s} {'loop s':>9s} "
        f"{'loop / it':>10s}"
    )
    for estimator in ("empirical", "sampled", "exact", "batched"):
        seconds = _timed(
            lambda: FisherMemory.estimate(
                model, (x, y), estimator=estimator, batch_size=args.batch_size
            )
        )
        line = f"{estimator:10s} {seconds:9.3f} {seconds / epoch:9.2f}"
        if estimator != "batched":
            loop = _timed(
                lambda: _loop(model, x, y, estimator, args.loop_examples)
            )
            loop *= args.examples / args.loop_examples
            line += f" {loop:9.3f} {loop / seconds:10.1f}"
        print(line)


def _loop(model, x, y, estimator, count):
    """The per-example baseline: one estimate per single example."""
    for i in range(count):
        FisherMemory.estimate(
            model, (x[i : i + 1], y[i : i + 1]), estimator=estimator
        )


if __name__ == "__main__":
    main()
