"""`memgeom merge`: two MLPs merged by every method, kept as it goes.

`merge.json` is rewritten after the training and after every merge (with
`"complete": false` until the loss paths are measured), beside the two
trained models; `--resume DIR` continues an interrupted merge from them,
and draws the plot of a finished one.
"""

import json
import os
import shutil
import sys
import tempfile

import keras

from keras_memgeom.src.cli import merge_experiment
from keras_memgeom.src.cli import plot_loss_path
from keras_memgeom.src.cli.output_folder import check_folder
from keras_memgeom.src.cli.output_folder import check_resume_folder
from keras_memgeom.src.cli.output_folder import default_folder
from keras_memgeom.src.cli.parser import usage_error
from keras_memgeom.src.utils.atomic_write import atomic_write
from keras_memgeom.src.utils.model_save import save_model

# The two training seeds, and the files of their trained models.
SEEDS = (1, 2)
MODEL_FILES = tuple(f"model_seed{seed}.keras" for seed in SEEDS)
# The options that shape a merge's results.
_SETTINGS = ("dataset", "width", "epochs")


def run_merge(parser, args):
    """Runs `memgeom merge`.

    Args:
        parser: the `memgeom` parser, for usage errors.
        args: the parsed arguments.

    Returns:
        The exit code: 0 done, 1 if the results could not be written, 130
        interrupted (usage errors exit with 2).
    """
    # Every check before the training: a failure after it would lose it.
    out, previous = _check_output(parser, args)
    models = None
    try:
        os.makedirs(out, exist_ok=True)
        if previous is not None and not previous["complete"]:
            models = [
                keras.saving.load_model(os.path.join(out, name))
                for name in MODEL_FILES
            ]
    except (OSError, ValueError) as error:
        usage_error(parser, f"argument --out: cannot use {out!r}: {error}")

    def save_models(trained):
        for model, name in zip(trained, MODEL_FILES):
            save_model(model, os.path.join(out, name))

    try:
        result = (
            previous
            if previous is not None and previous["complete"]
            else merge_experiment.merge_experiment(
                args.dataset,
                width=args.width,
                seeds=SEEDS,
                epochs=args.epochs,
                models=models,
                previous=previous,
                on_models=save_models,
                on_update=lambda partial: _write_json(partial, out),
            )
        )
    except KeyboardInterrupt:
        if os.path.exists(os.path.join(out, "merge.json")):
            print(
                f"\nmemgeom: interrupted; the finished merges are in "
                f"{os.path.join(out, 'merge.json')}. Continue with: memgeom "
                f"merge --resume {out} (and the same settings)",
                file=sys.stderr,
            )
        else:
            print(
                "\nmemgeom: interrupted before the merges finished; nothing "
                f"was written to {out}. Run the command again to start over.",
                file=sys.stderr,
            )
        return 130
    # The numbers first: they reach the screen even if writing fails.
    print(
        f"{args.dataset}, width {args.width}: endpoints "
        f"{result['endpoints'][0]:.3f} and {result['endpoints'][1]:.3f}; "
        "midpoint accuracy / endpoints' mean"
    )
    for name, ratio in result["ratio"].items():
        print(f"  {name:16s} {ratio:6.3f}", flush=True)
    print(
        f"loss barrier: {result['barrier']['raw']:.3f} before alignment, "
        f"{result['barrier']['aligned']:.3f} after",
        flush=True,
    )
    written = []
    try:
        write_merge(result, out, written=written)
    except KeyboardInterrupt:
        again = (
            f"Finish it with: memgeom merge --resume {out}"
            if os.path.exists(os.path.join(out, "merge.json"))
            else "Run the command again to start over."
        )
        print(
            f"\nmemgeom: interrupted while writing; kept in {out}: "
            f"{', '.join(written) or 'nothing'}. {again}",
            file=sys.stderr,
        )
        return 130
    except OSError as error:
        print(
            f"memgeom: error: cannot write the results to {out!r}: {error}; "
            f"kept: {', '.join(written) or 'nothing'} (the numbers are above)",
            file=sys.stderr,
        )
        return 1
    print(f"\nResults and plot in {out}/ (merge.json, loss_path.png)")
    return 0


def write_merge(result, out, *, written=None):
    """Writes `merge.json`, then `loss_path.png`, each atomically.

    Each file is whole or absent (an earlier file of that name stays as it
    was) whatever stops the writing: an error, Ctrl-C, a killed process.

    Args:
        result: a dict from `merge_experiment`.
        out: an existing folder.
        written: `None`, or a list the names of the finished files are
            appended to, as they are finished.

    Returns:
        The paths written.

    Raises:
        OSError: if a file cannot be written.
    """
    written = [] if written is None else written
    _write_json(result, out)
    written.append("merge.json")
    # Drawn in a private folder, then copied into place atomically.
    scratch = tempfile.mkdtemp(prefix=".loss_path.", dir=out)
    try:
        drawn = plot_loss_path.plot_loss_path(
            result, os.path.join(scratch, "loss_path.png")
        )
        with open(drawn, "rb") as source:
            with atomic_write(os.path.join(out, "loss_path.png"), "plot") as f:
                shutil.copyfileobj(source, f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written.append("loss_path.png")
    return [os.path.join(out, name) for name in written]


def _write_json(result, out):
    """Writes `merge.json` atomically, with the backend that made it."""
    document = dict(result, backend=keras.backend.backend())
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    with atomic_write(os.path.join(out, "merge.json"), "merge results") as f:
        f.write(text.encode("utf-8"))


def _read_merge(path):
    """The document in `path`; one without `complete` (older) is complete."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object, got {document!r:.40}")
    document.setdefault("complete", True)
    return document


def _check_output(parser, args):
    """Checks the output folder before any work; reads back a merge to resume.

    Returns:
        `(folder, previous)`: `previous` is the `merge.json` document of
        the merge to continue, or `None`.
    """
    out, flag = check_resume_folder(parser, args)
    if out is None:
        out = default_folder(parser, "merge")
    check_folder(parser, out, flag)
    path = os.path.join(out, "merge.json")
    if args.resume is None:
        if not os.path.exists(path):
            return out, None
        try:
            complete = _read_merge(path)["complete"]
        except (OSError, ValueError) as error:
            usage_error(
                parser,
                f"argument --out: {out!r} holds a merge.json that cannot be "
                f"read ({error}); a new run would overwrite it: choose "
                "another --out",
            )
        if complete:
            usage_error(
                parser,
                f"argument --out: {out!r} holds a finished merge (merge.json); "
                "choose another --out",
            )
        usage_error(
            parser,
            f"argument --out: {out!r} holds an unfinished merge; continue it "
            f"with --resume {out}, or choose another folder",
        )
    try:
        previous = _read_merge(path)
    except FileNotFoundError:
        usage_error(
            parser,
            f"argument --resume: no {path!r}; is {out!r} a memgeom merge's "
            "folder?",
        )
    except (OSError, ValueError) as error:
        usage_error(parser, f"argument --resume: cannot read {path!r}: {error}")
    changed = [
        f"--{key} {json.dumps(previous[key])} (now "
        f"{json.dumps(getattr(args, key))})"
        for key in _SETTINGS
        if key in previous and previous[key] != getattr(args, key)
    ]
    if previous.get("backend", keras.backend.backend()) != (
        keras.backend.backend()
    ):
        changed.append(
            f"backend {previous['backend']} (now {keras.backend.backend()})"
        )
    if changed:
        usage_error(
            parser,
            f"--resume {out}: the merge was made with other settings: "
            f"{'; '.join(changed)}. Continue it with the same settings, or "
            "start a new run.",
        )
    return out, previous
