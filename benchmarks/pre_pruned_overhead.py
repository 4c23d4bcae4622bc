"""Cost of a pre-pruned Dense against a plain Dense, and of folding its mask.

Three models of the same widths, timed side by side in one run: single
calls interleaved model by model, so that machine load hits all of them
alike, and the fastest call of each kept, as `timeit` advises, since load
only ever adds time:

- dense: Dense -> Dense -> Dense;
- pre-pruned: PrePrunedDense hidden layers (zero rate 0.5, not widened, so
  the comparison isolates the `kernel * mask` product and its gradient);
- folded: `fold_mask(pre-pruned)`, plain Dense layers with `W * B` kernels.

Prints the per-step time of a training step (`train_on_batch`) and of
inference (`predict_on_batch`), and their ratios to dense.

Run:
    KERAS_BACKEND=jax python benchmarks/pre_pruned_overhead.py
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment

from keras_memgeom.layers import PrePrunedDense
from keras_memgeom.pruning import fold_mask


def build(layer_class, inputs, width, **kwargs):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            layer_class(width, activation="relu", **kwargs),
            layer_class(width, activation="relu", **kwargs),
            keras.layers.Dense(10),
        ]
    )


def time_call(function):
    start = time.perf_counter()
    function()  # returns NumPy values: the device is synchronized
    return time.perf_counter() - start


def main():
    print_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.inputs)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)

    keras.utils.set_random_seed(0)
    dense = build(keras.layers.Dense, args.inputs, args.width)
    pruned = build(
        PrePrunedDense, args.inputs, args.width, zero_rate=0.5, seed=0
    )
    folded = fold_mask(pruned)
    models = {"dense": dense, "pre-pruned": pruned, "folded": folded}
    np.testing.assert_allclose(
        folded.predict_on_batch(x), pruned.predict_on_batch(x), atol=1e-4
    )
    for model in models.values():
        model.compile(
            keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy"
        )
        for _ in range(3):  # compile and warm up
            model.train_on_batch(x, y)
            model.predict_on_batch(x)

    train = {name: [] for name in models}
    infer = {name: [] for name in models}
    for _ in range(args.calls):
        for name, model in models.items():
            train[name].append(time_call(lambda: model.train_on_batch(x, y)))
            infer[name].append(time_call(lambda: model.predict_on_batch(x)))

    print(
        f"backend {keras.backend.backend()}, {args.inputs} -> {args.width} -> "
        f"{args.width} -> 10, batch {args.batch}, fastest of {args.calls} "
        "interleaved calls"
    )
    print(f"{'':12} {'train ms':>9} {'ratio':>6} {'infer ms':>9} {'ratio':>6}")
    base_train, base_infer = min(train["dense"]), min(infer["dense"])
    for name in models:
        t, i = min(train[name]), min(infer[name])
        print(
            f"{name:12} {1e3 * t:9.2f} {t / base_train:6.3f} "
            f"{1e3 * i:9.2f} {i / base_infer:6.3f}"
        )


if __name__ == "__main__":
    main()
