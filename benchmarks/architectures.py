"""The Fisher's cost on the layers Keras users train, against an epoch.

Six small classifiers on random data: a tiny transformer (Embedding,
MultiHeadAttention, LayerNormalization), the same with pre-norm
RMSNormalization as in Llama-style decoders, a BatchNorm CNN with depthwise
and separable convolutions, MobileNetV3Small (`keras.applications`,
`weights=None`, 32x32 inputs), an LSTM and a two-layer keras-hub BERT
classifier built from a config (skipped, with a note, without keras-hub).
For each, under the current `KERAS_BACKEND`, prints:

- the exact diagonal Fisher estimate's time over one training epoch on the
  same examples (both after a first, compiling run);
- the K-FAC estimate's time over one epoch;
- the sampled estimates' (one label drawn per example; diagonal and
  K-FAC) time over one epoch: the exact Fisher pulls back one output
  direction per class, a sampled one a single direction;
- a training step with a Fisher memory over a plain one;
- which layers got Kronecker factors.

Run under each backend, e.g.
`KERAS_BACKEND=jax python benchmarks/architectures.py [--examples 64]
[--architectures bert]`.
"""

import argparse
import importlib.util
import time

import keras
import numpy as np
from _environment import print_environment

import keras_memgeom
from keras_memgeom import FisherMemory

CLASSES = 10
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _transformer():
    tokens = keras.Input((16,), dtype="int32")
    h = keras.layers.Embedding(100, 32)(tokens)
    h = keras.layers.LayerNormalization()(
        h + keras.layers.MultiHeadAttention(2, 16)(h, h)
    )
    h = keras.layers.GlobalAveragePooling1D()(h)
    return tokens, keras.layers.Dense(CLASSES)(h)


def _rms_transformer():
    tokens = keras.Input((16,), dtype="int32")
    h = keras.layers.Embedding(100, 32)(tokens)
    normed = keras.layers.RMSNormalization()(h)
    h = h + keras.layers.MultiHeadAttention(2, 16)(normed, normed)
    normed = keras.layers.RMSNormalization()(h)
    h = h + keras.layers.Dense(32, activation="relu")(normed)
    h = keras.layers.GlobalAveragePooling1D()(
        keras.layers.RMSNormalization()(h)
    )
    return tokens, keras.layers.Dense(CLASSES)(h)


def _separable_cnn():
    images = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same")(images)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.SeparableConv2D(32, 3, strides=2, padding="same")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return images, keras.layers.Dense(CLASSES)(h)


def _mobilenet():
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        weights=None,
        classes=CLASSES,
        classifier_activation=None,
    )
    return model.input, model.output


def _lstm():
    sequences = keras.Input((12, 8))
    h = keras.layers.LSTM(16)(sequences)
    return sequences, keras.layers.Dense(CLASSES)(h)


def _bert():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=CLASSES, preprocessor=None
    )
    return classifier.inputs, classifier.outputs


ARCHITECTURES = {
    "bert": (_bert, "bert_tokens"),
    "transformer": (_transformer, "tokens"),
    "rms_transformer": (_rms_transformer, "tokens"),
    "separable_cnn": (_separable_cnn, "images"),
    "mobilenet_v3_small": (_mobilenet, "images"),
    "lstm": (_lstm, "sequences"),
}


def _data(kind, n, rng):
    if kind == "bert_tokens":
        tokens = rng.integers(0, 100, size=(n, 16)).astype("int32")
        return {
            "token_ids": tokens,
            "segment_ids": np.zeros_like(tokens),
            "padding_mask": np.ones_like(tokens),
        }
    if kind == "tokens":
        return rng.integers(0, 100, size=(n, 16)).astype("int32")
    if kind == "images":
        return rng.normal(size=(n, 32, 32, 3)).astype("float32")
    return rng.normal(size=(n, 12, 8)).astype("float32")


def _timed(fn):
    """Seconds of the second call of `fn` (the first compiles), its result."""
    fn()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _measure(name, args, rng):
    build, kind = ARCHITECTURES[name]
    inputs, outputs = build()
    x = _data(kind, args.examples, rng)
    y = rng.integers(0, CLASSES, args.examples)
    plain = keras_memgeom.Model(inputs, outputs)
    plain.compile(keras.optimizers.SGD(1e-3), LOSS)
    epoch, _ = _timed(
        lambda: plain.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    )
    # The estimates run at the default batch size.
    exact, memory = _timed(lambda: FisherMemory.estimate(plain, (x, y)))
    kfac, kfac_memory = _timed(
        lambda: FisherMemory.estimate(plain, (x, y), structure="kfac")
    )
    # One sampled label per example: one pullback instead of one per class.
    sampled, _ = _timed(
        lambda: FisherMemory.estimate(plain, (x, y), estimator="sampled")
    )
    sampled_kfac, _ = _timed(
        lambda: FisherMemory.estimate(
            plain, (x, y), estimator="sampled", structure="kfac"
        )
    )
    remembering = keras_memgeom.Model(inputs, outputs)
    remembering.compile(
        keras.optimizers.SGD(1e-3),
        LOSS,
        memories=[memory],
        strength=1.0,
        num_train_examples=len(x),
    )
    batch = keras.tree.map_structure(lambda a: a[: args.batch_size], (x, y))
    steps = {}
    for label, model in (("plain", plain), ("memory", remembering)):
        steps[label] = min(
            _timed(lambda m=model: m.train_on_batch(*batch))[0]
            for _ in range(3)
        )
    layers = sorted({p.rsplit("/", 1)[0] for p in kfac_memory.kronecker})
    size = sum(int(np.prod(v.shape)) for v in plain.trainable_variables)
    print(
        f"{name} ({size / 1e3:.0f}k parameters, {args.examples} examples, "
        f"batch {args.batch_size}): epoch {epoch:.2f} s; exact diagonal "
        f"{exact:.2f} s = {exact / epoch:.1f} epochs; K-FAC {kfac:.2f} s = "
        f"{kfac / epoch:.1f} epochs; sampled diagonal {sampled:.2f} s = "
        f"{sampled / epoch:.1f} epochs; sampled K-FAC {sampled_kfac:.2f} s "
        f"= {sampled_kfac / epoch:.1f} epochs; step with memory / plain "
        f"{steps['memory'] / steps['plain']:.2f}; K-FAC layers "
        f"({len(layers)}): {', '.join(layers) or 'none'}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--architectures",
        nargs="+",
        default=sorted(ARCHITECTURES),
        choices=sorted(ARCHITECTURES),
    )
    args = parser.parse_args()
    print_environment()
    rng = np.random.default_rng(0)
    for name in args.architectures:
        if name == "bert" and importlib.util.find_spec("keras_hub") is None:
            print("bert: skipped, keras-hub is not installed", flush=True)
            continue
        _measure(name, args, rng)


if __name__ == "__main__":
    main()
