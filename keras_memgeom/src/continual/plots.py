"""Pictures of a results document, as PNG files."""

import os
import re

import numpy as np

from keras_memgeom.src.continual.results import summarize_runs
from keras_memgeom.src.utils.atomic_write import atomic_write
from keras_memgeom.src.utils.figures import new_figure


def plot_results(document, directory):
    """Draws the results of the harness into `directory`.

    Writes `accuracy_matrix_<run>.png` (the accuracy matrix as a heat
    map, one per finished run), `average_accuracy.png` (mean accuracy on
    the tasks seen so far, after each task, all methods on one chart;
    with several init seeds their mean and a band of one std) and,
    if a method has a memory, `effective_dimension.png` (effective
    dimension of the memory after each task). Figures are drawn with the
    Agg canvas, without pyplot, and written atomically.

    Args:
        document: a results document (see `results.RESULTS_SCHEMA`).
        directory: an existing folder.

    Returns:
        The list of paths written.

    Example:

    ```python
    import os

    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    document = harness.compare([keras_memgeom.continual.Finetune()])
    os.makedirs("plots", exist_ok=True)
    paths = keras_memgeom.continual.plot_results(document, "plots")
    print(paths)
    ```
    """
    paths = []
    runs = document["methods"]
    for name, run in runs.items():
        if "average_accuracy" not in run:
            continue
        file_name = re.sub(
            r"[^A-Za-z0-9_.@-]", "_", f"accuracy_matrix_{name}.png"
        )
        paths.append(_save(_heat_map(name, run), directory, file_name))
    summary = document.get("summary") or summarize_runs(runs)["summary"]
    paths.append(
        _save(
            _mean_curves(summary, "mean accuracy on tasks seen", document),
            directory,
            "average_accuracy.png",
        )
    )
    with_memory = {
        n: r
        for n, r in runs.items()
        if any(d is not None for d in r["effective_dimension"])
    }
    if with_memory:
        paths.append(
            _save(
                _curves(
                    with_memory,
                    "effective_dimension",
                    "effective dimension of the memory",
                    document,
                ),
                directory,
                "effective_dimension.png",
            )
        )
    return paths


def _heat_map(name, run):
    matrix = np.asarray(run["accuracy_matrix"])
    num_tasks = len(matrix)
    figure = new_figure(
        figsize=(1.2 + 0.55 * num_tasks, 1.0 + 0.5 * num_tasks),
        layout="constrained",
    )
    axes = figure.add_subplot()
    image = axes.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    if num_tasks <= 12:
        for (i, j), value in np.ndenumerate(matrix):
            axes.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value < 0.6 else "black",
            )
    ticks = np.arange(num_tasks)
    axes.set_xticks(ticks, [str(t + 1) for t in ticks])
    axes.set_yticks(ticks, [str(t + 1) for t in ticks])
    axes.set_xlabel("tested on task")
    axes.set_ylabel("after training task")
    axes.set_title(f"{name}: average accuracy {run['average_accuracy']:.3f}")
    figure.colorbar(image, ax=axes, label="accuracy")
    return figure


def _mean_curves(summary, label, document):
    """Mean curve per method, with a band of one std over the init seeds."""
    figure = new_figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, entry in summary.items():
        mean = np.asarray(entry["average_accuracy_curve"]["mean"])
        std = np.asarray(entry["average_accuracy_curve"]["std"])
        steps = np.arange(1, len(mean) + 1)
        runs = len(entry["runs"])
        axes.plot(
            steps,
            mean,
            marker="o",
            label=name if runs == 1 else f"{name} ({runs} seeds)",
        )
        if runs > 1:
            axes.fill_between(steps, mean - std, mean + std, alpha=0.2)
    _decorate(axes, label, document)
    return figure


def _decorate(axes, label, document):
    config = document["config"]
    axes.set_title(
        f"{config['scenario']} {config['dataset']}, {config['num_tasks']} tasks"
    )
    axes.set_xlabel("tasks trained")
    axes.set_ylabel(label)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend()


def _curves(runs, key, label, document):
    figure = new_figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, run in runs.items():
        values = [np.nan if v is None else v for v in run[key]]
        axes.plot(np.arange(1, len(values) + 1), values, marker="o", label=name)
    _decorate(axes, label, document)
    return figure


def _save(figure, directory, name):
    path = os.path.join(directory, name)
    with atomic_write(path, "plot") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return path
