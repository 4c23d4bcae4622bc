"""What Kronecker-factored memories cost, against diagonal ones, side by side.

An MLP 784-400-400-10 on N MNIST-sized random examples. Prints, for the
current `KERAS_BACKEND`:

- K-FAC estimation (`exact`, batch 256) over one `fit` epoch on the same
  data (batch 32); goal: at most 3x. The diagonal exact estimate is shown
  beside it;
- a training step with a K-FAC memory attached over a step with a diagonal
  memory, at batch 32 and 256 (fastest of interleaved repeats), for the
  default rank (`FisherMemory.estimate`'s `rank`) and for whole factors
  (`rank=None`); goal: at most 1.3x.

`--quick` runs on fewer examples with fewer repeats.

Run: `KERAS_BACKEND=jax python benchmarks/kfac_cost.py [--examples 4096]
[--quick]`.
"""

import argparse
import time
import warnings

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom
from keras_memgeom.src.memory.fisher_memory import DEFAULT_RANK

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp():
    return keras_memgeom.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(400, activation="relu"),
            keras.layers.Dense(400, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _fastest(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    print_environment()
    # The copies' variable paths differ from the memory's; order matching is
    # meant.
    warnings.filterwarnings("ignore", message="The memory's variable paths")
    parser = argparse.ArgumentParser(
        description="K-FAC cost against diagonal memories."
    )
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="1024 examples, 2 repeats"
    )
    args = parser.parse_args()
    if args.quick:
        args.examples, args.repeats = 1024, 2
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.examples, 784)).astype("float32")
    y = rng.integers(0, 10, args.examples)
    model = _mlp()
    model.compile("sgd", LOSS)
    epoch = _fastest(
        lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0), 2
    )
    memories = {}
    timings = {}
    kinds = {
        "diagonal": {"structure": "diagonal"},
        f"kfac rank {DEFAULT_RANK}": {"structure": "kfac"},
        "kfac whole": {"structure": "kfac", "rank": None},
    }
    for kind, options in kinds.items():

        def estimate(kind=kind, options=options):
            memories[kind] = keras_memgeom.FisherMemory.estimate(
                model, (x, y), estimator="exact", **options
            )

        timings[kind] = _fastest(estimate, 2)
    print(f"one fit epoch (batch 32): {epoch:.2f} s")
    for structure, seconds in timings.items():
        print(
            f"exact {structure} estimate: {seconds:.2f} s = "
            f"{seconds / epoch:.2f} x epoch"
            + (" (goal <= 3)" if structure.startswith("kfac") else "")
        )
    for batch_size in (32, 256):
        steps = {}
        models = {}
        for structure, memory in memories.items():
            models[structure] = _mlp()
            models[structure].set_weights(model.get_weights())
            models[structure].compile(
                "sgd",
                LOSS,
                memories=[memory],
                strength=100.0,
                num_train_examples=args.examples,
            )
        batch = (x[:batch_size], y[:batch_size])
        for structure, m in models.items():
            m.train_on_batch(*batch)  # compile
        times = {s: [] for s in models}
        for _ in range(args.repeats * 4):
            for structure, m in models.items():
                start = time.perf_counter()
                m.train_on_batch(*batch)
                times[structure].append(time.perf_counter() - start)
        steps = {s: min(t) for s, t in times.items()}
        diagonal = steps["diagonal"]
        print(
            f"step at batch {batch_size}: "
            + ", ".join(f"{s} {t * 1e3:.2f} ms" for s, t in steps.items())
        )
        for kind in list(kinds)[1:]:
            print(
                f"  {kind} step / diagonal step: "
                f"{steps[kind] / diagonal:.2f} (goal <= 1.3)"
            )


if __name__ == "__main__":
    main()
