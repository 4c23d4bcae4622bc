"""Forgetting of tiny transformers on synthetic text tasks, memory or not.

Every example is a sequence of 16 token ids: a `[CLS]` id, then 1 to 6
copies of each of two signal tokens among filler tokens, shuffled; the
label says whether the first signal token occurs more often than the
second (never as often; the labels are balanced). Every task compares
another pair of signal tokens; the filler is shared by all. With
`--tokens chained` (the default) task t compares tokens t and t + 1, so
consecutive tasks share one token in opposite roles and what one task
learns about it the next one contradicts; with `--tokens own` every task
has a pair of its own. The data are made offline with numpy.

The model is a tiny transformer built from Keras layers (Embedding,
MultiHeadAttention, LayerNormalization, Dense; mean pooling, 2 logits) and,
when keras_hub is importable, a tiny `keras_hub` `BertTextClassifier`
built from config with random weights, wrapped as a `keras_memgeom.Model`
that feeds it token ids only. The package's harness compares plain
fine-tuning with the online diagonal Fisher memory (`Online`, exact Fisher)
at every strength of a small sweep, over the init seeds, and prints the
average final accuracy, backward transfer (BWT) and learning accuracy.

    KERAS_BACKEND=jax OMP_NUM_THREADS=1 python benchmarks/text_continual.py

About 7 minutes per model with JAX on 2 CPU cores shared with other jobs.
Options: `--models transformer,bert`, `--tokens chained|own`, `--tasks`,
`--seeds`, `--strengths`.
"""

import argparse
import os
import time

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom
from keras_memgeom import continual

CLS = 0  # the first token of every sequence; signal ids follow it
NUM_FILLER = 24


def make_tasks(num_tasks, tokens, *, length=16, examples=2000, seed=0):
    """One `(x, y)` pair per task; `x` holds token ids, as float32 arrays."""
    rng = np.random.default_rng(seed)
    num_signal = num_tasks + 1 if tokens == "chained" else 2 * num_tasks
    filler = np.arange(1 + num_signal, 1 + num_signal + NUM_FILLER)
    tasks = []
    for t in range(num_tasks):
        first, second = (
            (t, t + 1) if tokens == "chained" else (2 * t, 2 * t + 1)
        )
        x = rng.choice(filler, size=(examples, length - 1))
        # Counts 1-6 of each signal token, never equal: the label is defined.
        counts = np.stack(
            [rng.integers(1, 7, examples), rng.integers(1, 6, examples)], 1
        )
        counts[:, 1] += counts[:, 1] >= counts[:, 0]  # balanced labels
        for i, (a, b) in enumerate(counts):
            places = rng.permutation(length - 1)
            x[i, places[:a]] = 1 + first
            x[i, places[a : a + b]] = 1 + second
        x = np.concatenate([np.full((examples, 1), CLS), x], axis=1)
        tasks.append(
            (x.astype("float32"), (counts[:, 0] > counts[:, 1]).astype("int32"))
        )
    return tasks, 1 + num_signal + NUM_FILLER


def transformer(vocabulary, length, width=32):
    """Embedding, one attention block with a feed-forward, mean pooling."""
    tokens = keras.Input((length,))
    h = keras.layers.Embedding(vocabulary, width)(tokens)
    h = keras.layers.LayerNormalization()(
        h + keras.layers.MultiHeadAttention(2, width // 2)(h, h)
    )
    feed = keras.layers.Dense(2 * width, activation="relu")(h)
    h = keras.layers.LayerNormalization()(h + keras.layers.Dense(width)(feed))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras_memgeom.Model(tokens, keras.layers.Dense(2)(h))


def bert(vocabulary, length):
    """A 1-layer `BertTextClassifier` with random weights, fed token ids."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary,
        num_layers=1,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=0.0,
        max_sequence_length=length,
    )
    task = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None, dropout=0.0
    )
    # The harness feeds one float array: ids in, one segment, no padding.
    tokens = keras.Input((length,))
    ids = keras.ops.cast(tokens, "int32")
    logits = task(
        {
            "token_ids": ids,
            "segment_ids": keras.ops.zeros_like(ids),
            "padding_mask": keras.ops.ones_like(ids),
        }
    )
    return keras_memgeom.Model(tokens, logits)


MODELS = {"transformer": transformer, "bert": bert}


def model_function(name, vocabulary, length):
    """The harness's zero-argument model builder, named after the model."""

    def build():
        return MODELS[name](vocabulary, length)

    build.__name__ = name
    return build


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="transformer,bert")
    parser.add_argument(
        "--tokens", choices=("chained", "own"), default="chained"
    )
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=[100.0, 1000.0, 10000.0]
    )
    parser.add_argument("--out", default="memgeom_runs/text_continual")
    args = parser.parse_args()
    print_environment()
    tasks, vocabulary = make_tasks(args.tasks, args.tokens)
    length = tasks[0][0].shape[1]
    stream = continual.TaskStream.from_arrays(
        tasks, name=f"tokens-{args.tokens}", seed=0
    )
    print(
        f"# {args.tasks} tasks, signal tokens {args.tokens}, "
        f"{stream.tasks[0].num_examples('train')} training sequences of "
        f"{length} tokens each, vocabulary {vocabulary}, {args.epochs} epochs "
        f"per task, init seeds 0-{args.seeds - 1}",
        flush=True,
    )
    os.makedirs(args.out, exist_ok=True)
    for name in args.models.split(","):
        if name == "bert":
            try:
                import keras_hub  # noqa: F401
            except ImportError:
                print("# bert: skipped, keras_hub is not importable")
                continue
        start = time.perf_counter()
        harness = continual.Harness(
            stream,
            model=model_function(name, vocabulary, length),
            epochs=args.epochs,
            batch_size=32,
            strength_grid=args.strengths,
            repeats=args.seeds,
        )
        document = harness.compare(
            [continual.Finetune(), continual.Online(strength="sweep")]
        )
        path = os.path.join(
            args.out, f"{name}-{args.tokens}-{keras.backend.backend()}.json"
        )
        continual.save_results(document, path)
        print(f"\n## {name} ({time.perf_counter() - start:.0f} s; {path})")
        print(continual.format_table(document), flush=True)


if __name__ == "__main__":
    main()
