"""What a memory costs a large model's training, measured side by side.

An MLP of about 21M parameters (1024-4096-4096-10) trained with SGD on
random inputs, batch 256, once without and once with a Fisher memory of
all its variables compiled in. Prints, for the current `KERAS_BACKEND`:

- the first (compiling) training step with the memory over the first step
  without it (goal: at most 1.2): the memory is device state the traced
  step reads, not constants baked into it;
- a steady training step with the memory over a plain one (goal: at most
  1.10), the fastest of interleaved repeats;
- a second one-epoch `fit` with the memory over one without, which shows
  that refitting does not retrace the step.

And the cost of `merge` and `attach` for 3 memories of 100 and of 200
variables of 10k parameters: doubling the variables should about double
the time (linear, not quadratic).

Run: `KERAS_BACKEND=jax python benchmarks/memory_step_cost.py [--repeats 5]`.
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(widths):
    inputs = keras.Input((widths[0],))
    x = inputs
    for width in widths[1:-1]:
        x = keras.layers.Dense(width, activation="relu")(x)
    return keras_memgeom.Model(inputs, keras.layers.Dense(widths[-1])(x))


def _memory_of(model, rng):
    # A synthetic Fisher: what is measured is the penalty's cost, not the
    # estimate.
    anchor = {
        v.path: keras.ops.convert_to_numpy(v.value)
        for v in model.trainable_variables
    }
    fisher = {
        p: rng.uniform(0.0, 1.0, a.shape).astype("float32")
        for p, a in anchor.items()
    }
    return keras_memgeom.FisherMemory(anchor, fisher, num_examples=10_000)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _step_costs(args, rng):
    widths = [1024, 4096, 4096, 10]
    x = rng.normal(size=(args.batch_size * args.steps, widths[0])).astype(
        "float32"
    )
    y = rng.integers(0, widths[-1], len(x))
    models = {}
    for name in ("plain", "memory"):
        model = _mlp(widths)
        regularizers = [_memory_of(model, rng)] if name == "memory" else None
        model.compile(
            keras.optimizers.SGD(1e-3),
            LOSS,
            regularizers=regularizers,
            strength=1.0,
            num_train_examples=len(x),
        )
        models[name] = model
    size = sum(
        int(np.prod(v.shape)) for v in models["plain"].trainable_variables
    )
    print(
        f"MLP {'-'.join(map(str, widths))}: {size / 1e6:.1f}M parameters, "
        f"batch {args.batch_size}"
    )
    batch = (x[: args.batch_size], y[: args.batch_size])
    first = {
        name: _timed(lambda m=m: m.train_on_batch(*batch))
        for name, m in models.items()
    }
    steady = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            steady[name].append(
                _timed(lambda m=model: m.train_on_batch(*batch))
            )
    fits = {name: [] for name in models}
    for name, model in models.items():
        model.fit(
            x, y, batch_size=args.batch_size, epochs=1, verbose=0
        )  # traces fit's step
    for _ in range(2):
        for name, model in models.items():
            fits[name].append(
                _timed(
                    lambda m=model: m.fit(
                        x, y, batch_size=args.batch_size, epochs=1, verbose=0
                    )
                )
            )
    step = {name: min(times) for name, times in steady.items()}
    fit = {name: min(times) for name, times in fits.items()}
    print(
        f"first step (compiles): plain {first['plain']:.2f} s, with memory "
        f"{first['memory']:.2f} s, ratio "
        f"{first['memory'] / first['plain']:.2f} (goal <= 1.2)"
    )
    print(
        f"steady step: plain {step['plain'] * 1e3:.0f} ms, with memory "
        f"{step['memory'] * 1e3:.0f} ms, ratio "
        f"{step['memory'] / step['plain']:.2f} (goal <= 1.10)"
    )
    print(
        f"later one-epoch fit ({args.steps} steps): plain {fit['plain']:.2f} "
        f"s, with memory {fit['memory']:.2f} s, ratio "
        f"{fit['memory'] / fit['plain']:.2f}"
    )


def _attach_costs(rng):
    for num_variables in (100, 200):
        inputs = keras.Input((100,))
        x = inputs
        for _ in range(num_variables):
            x = keras.layers.Dense(100, use_bias=False)(x)
        model = keras.Model(inputs, x)
        memories = [_memory_of(model, rng) for _ in range(3)]
        merge_time = _timed(lambda: keras_memgeom.merge(memories))
        attach_time = _timed(
            lambda: keras_memgeom.attach(
                model, memories, num_train_examples=100, strength=1.0
            )
        )
        print(
            f"{num_variables} variables x 10k parameters, 3 memories: merge "
            f"{merge_time:.2f} s, attach {attach_time:.2f} s"
        )


def main():
    print_environment()
    parser = argparse.ArgumentParser(
        description="Training step cost of a memory."
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--steps", type=int, default=8, help="steps per timed epoch"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    _step_costs(args, rng)
    _attach_costs(rng)


if __name__ == "__main__":
    main()
