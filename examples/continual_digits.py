"""Remember task A while learning task B: permuted 8x8 digits, offline.

Task A is scikit-learn's digits; task B the same digits with their pixels
permuted. The script trains on A, keeps a Fisher memory of it, trains on B
with and without the memory, and prints both tasks' accuracies.

Run: `python examples/continual_digits.py` (any `KERAS_BACKEND`).
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_memgeom


def make_tasks(seed=0):
    """Task A (digits) and task B (pixel-permuted digits), train and test."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed
    )
    permutation = np.random.default_rng(seed).permutation(x.shape[1])
    task_a = (x_train, y_train, x_test, y_test)
    task_b = (x_train[:, permutation], y_train, x_test[:, permutation], y_test)
    return task_a, task_b


def make_model(width=128):
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    hidden = keras.layers.Dense(width, activation="relu")(hidden)
    outputs = keras.layers.Dense(10)(hidden)
    return keras_memgeom.Model(inputs, outputs)


def accuracy(model, task):
    _, _, x_test, y_test = task
    return float(
        np.mean(np.argmax(model.predict(x_test, verbose=0), axis=-1) == y_test)
    )


def run(epochs=10, strength=100.0, seed=0, batch_size=32):
    """Trains A, then B with and without the memory of A.

    Returns:
        A dict `{"finetune": (acc_a, acc_b), "memory": (acc_a, acc_b)}`.
    """
    task_a, task_b = make_tasks(seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = {}
    for method in ("finetune", "memory"):
        keras.utils.set_random_seed(seed)
        model = make_model()
        model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        model.fit(
            task_a[0],
            task_a[1],
            epochs=epochs,
            batch_size=batch_size,
            verbose=0,
        )
        memory = keras_memgeom.FisherMemory.estimate(model, task_a[:2])
        memories = [memory] if method == "memory" else []
        model.compile(
            keras.optimizers.Adam(1e-3),
            loss,
            metrics=["accuracy"],
            memories=memories,
            strength=strength,
        )
        model.fit(
            task_b[0],
            task_b[1],
            epochs=epochs,
            batch_size=batch_size,
            verbose=0,
        )
        results[method] = (accuracy(model, task_a), accuracy(model, task_b))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--strength", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = run(args.epochs, args.strength, args.seed)
    print(f"backend: {keras.backend.backend()}")
    print(f"{'method':<10} {'task A':>8} {'task B':>8}")
    for method, (acc_a, acc_b) in results.items():
        print(f"{method:<10} {acc_a:8.3f} {acc_b:8.3f}")


if __name__ == "__main__":
    main()
