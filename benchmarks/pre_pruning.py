"""Pre-pruning on digits: accuracy and structural stability, dense vs pruned.

Glukhov (2024), "Permutative redundancy and uncertainty of the objective in
deep learning", sections 6.1 and 6.2.1: a fixed mask with distinct columns
removes the permutation symmetry of hidden units. Three measurements, side by
side in one run, for a dense MLP (2 x 64, ReLU) and its pre-pruned version
(`pre_prune`, zero rate 0.5, widened to 2 x 128, one fixed mask), with a
dense 2 x 128 MLP as a control for the width:

1. test accuracy over five initial seeds;
2. Phi between two trainings from different initial seeds (five pairs):
   raw, after `reorder` (lexicographic and maximin) and after `align`
   (weight matching, a lower bound on what any reordering can reach);
3. Glukhov's (2024) stability desideratum (eq. 34): warm-start from theta*(D),
   re-train on a perturbed D' (a fraction of the training set resampled
   with replacement), and measure Phi(theta*(D), theta*(D')), five
   perturbations.

`--width` and `--label-noise` (a fraction of the training labels replaced
by random ones, a noisier objective) are the knobs of Glukhov's (2024) argument,
which is about large, noisy networks.

Run:
    KERAS_BACKEND=jax python benchmarks/pre_pruning.py [--epochs 40]
"""

import argparse
import time

import keras
import numpy as np
from _environment import print_environment
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_memgeom.pruning import pre_prune
from keras_memgeom.src.layers.connectivity_mask import widened_units
from keras_memgeom.symmetry import align
from keras_memgeom.symmetry import count_equivalent_optima
from keras_memgeom.symmetry import distance
from keras_memgeom.symmetry import reorder

# "dense-wide" has the pre-pruned widths without a mask: a control that
# separates the effect of the mask from the effect of the width.
KINDS = ("dense", "dense-wide", "pre-pruned")


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )


def build(kind, init_seed, width, zero_rate, mask_seed=0):
    keras.utils.set_random_seed(init_seed)
    if kind == "dense-wide":
        width = widened_units(width, zero_rate)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    if kind == "pre-pruned":
        # The mask seed is fixed: one mask is one architecture.
        model = pre_prune(model, zero_rate=zero_rate, seed=mask_seed)
    return model


def train(model, x, y, epochs, seed, learning_rate):
    keras.utils.set_random_seed(seed)
    model.compile(
        keras.optimizers.Adam(learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def summary(values):
    values = np.asarray(values)
    return f"{values.mean():.4f} +- {values.std():.4f}"


def main():
    print_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--retrain-epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--zero-rate", type=float, default=0.5)
    parser.add_argument("--resample", type=float, default=0.2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--label-noise", type=float, default=0.0)
    args = parser.parse_args()
    x_train, x_test, y_train, y_test = load_data()
    rng = np.random.default_rng(0)
    noisy = rng.random(len(y_train)) < args.label_noise
    y_train = np.where(noisy, rng.integers(0, 10, len(y_train)), y_train)
    start = time.time()
    print(
        f"backend {keras.backend.backend()}, digits {len(x_train)} train / "
        f"{len(x_test)} test, width {args.width}, zero rate {args.zero_rate}, "
        f"{args.epochs} epochs, {args.seeds} seeds, label noise "
        f"{args.label_noise}"
    )

    results = {kind: {} for kind in KINDS}
    for kind in KINDS:
        template = build(kind, 0, args.width, args.zero_rate)
        widths = [layer.units for layer in template.layers]
        print(
            f"{kind:>10}: widths {widths}, log10 equivalent optima "
            f"{count_equivalent_optima(template):.1f}"
        )
        r = results[kind]
        for name in (
            "accuracy",
            "raw",
            "lexicographic",
            "maximin",
            "aligned",
            "retrain",
            "retrain_reordered",
            "retrain_accuracy",
        ):
            r[name] = []
        for seed in range(args.seeds):
            pair = []
            for init_seed in (2 * seed + 1, 2 * seed + 2):
                model = build(kind, init_seed, args.width, args.zero_rate)
                train(
                    model,
                    x_train,
                    y_train,
                    args.epochs,
                    init_seed,
                    args.learning_rate,
                )
                r["accuracy"].append(
                    model.evaluate(x_test, y_test, verbose=0)[1]
                )
                pair.append(model)
            a, b = pair
            r["raw"].append(distance(a, b).overall)
            for method in ("lexicographic", "maximin"):
                r[method].append(
                    distance(reorder(a, method), reorder(b, method)).overall
                )
            r["aligned"].append(distance(align(b, a), a).overall)

            # Warm-started re-training on a perturbed data set.
            rng = np.random.default_rng(100 + seed)
            resampled = x_train.shape[0] * args.resample
            index = np.arange(len(x_train))
            chosen = rng.choice(len(x_train), int(resampled), replace=False)
            index[chosen] = rng.integers(0, len(x_train), len(chosen))
            retrained = train(
                copy(a),
                x_train[index],
                y_train[index],
                args.retrain_epochs,
                100 + seed,
                args.learning_rate,
            )
            r["retrain"].append(distance(a, retrained).overall)
            r["retrain_reordered"].append(
                distance(reorder(a), reorder(retrained)).overall
            )
            r["retrain_accuracy"].append(
                retrained.evaluate(x_test, y_test, verbose=0)[1]
            )

    rows = [
        ("test accuracy (10 trainings)", "accuracy"),
        ("Phi between 2 trainings, raw", "raw"),
        ("  after reorder lexicographic", "lexicographic"),
        ("  after reorder maximin", "maximin"),
        ("  after align (weight matching)", "aligned"),
        ("Phi(theta*(D), theta*(D')) warm re-train", "retrain"),
        ("  after reorder lexicographic", "retrain_reordered"),
        ("test accuracy after re-train", "retrain_accuracy"),
    ]
    print(
        f"\n{'':42}"
        + "".join(f" {kind:>17}" for kind in KINDS)
        + "  pruned/dense"
    )
    for label, key in rows:
        ratio = np.mean(results["pre-pruned"][key]) / np.mean(
            results["dense"][key]
        )
        cells = "".join(f" {summary(results[kind][key]):>17}" for kind in KINDS)
        print(f"{label:42}{cells}  {ratio:.3f}")
    print("\nper seed, Phi after reorder (lexicographic), dense vs pre-pruned:")
    for seed in range(args.seeds):
        print(
            f"  seed {seed}: {results['dense']['lexicographic'][seed]:.4f} vs "
            f"{results['pre-pruned']['lexicographic'][seed]:.4f}; warm "
            f"re-train {results['dense']['retrain'][seed]:.4f} vs "
            f"{results['pre-pruned']['retrain'][seed]:.4f}"
        )
    gap = np.mean(results["dense"]["accuracy"]) - np.mean(
        results["pre-pruned"]["accuracy"]
    )
    print(f"\naccuracy gap dense - pre-pruned: {100 * gap:+.2f} points")
    print(f"total time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
