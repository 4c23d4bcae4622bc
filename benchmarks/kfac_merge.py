"""What merging Kronecker-factored memories loses against their exact sum.

A sum of Kronecker products is not one, so `merge` refits it as the nearest
single product (keeping the exact minimizer of the sum as the anchor). On a
64-32-10 MLP trained on two permuted-digits tasks one after the other, this
prints per layer the relative Frobenius error of the merged precision
against the exact sum, and the merged penalty over the exact summed penalty
(EWC: one term per memory) at points between the two tasks' weights and
along random directions (less the constant by which the two differ).

Run: `KERAS_BACKEND=jax python benchmarks/kfac_merge.py`.
"""

import warnings

import keras
import numpy as np
from _environment import print_environment
from sklearn.datasets import load_digits

import keras_memgeom


def main():
    print_environment()
    warnings.filterwarnings("ignore", message="The memory's variable paths")
    rng = np.random.default_rng(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    tasks = [x, x[:, rng.permutation(64)]]
    model = keras_memgeom.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    memories, weights = [], []
    for task in tasks:
        model.compile("adam", loss, memories=memories[-1:], strength=1.0)
        model.fit(task, y, epochs=20, batch_size=64, verbose=0)
        memories.append(
            keras_memgeom.FisherMemory.estimate(
                model, (task, y), structure="kfac"
            )
        )
        weights.append(model.get_weights())
    merged = keras_memgeom.merge(memories)
    for kernel, block in merged.kronecker.items():
        exact = sum(
            m.num_examples
            * np.kron(m.kronecker[kernel].a, m.kronecker[kernel].g)
            for m in memories
        )
        approximation = merged.num_examples * np.kron(block.a, block.g)
        error = np.linalg.norm(approximation - exact) / np.linalg.norm(exact)
        print(
            f"{kernel}: merged precision vs exact sum, relative Frobenius "
            f"error {error:.3f}"
        )

    def penalty(memory_list, point):
        model.set_weights(point)
        return float(
            sum(
                keras.ops.convert_to_numpy(
                    m.penalty(model, num_train_examples=1)
                )
                for m in memory_list
            )
        )

    # The two differ by a constant: the exact sum's value at its minimizer,
    # which is the merged anchor.
    anchor = merged.anchor
    floor = penalty(
        memories, [anchor[v.path] for v in model.trainable_variables]
    )
    points = [
        (
            f"between the tasks' weights, t={t}",
            [(1 - t) * a + t * b for a, b in zip(*weights)],
        )
        for t in (0.0, 0.5, 1.0)
    ]
    points += [
        (
            f"random direction {k}",
            [
                w + 0.05 * rng.normal(size=w.shape).astype("float32")
                for w in weights[1]
            ],
        )
        for k in range(3)
    ]
    for where, point in points:
        merged_value, exact_value = (
            penalty([merged], point),
            penalty(memories, point) - floor,
        )
        print(
            f"{where}: merged penalty {merged_value:.3f}, exact sum "
            f"{exact_value:.3f}, ratio {merged_value / exact_value:.3f}"
        )


if __name__ == "__main__":
    main()
