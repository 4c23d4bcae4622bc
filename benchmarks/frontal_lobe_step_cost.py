"""Cost of a phase-2 (information penalty) step against a plain step.

An MLP on digits-sized inputs (64 -> width -> width -> 10, ReLU), compiled
as `keras_memgeom.Model` with a frontal lobe of half the units of both
hidden layers and a long-term memory attached. Times `fit` epochs of the
same data, batch size and architecture side by side: with the information
penalty off (a plain step with the memory penalty, phase 1) and on (phase
2), for the `empirical` proxy and the `exact` Fisher trace. Epochs are timed
by a callback inside one `fit` (no per-`fit` set-up), after a first epoch
that traces and warms up; the two models alternate `--repeats` times and
the fastest epochs are compared (the least disturbed by other load on a
shared machine, which hits both alike).

Goal: a phase-2 step costs at most 3x a plain training step.

Run:

    KERAS_BACKEND=jax python benchmarks/frontal_lobe_step_cost.py --width 32
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom


def build(width, estimator, x, y):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(width, activation="relu", name="hidden_0")(
        inputs
    )
    hidden = keras.layers.Dense(width, activation="relu", name="hidden_1")(
        hidden
    )
    model = keras_memgeom.Model(
        inputs, keras.layers.Dense(10, name="logits")(hidden)
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    memory = keras_memgeom.FisherMemory.estimate(model, (x, y))
    frontal_lobe = keras_memgeom.FrontalLobe(
        ["hidden_0", "hidden_1"],
        fraction=0.5,
        information_strength=1.0,
        estimator=estimator,
    )
    model.compile(
        "adam",
        loss,
        memories=[memory],
        strength=10.0,
        frontal_lobe=frontal_lobe,
    )
    return model


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def epoch_times(models, x, y, batch_size, repeats):
    """Fastest epoch time of each model, alternating between them."""
    timers = [EpochTimes() for _ in models]
    for model in models:
        model.fit(
            x, y, batch_size=batch_size, epochs=1, verbose=0
        )  # trace, warm up
    for _ in range(repeats):
        for model, timer in zip(models, timers):
            model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=2,
                verbose=0,
                callbacks=[timer],
            )
    return [min(timer.times) for timer in timers]


def main():
    print_environment()
    parser = argparse.ArgumentParser(
        description="Phase-2 step cost / plain step."
    )
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.examples, 64)).astype("float32")
    y = rng.integers(0, 10, size=args.examples)
    steps = -(-args.examples // args.batch_size)
    print(
        f"backend {keras.backend.backend()}, MLP "
        f"64-{args.width}-{args.width}-10, batch {args.batch_size}, {steps} "
        "steps per epoch"
    )
    for estimator in ("empirical", "exact"):
        plain_model = build(args.width, estimator, x, y)
        plain_model.set_information_penalty(False)
        phase2_model = build(args.width, estimator, x, y)
        plain, phase2 = epoch_times(
            [plain_model, phase2_model], x, y, args.batch_size, args.repeats
        )
        print(
            f"{estimator:>9}: plain step {1e3 * plain / steps:7.3f} ms, "
            f"phase-2 step {1e3 * phase2 / steps:7.3f} ms, ratio "
            f"{phase2 / plain:5.2f}"
        )


if __name__ == "__main__":
    main()
