"""Regenerates the figures of the documentation into docs/figures/.

Every figure comes from the package's own tools, at a small size (a few
minutes on two CPU cores):

- `accuracy_matrix_finetune.png`, `accuracy_matrix_online.png` and
  `average_accuracy.png`: the harness's plots (`continual.plot_results`)
  of fine-tuning against the online memory (strength 1000, the best
  measured on digits) on 5 permuted `digits` tasks, an MLP of two hidden
  layers of 400 units, 5 epochs per task;
- `diagonal_vs_kfac.png`: the harness's accuracy curves of the online
  memory with a diagonal Fisher (strength 1000) and with a
  Kronecker-factored one (K-FAC, strength 10, its best measured), on the
  same tasks;
- `loss_path.png`: the loss between two models before and after
  alignment, as written by `memgeom merge`.

The frontal-lobe figures come from a longer benchmark, listed in
`OTHER_FIGURES` with the command that draws them.

    KERAS_BACKEND=jax python docs/make_figures.py
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES_DIR = os.path.join(ROOT, "docs", "figures")

# The figures this script draws.
FIGURES = [
    "accuracy_matrix_finetune.png",
    "accuracy_matrix_online.png",
    "average_accuracy.png",
    "diagonal_vs_kfac.png",
    "loss_path.png",
]

# Figures of the site that a longer benchmark draws, with its command.
_FRONTAL_LOBE = (
    "python benchmarks/frontal_lobe_continual.py --datasets digits,mnist5k "
    "--seeds 0,1,2, then the same with --report (it draws into docs/figures)"
)
OTHER_FIGURES = {
    "frontal_lobe_digits.png": _FRONTAL_LOBE,
    "frontal_lobe_mnist5k.png": _FRONTAL_LOBE,
}

NUM_TASKS = 5
WIDTH = 400
EPOCHS = 5
# The best strengths measured on permuted digits (docs/results.md).
DIAGONAL_STRENGTH = 1000.0
KFAC_STRENGTH = 10.0


def harness_figures(out, scratch):
    """Fine-tuning, the online memory, and its diagonal against K-FAC."""
    from keras_memgeom import continual

    stream = continual.TaskStream.make(
        "permuted", "digits", num_tasks=NUM_TASKS
    )
    harness = continual.Harness(stream, width=WIDTH, epochs=EPOCHS)
    document = harness.compare(
        [continual.Finetune(), continual.Online(strength=DIAGONAL_STRENGTH)]
    )
    continual.plot_results(document, scratch)
    for name in FIGURES[:3]:
        shutil.copy(os.path.join(scratch, name), os.path.join(out, name))

    kfac = harness.compare(
        [continual.Online(structure="kfac", strength=KFAC_STRENGTH)]
    )
    both = dict(document, summary=None)
    both["methods"] = {
        f"online, diagonal, strength {DIAGONAL_STRENGTH:g}": document[
            "methods"
        ]["online"],
        f"online, K-FAC, strength {KFAC_STRENGTH:g}": kfac["methods"]["online"],
    }
    pair = os.path.join(scratch, "pair")
    os.makedirs(pair)
    continual.plot_results(both, pair)
    shutil.copy(
        os.path.join(pair, "average_accuracy.png"),
        os.path.join(out, "diagonal_vs_kfac.png"),
    )


def merge_figure(out, scratch):
    """The loss path that `memgeom merge` draws, run as its command."""
    run = os.path.join(scratch, "merge")
    subprocess.run(
        [sys.executable, "-m", "keras_memgeom", "merge", "--out", run],
        check=True,
        cwd=ROOT,
    )
    shutil.copy(
        os.path.join(run, "loss_path.png"), os.path.join(out, "loss_path.png")
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default=FIGURES_DIR, help="folder (default: docs/figures)"
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        merge_figure(args.out, scratch)
        harness_figures(args.out, scratch)
    for name in FIGURES:
        print(os.path.join(args.out, name))


if __name__ == "__main__":
    main()
