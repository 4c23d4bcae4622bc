"""What phase 2 does on digits: the frontal lobe's Fisher trace and accuracy.

A 64-32-32-10 ReLU MLP on scikit-learn's digits (1,400 train / 397 test),
frontal lobe = half the units of both hidden layers. Phase 1 trains
without the information penalty, phase 2 adds `lambda * trace(F_FL)`; the
exact Fisher trace of the frontal lobe on the training set and the test
accuracy are printed before and after phase 2, for the exact penalty and
for the empirical proxy (the settings of the test in
tests/frontal_lobe/test_frontal_lobe.py).

Goal: the trace falls by at least half, the accuracy by at most
2 points.

Run: `KERAS_BACKEND=jax python benchmarks/frontal_lobe_phase_two.py`.
"""

import keras
from _environment import print_environment
from sklearn.datasets import load_digits

import keras_memgeom
from keras_memgeom.src.memory.fisher import estimate_fisher

SETTINGS = [("exact", 1e-3, 20, 3), ("empirical", 3e-3, 15, 10)]


def run(estimator, learning_rate, task_epochs, information_epochs):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden_0")(inputs)
    hidden = keras.layers.Dense(32, activation="relu", name="hidden_1")(hidden)
    model = keras_memgeom.Model(inputs, keras.layers.Dense(10)(hidden))
    frontal_lobe = keras_memgeom.FrontalLobe(
        ["hidden_0", "hidden_1"],
        fraction=0.5,
        information_strength=1.0,
        estimator=estimator,
    )
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        frontal_lobe=frontal_lobe,
        metrics=["accuracy"],
    )

    def measure():
        fisher, _ = estimate_fisher(
            model, (x_train, y_train), estimator="exact"
        )
        return frontal_lobe.split(model, fisher)[0], model.evaluate(
            x_test, y_test, verbose=0
        )[1]

    model.set_information_penalty(False)
    model.fit(x_train, y_train, batch_size=64, epochs=task_epochs, verbose=0)
    before = measure()
    model.set_information_penalty(True)
    model.fit(
        x_train, y_train, batch_size=64, epochs=information_epochs, verbose=0
    )
    after = measure()
    print(
        f"{estimator:>9} penalty, Adam {learning_rate:g}, "
        f"{task_epochs}+{information_epochs} epochs: frontal-lobe Fisher "
        f"trace {before[0]:.2f} -> {after[0]:.2f} "
        f"(x{after[0] / before[0]:.2f}), test accuracy {before[1]:.4f} -> "
        f"{after[1]:.4f} ({100 * (after[1] - before[1]):+.1f} points)",
        flush=True,
    )


def main():
    print_environment()
    for setting in SETTINGS:
        run(*setting)


if __name__ == "__main__":
    main()
