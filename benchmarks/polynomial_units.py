"""Orthogonal-polynomial units against ReLU on digits, side by side.

Four classifiers, trained alike (Adam 1e-3, 40 epochs, three seeds):

- relu: Dense(64, relu) x 2;
- ortho: Dense(64) -> OrthoPolynomial(degree 4) x 2, a learned activation
  per unit (Glukhov 2024, 6.2.2);
- kan: PolynomialDense(32, degree 3) -> LayerNormalization ->
  PolynomialDense(10, degree 3), KAN-style (Glukhov 2024, 6.2.3);
- kan pre-pruned: the same with zero rate 0.5 on the hidden layer.

Prints test accuracy, trainable parameter count (masked entries included)
and training time per epoch relative to relu.

Run:
    KERAS_BACKEND=jax python benchmarks/polynomial_units.py [--basis legendre]
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_memgeom.layers import OrthoPolynomial
from keras_memgeom.layers import PolynomialDense


def build(kind, basis):
    layers = [keras.Input((64,))]
    if kind == "relu":
        layers += [keras.layers.Dense(64, activation="relu") for _ in range(2)]
    elif kind == "ortho":
        for _ in range(2):
            layers += [keras.layers.Dense(64), OrthoPolynomial(4, basis=basis)]
    else:
        zero_rate = 0.5 if kind == "kan pre-pruned" else None
        layers += [
            PolynomialDense(32, 3, basis=basis, zero_rate=zero_rate, seed=0),
            keras.layers.LayerNormalization(),
        ]
    if kind.startswith("kan"):
        layers.append(PolynomialDense(10, 3, basis=basis))
        layers.append(keras.layers.Softmax())
    else:
        layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


def main():
    print_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--basis", default="chebyshev")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    kinds = ("relu", "ortho", "kan", "kan pre-pruned")
    accuracy = {kind: [] for kind in kinds}
    seconds = {kind: [] for kind in kinds}
    parameters = {}
    for seed in range(args.seeds):
        for kind in kinds:  # interleaved, so that load hits all alike
            keras.utils.set_random_seed(seed)
            model = build(kind, args.basis)
            model.compile(
                keras.optimizers.Adam(1e-3),
                "sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
            start = time.perf_counter()
            model.fit(
                x_train,
                y_train,
                epochs=args.epochs - 1,
                batch_size=32,
                verbose=0,
            )
            seconds[kind].append(
                (time.perf_counter() - start) / (args.epochs - 1)
            )
            accuracy[kind].append(model.evaluate(x_test, y_test, verbose=0)[1])
            # Trainable only: the pre-pruned mask is a non-trainable weight.
            parameters[kind] = sum(
                int(np.prod(w.shape)) for w in model.trainable_weights
            )

    print(
        f"backend {keras.backend.backend()}, digits, basis {args.basis}, "
        f"{args.epochs} epochs, {args.seeds} seeds"
    )
    print(f"{'':16} {'accuracy':>17} {'trainable':>11} {'time/epoch':>11}")
    base = min(seconds["relu"])
    for kind in kinds:
        print(
            f"{kind:16} {np.mean(accuracy[kind]):.4f} +- "
            f"{np.std(accuracy[kind]):.4f} {parameters[kind]:11d} "
            f"{min(seconds[kind]) / base:10.2f}x"
        )


if __name__ == "__main__":
    main()
