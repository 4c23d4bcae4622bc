"""What a memory costs training, every figure against its goal, in one run.

For the current `KERAS_BACKEND` and the device it computes on, prints:

- a steady training step with a diagonal memory of every variable over a
  plain step, MLP 784-2048-2048-10 (5.8M parameters), SGD, batch 256,
  the fastest of interleaved repeats (goal: at most 1.10). The first
  (compiling) steps are shown beside it: the memory is device state the
  traced step reads, not constants baked into it;
- a later one-epoch `fit` with that memory over one without (goal: at
  most 1.2): refitting does not retrace the step;
- a step with a K-FAC memory at the default rank
  (`FisherMemory.estimate(..., structure="kfac")`) over a step with a
  diagonal one, MLP 784-400-400-10, batch 32 (goal: at most 1.3); whole
  factors (`rank=None`) beside it;
- the numbers a K-FAC memory stores at the default rank over the
  diagonal's, for a 1024 -> 4096 and a 1024 -> 1024 Dense layer (goal: at
  most 4x);
- the cost of `merge` and `attach` for 3 memories of 100 and of 200
  variables of 10k parameters: doubling the variables should about double
  the time (linear, not quadratic).

Timings are the fastest of interleaved repeats; on a shared machine they
are noisy. `--quick` runs fewer repeats and steps.

Run: `KERAS_BACKEND=jax python benchmarks/memory_step_cost.py [--quick]`.
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom
from keras_memgeom.src.memory.fisher_memory import DEFAULT_RANK
from keras_memgeom.src.memory.kronecker import EigenFactor
from keras_memgeom.src.memory.kronecker import KroneckerBlock
from keras_memgeom.src.memory.kronecker import factor_numbers
from keras_memgeom.src.memory.kronecker import truncate_block

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(widths):
    inputs = keras.Input((widths[0],))
    x = inputs
    for width in widths[1:-1]:
        x = keras.layers.Dense(width, activation="relu")(x)
    return keras_memgeom.Model(inputs, keras.layers.Dense(widths[-1])(x))


def _anchor(model):
    return {
        v.path: keras.ops.convert_to_numpy(v.value)
        for v in model.trainable_variables
    }


def _diagonal_memory(model, rng):
    # A synthetic Fisher: what is measured is the penalty's cost, not the
    # estimate.
    anchor = _anchor(model)
    fisher = {
        p: rng.uniform(0.0, 1.0, a.shape).astype("float32")
        for p, a in anchor.items()
    }
    return keras_memgeom.FisherMemory(anchor, fisher, num_examples=10_000)


def _random_psd(rng, size):
    root = rng.normal(size=(size, size + 8))
    return (root @ root.T / (size + 8)).astype("float32")


def _kfac_memory(model, rng, rank):
    """A K-FAC memory of every Dense layer with random PSD factors."""
    anchor = _anchor(model)
    kronecker = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Dense):
            continue
        fan_in, units = layer.kernel.shape
        block = KroneckerBlock(
            layer.bias.path,
            _random_psd(rng, fan_in + 1),
            _random_psd(rng, units),
        )
        kronecker[layer.kernel.path] = truncate_block(block, rank)
    return keras_memgeom.FisherMemory(
        anchor, {}, num_examples=10_000, kronecker=kronecker
    )


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _compiled(model, memory, num_train_examples):
    model.compile(
        keras.optimizers.SGD(1e-3),
        LOSS,
        memories=None if memory is None else [memory],
        strength=1.0,
        num_train_examples=num_train_examples,
    )
    return model


def _interleaved_steps(models, batch, repeats):
    """The fastest step of each model, repeats interleaved (after warm-up)."""
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(_timed(lambda m=model: m.train_on_batch(*batch)))
    return {name: min(t) for name, t in times.items()}


def _report(what, ratio, goal):
    verdict = "meets" if ratio <= goal else "misses"
    print(f"{what}: {ratio:.3f} (goal <= {goal:g}, {verdict} it)", flush=True)


def _diagonal_costs(args, rng):
    widths = [784, 2048, 2048, 10]
    x = rng.normal(size=(args.batch_size * args.steps, widths[0])).astype(
        "float32"
    )
    y = rng.integers(0, widths[-1], len(x))
    models = {}
    for name in ("plain", "memory"):
        model = _mlp(widths)
        memory = _diagonal_memory(model, rng) if name == "memory" else None
        models[name] = _compiled(model, memory, len(x))
    size = sum(
        int(np.prod(v.shape)) for v in models["plain"].trainable_variables
    )
    print(
        f"MLP {'-'.join(map(str, widths))}: {size / 1e6:.1f}M parameters, "
        f"SGD, batch {args.batch_size}"
    )
    batch = (x[: args.batch_size], y[: args.batch_size])
    first = {
        name: _timed(lambda m=m: m.train_on_batch(*batch))
        for name, m in models.items()
    }
    step = _interleaved_steps(models, batch, args.repeats)
    print(
        f"  first step (compiles): plain {first['plain']:.2f} s, with memory "
        f"{first['memory']:.2f} s"
    )
    print(
        f"  steady step: plain {step['plain'] * 1e3:.1f} ms, with a diagonal "
        f"memory {step['memory'] * 1e3:.1f} ms"
    )
    _report(
        "  diagonal memory step / plain step",
        step["memory"] / step["plain"],
        1.1,
    )
    for model in models.values():  # traces fit's step
        model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    fits = {name: [] for name in models}
    for _ in range(args.fit_repeats):
        for name, model in models.items():
            fits[name].append(
                _timed(
                    lambda m=model: m.fit(
                        x, y, batch_size=args.batch_size, epochs=1, verbose=0
                    )
                )
            )
    fit = {name: min(times) for name, times in fits.items()}
    print(
        f"  later one-epoch fit ({args.steps} steps): plain "
        f"{fit['plain']:.2f} s, with memory {fit['memory']:.2f} s"
    )
    _report(
        "  later fit with memory / plain fit", fit["memory"] / fit["plain"], 1.2
    )


def _kfac_costs(args, rng):
    widths = [784, 400, 400, 10]
    batch_size = 32
    x = rng.uniform(size=(batch_size, widths[0])).astype("float32")
    y = rng.integers(0, widths[-1], batch_size)
    models = {}
    reference = _mlp(widths)
    memories = {
        "diagonal": _diagonal_memory(reference, rng),
        f"kfac rank {DEFAULT_RANK}": _kfac_memory(reference, rng, DEFAULT_RANK),
        "kfac whole factors": _kfac_memory(reference, rng, None),
    }
    for name, memory in memories.items():
        model = _mlp(widths)
        model.set_weights(reference.get_weights())
        models[name] = _compiled(model, memory, 4096)
        models[name].train_on_batch(x, y)  # compiles
    step = _interleaved_steps(models, (x, y), 4 * args.repeats)
    print(
        f"MLP {'-'.join(map(str, widths))}, SGD, batch {batch_size}: step "
        + ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in step.items())
    )
    diagonal = step["diagonal"]
    _report(
        f"  K-FAC (rank {DEFAULT_RANK}) step / diagonal step",
        step[f"kfac rank {DEFAULT_RANK}"] / diagonal,
        1.3,
    )
    print(
        "  K-FAC (whole factors) step / diagonal step: "
        f"{step['kfac whole factors'] / diagonal:.2f}"
    )


def _kfac_sizes():
    for fan_in, units in ((1024, 4096), (1024, 1024)):
        rows = fan_in + 1  # the bias row
        # The numbers stored are set by the shapes; the values do not matter.
        stored = sum(
            factor_numbers(
                EigenFactor(
                    np.zeros((size, min(DEFAULT_RANK, size))),
                    np.zeros(min(DEFAULT_RANK, size)),
                    0.0,
                )
                if DEFAULT_RANK < size
                else np.zeros((size, size))
            )
            for size in (rows, units)
        )
        whole = rows**2 + units**2
        diagonal = rows * units
        print(
            f"Dense {fan_in} -> {units}: Fisher numbers stored: diagonal "
            f"{diagonal:,}, K-FAC rank {DEFAULT_RANK} {stored:,}, whole "
            f"factors {whole:,}"
        )
        _report(
            f"  K-FAC (rank {DEFAULT_RANK}) memory / diagonal memory",
            stored / diagonal,
            4.0,
        )


def _attach_costs(rng, sizes):
    for num_variables in sizes:
        inputs = keras.Input((100,))
        x = inputs
        for _ in range(num_variables):
            x = keras.layers.Dense(100, use_bias=False)(x)
        model = keras.Model(inputs, x)
        memories = [_diagonal_memory(model, rng) for _ in range(3)]
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
    parser = argparse.ArgumentParser(
        description="Training step cost of a memory, against its goals."
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--steps", type=int, default=8, help="steps per timed epoch"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: fewer repeats and steps, no merge/attach scaling",
    )
    args = parser.parse_args()
    args.fit_repeats = 2
    if args.quick:
        args.steps, args.repeats, args.fit_repeats = 4, 3, 1
    print_environment()
    rng = np.random.default_rng(0)
    _diagonal_costs(args, rng)
    _kfac_costs(args, rng)
    _kfac_sizes()
    if not args.quick:
        _attach_costs(rng, (100, 200))


if __name__ == "__main__":
    main()
