"""Forgetting of a keras-hub BERT on real text: full fine-tuning and LoRA.

A tiny `keras_hub` `BertTextClassifier` (random weights, built from a
config) learns a stream of topic-classification tasks on real English
text, made offline from the Python documentation that ships with the
interpreter (`pydoc_data.topics`): task t tells passages of one
documentation topic from passages of another, every task with its own
pair of topics and the same two outputs. The first task trains every
weight (the "pretrained" model); each later one is learned by

- `full`: full fine-tuning, every weight trained;
- `lora`: `backbone.enable_lora(rank)` after the first task, so the
  backbone trains only the LoRA factors of its attention's query and value
  projections (and their biases), the classifier head in full;

each either plainly or against an online diagonal Fisher memory (exact
Fisher; after each task the memory of that task is merged into the kept
one with `keras_memgeom.merge`). Under LoRA the memory remembers the
weights LoRA adapts at their effective values `W + s A B`: it is estimated
on a copy of the model without LoRA that loads the LoRA model's weights
(Keras saves a LoRA weight merged), with the backbone's other layers
frozen as `enable_lora` leaves them, and while fine-tuning its penalty is
read at the effective weights (`keras_memgeom.LoraRegularizer`).

Printed per method: average test accuracy over the tasks after the last
one, backward transfer (BWT: mean change of each earlier task's accuracy
from just after it was learned to the end), and learning accuracy (mean
accuracy on each task just after it), as mean ± std over the init seeds;
then the accuracy matrix of the first seed. Results are written, run by
run, to a JSON file as they come.

    KERAS_BACKEND=jax OMP_NUM_THREADS=1 python benchmarks/hub_text_continual.py

About 15 minutes with JAX on 2 CPU cores (2 seeds, 3 strengths). Needs
keras_hub (the `hub` extra). Options: `--tasks` (2-5), `--seeds`,
`--strengths`, `--methods`, `--first-epochs`, `--epochs`, `--rank`,
`--learning-rate`, `--weight-decay`, `--dropout`.
"""

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom
from keras_memgeom.continual import metrics

# Pairs of documentation topics with 9,000 or more characters each and no
# text in common (the "specialnames" topic, for one, repeats others).
TOPIC_PAIRS = [
    ("compound", "types"),
    ("formatstrings", "string-methods"),
    ("typesseq", "debugger"),
    ("typesmapping", "assignment"),
    ("comparisons", "execmodel"),
]
METHODS = ("full", "full+memory", "lora", "lora+memory")
CLS, UNKNOWN = 1, 2  # token ids; 0 is padding, which no passage needs
LENGTH = 32  # words per passage, after the [CLS] token
BLOCK = 64  # words; every fourth block of a topic's text is held out
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def topic_words(topic):
    """The words of one documentation topic, lower-cased, in order."""
    from pydoc_data.topics import topics

    return re.findall(r"[a-z]+", topics[topic].lower())


def passages(words, stride, held_out):
    """Windows of `LENGTH` words every `stride` words, within blocks.

    The text is cut into blocks of `BLOCK` words; every fourth block is
    held out for testing (`held_out=True`), the others train, so that both
    sample the whole topic and no window is in both.
    """
    windows = []
    for i, start in enumerate(range(0, len(words) - BLOCK + 1, BLOCK)):
        if (i % 4 == 3) == held_out:
            block = words[start : start + BLOCK]
            windows += [
                block[s : s + LENGTH]
                for s in range(0, BLOCK - LENGTH + 1, stride)
            ]
    return windows


def make_tasks(num_tasks, vocabulary_size=2000):
    """`(train, test)` per task, each `(inputs, labels)`, and the vocabulary.

    Training passages start every 4 words, test passages every 8 (see
    `passages`); both classes of a task keep as many passages as the
    smaller one. The vocabulary holds the most frequent training words.
    """
    pairs = TOPIC_PAIRS[:num_tasks]
    words = {topic: topic_words(topic) for pair in pairs for topic in pair}
    counts = collections.Counter(
        w
        for text in words.values()
        for p in passages(text, LENGTH, False)
        for w in p
    )
    common = [w for w, _ in counts.most_common(vocabulary_size - 3)]
    ids = {w: i + 3 for i, w in enumerate(common)}

    def encoded(windows_by_class):
        size = min(len(w) for w in windows_by_class)
        tokens, labels = [], []
        for label, windows in enumerate(windows_by_class):
            for window in windows[:size]:
                tokens.append([CLS] + [ids.get(w, UNKNOWN) for w in window])
                labels.append(label)
        tokens = np.asarray(tokens, "int32")
        x = {
            "token_ids": tokens,
            "segment_ids": np.zeros_like(tokens),
            "padding_mask": np.ones_like(tokens),
        }
        return x, np.asarray(labels, "int32")

    tasks = []
    for pair in pairs:
        train = encoded([passages(words[t], 4, False) for t in pair])
        test = encoded([passages(words[t], 8, True) for t in pair])
        tasks.append((train, test))
    return tasks, len(ids) + 3


def build(vocabulary, dropout=0.0):
    """The classifier, wrapped in a `keras_memgeom.Model`, and its backbone.

    Every layer is named, so a rebuilt copy has the same variable paths.
    """
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=128,
        dropout=dropout,
        max_sequence_length=LENGTH + 1,
        name="backbone",
    )
    classifier = keras_hub.models.BertTextClassifier(
        backbone,
        num_classes=2,
        preprocessor=None,
        dropout=dropout,
        name="classifier",
    )
    model = keras_memgeom.Model(
        classifier.inputs, classifier.outputs, name="model"
    )
    return model, backbone


def freeze_as_lora(backbone):
    """Leaves trainable what `backbone.enable_lora` would train."""
    targets = backbone.default_lora_layer_names()
    # Parents come before their sublayers, so a target keeps its own flag.
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = layer.name in targets


def remembered(model, data, vocabulary, lora):
    """The memory of what `model` now computes, on `data`.

    Under LoRA, estimated on a copy without LoRA that loads `model`'s
    weights (a LoRA weight is saved as `W + s A B`), so the model is
    remembered at its effective weights, over the variables LoRA
    fine-tuning trains; otherwise on `model` itself.
    """
    if not lora:
        return keras_memgeom.FisherMemory.estimate(model, data)
    twin, backbone = build(vocabulary)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.weights.h5")
        model.save_weights(path)
        twin.load_weights(path)
    freeze_as_lora(backbone)
    twin.compile(loss=LOSS)  # the likelihood the memory's Fisher is of
    return keras_memgeom.FisherMemory.estimate(twin, data)


def accuracies(model, tasks):
    return [
        float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
        for _, (x, y) in tasks
    ]


def run(method, strength, seed, tasks, vocabulary, args):
    """The accuracy matrix of one method: row t, every task after task t."""
    lora = method.startswith("lora")
    with_memory = method.endswith("memory")
    keras.utils.set_random_seed(seed)
    model, backbone = build(vocabulary, args.dropout)
    memory = None
    rows = []
    for t, ((x, y), _) in enumerate(tasks):
        if t == 1 and lora:
            backbone.enable_lora(args.rank)
        if memory is None:
            model.compile(optimizer(args), LOSS)
        else:
            model.compile(
                optimizer(args),
                LOSS,
                memories=[memory],
                strength=strength,
                num_train_examples=len(y),
            )
        epochs = args.first_epochs if t == 0 else args.epochs
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        rows.append(accuracies(model, tasks))
        if with_memory and t < len(tasks) - 1:
            new = remembered(model, (x, y), vocabulary, lora)
            memory = (
                new if memory is None else keras_memgeom.merge([memory, new])
            )
    return rows


def optimizer(args):
    return keras.optimizers.AdamW(
        args.learning_rate, weight_decay=args.weight_decay
    )


def label(method, strength):
    return method if strength is None else f"{method}@{strength:g}"


def summary(matrix):
    """Average accuracy, BWT and learning accuracy of one accuracy matrix."""
    return (
        metrics.average_accuracy(matrix),
        metrics.backward_transfer(matrix),
        metrics.learning_accuracy(matrix),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=[100.0, 1e4, 1e6]
    )
    parser.add_argument(
        "--methods", default="full,full+memory,lora,lora+memory"
    )
    parser.add_argument("--first-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--out", default="memgeom_runs/hub_text_continual.json")
    args = parser.parse_args()
    if not 2 <= args.tasks <= len(TOPIC_PAIRS):
        sys.exit(f"--tasks must be 2 to {len(TOPIC_PAIRS)}, not {args.tasks}")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"Unknown --methods {unknown}; choose from {list(METHODS)}")
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        sys.exit(
            "This benchmark needs keras_hub: pip install 'keras-memgeom[hub]'"
        )
    print_environment()
    tasks, vocabulary = make_tasks(args.tasks)
    print(
        f"# {args.tasks} tasks (topic pairs "
        + ", ".join(f"{a}/{b}" for a, b in TOPIC_PAIRS[: args.tasks])
        + f"), training passages {[len(train[1]) for train, _ in tasks]}, "
        f"test {[len(test[1]) for _, test in tasks]}, {LENGTH} words, "
        f"vocabulary {vocabulary}; epochs {args.first_epochs} then "
        f"{args.epochs}, LoRA rank {args.rank}, seeds 0-{args.seeds - 1}",
        flush=True,
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    results = {
        "arguments": vars(args),
        "backend": keras.backend.backend(),
        "runs": [],
    }
    variants = []
    for method in methods:
        strengths = args.strengths if method.endswith("memory") else [None]
        variants += [(method, s) for s in strengths]
    print("| method | avg acc | BWT | learn acc | time s |")
    print("|--------|--------:|----:|----------:|-------:|", flush=True)
    for method, strength in variants:
        start = time.perf_counter()
        matrices = []
        for seed in range(args.seeds):
            matrices.append(
                run(method, strength, seed, tasks, vocabulary, args)
            )
            results["runs"].append(
                {
                    "method": method,
                    "strength": strength,
                    "seed": seed,
                    "accuracy_matrix": matrices[-1],
                }
            )
            with open(args.out + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(args.out + ".tmp", args.out)
        figures = np.array([summary(m) for m in matrices])
        cells = " | ".join(
            f"{mean:.3f}±{std:.3f}"
            for mean, std in zip(figures.mean(0), figures.std(0))
        )
        print(
            f"| {label(method, strength)} | {cells} | "
            f"{time.perf_counter() - start:.0f} |",
            flush=True,
        )
    print("\n# accuracy matrices of seed 0 (row t: every task after task t)")
    for run_ in results["runs"]:
        if run_["seed"] == 0:
            rows = "; ".join(
                " ".join(f"{a:.2f}" for a in row)
                for row in run_["accuracy_matrix"]
            )
            print(f"{label(run_['method'], run_['strength'])}: {rows}")
    print(f"# results: {args.out}")


if __name__ == "__main__":
    main()
