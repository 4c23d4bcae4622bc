"""A picture of the loss between two models, before and after alignment."""

import os

from keras_memgeom.src.utils.figures import new_figure


def plot_loss_path(result, path):
    """Draws the test loss along the line between two models into a PNG.

    Args:
        result: a dict from `merge_experiment`, whose `path` holds the `t`
            and loss of each line (`"raw"` and `"aligned"`).
        path: the PNG file to write (its folder must exist).

    Returns:
        `path`.

    Example:
    >>> plot_loss_path(merge_experiment("digits", width=16), "loss_path.png")
    """
    figure = new_figure(figsize=(5.5, 3.8))
    axes = figure.add_subplot()
    for name, line in result["path"].items():
        label = f"{name} (barrier {result['barrier'][name]:.3f})"
        axes.plot(line["t"], line["loss"], marker="o", label=label)
    axes.set_xlabel("t: (1 - t) model A + t model B")
    axes.set_ylabel("test loss")
    axes.set_title(
        f"{result['dataset']}, width {result['width']}: loss between two models"
    )
    axes.legend()
    figure.tight_layout()
    temporary = f"{path}.tmp.png"
    figure.savefig(temporary, dpi=110)
    os.replace(temporary, path)
    return path
