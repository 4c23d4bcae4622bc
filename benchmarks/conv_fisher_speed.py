"""Exact Fisher of a small convolutional model: seconds per 1,000 examples.

A Conv2D(8, 3) + Flatten + Dense(10) model on 8x8x1 inputs, 1,024 random
examples, the exact estimator (10 classes). The Conv2D kernel takes the
generic per-example path; the Dense layer the fast one. Steady state: one
estimate runs to compile before the timed ones.

Run: `KERAS_BACKEND=tensorflow python benchmarks/conv_fisher_speed.py`.
"""

import argparse
import time

import keras
import numpy as np

from keras_memgeom.src.memory.fisher import estimate_fisher


def main():
    parser = argparse.ArgumentParser(
        description="Exact conv Fisher, seconds per 1k examples."
    )
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, args.examples)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    estimate_fisher(model, (x, y), estimator="exact")  # compile
    start = time.perf_counter()
    for _ in range(args.repeats):
        estimate_fisher(model, (x, y), estimator="exact")
    seconds = (time.perf_counter() - start) / args.repeats
    device = _device()
    print(
        f"backend {keras.backend.backend()}, device {device}: "
        f"{seconds * 1000 / args.examples:.3f} s per 1k examples (exact, 10 "
        "classes)"
    )


def _device():
    # `keras.distribution.list_devices` is not implemented on torch.
    try:
        return keras.distribution.list_devices()[0]
    except AttributeError:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
