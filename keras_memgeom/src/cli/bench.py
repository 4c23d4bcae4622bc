"""`memgeom bench` and `memgeom demo`: a benchmark run, kept as it goes.

`results.json` is rewritten after every task; `--resume DIR` continues an
interrupted run with its settings, and draws the plots of a finished one.
"""

import os
import sys
import time

import keras

from keras_memgeom import continual
from keras_memgeom.src.cli.make_strategies import make_strategies
from keras_memgeom.src.cli.output_folder import check_folder
from keras_memgeom.src.cli.output_folder import check_resume_folder
from keras_memgeom.src.cli.output_folder import default_folder
from keras_memgeom.src.cli.parser import usage_error
from keras_memgeom.src.cli.settings import check_options_apply
from keras_memgeom.src.cli.settings import check_resume
from keras_memgeom.src.cli.settings import method_names
from keras_memgeom.src.cli.settings import settings as run_settings
from keras_memgeom.src.utils.host_memory import host_free_memory


def run_bench(parser, args):
    """Runs `memgeom bench` (or `demo`, whose arguments hold its settings).

    Args:
        parser: the `memgeom` parser, for usage errors.
        args: the parsed arguments.

    Returns:
        The exit code: 0 done, 130 interrupted (usage errors exit with 2).
    """
    out, previous = _check_output(parser, args)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    init_seed = args.seed if args.init_seed is None else args.init_seed
    try:
        dataset = continual.ImageDataset.load(args.dataset, seed=data_seed)
        _check_memory(args, dataset)
        stream = continual.TaskStream.make(
            args.scenario,
            dataset,
            num_tasks=args.tasks,
            split_scenario=args.split_scenario,
            validation_split=args.validation_split,
            max_train_examples=args.train_examples,
            seed=data_seed,
        )
        strategies = make_strategies(
            args.methods,
            strength=args.strength,
            estimator=args.estimator,
            decay=args.decay,
            gamma=args.gamma,
            max_examples=args.max_examples,
            structure=args.structure,
            information_epochs=args.information_epochs,
            rank=args.rank,
        )
        check_options_apply(args)
        harness = continual.Harness(
            stream,
            width=args.width,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            strength_grid=args.strength_grid,
            prior_precision=args.prior_precision,
            seed=init_seed,
            repeats=args.repeats,
            progress=_progress(args.quiet),
            progress_bar=not args.quiet,
        )
        harness.check(strategies)
        settings = run_settings(args)
        if previous is not None:
            check_resume(previous, settings, out)
    except (ValueError, ImportError, RuntimeError) as error:
        usage_error(parser, error)
    path = os.path.join(out, "results.json")

    def save(document):
        document["config"].update(command=args.command, settings=settings)
        continual.save_results(document, path)

    try:
        os.makedirs(out, exist_ok=True)
        if previous is None:  # The settings are on disk before any training.
            save(harness.document(strategies, {}))
    except OSError as error:
        usage_error(parser, f"argument --out: cannot write {path!r}: {error}")
    if not args.quiet:
        print(
            f"memgeom {args.command}: {stream.scenario} {stream.dataset}, "
            f"{len(stream.tasks)} tasks, methods "
            f"{', '.join(s.name for s in strategies)}, backend "
            f"{keras.backend.backend()}",
            file=sys.stderr,
            flush=True,
        )
    try:
        document = harness.compare(
            strategies, previous=previous, on_update=save
        )
    except KeyboardInterrupt:
        print(
            f"\nmemgeom: interrupted; the finished tasks are in {path}. "
            f"Continue with: memgeom {args.command} --resume {out} (and the "
            "same settings)",
            file=sys.stderr,
        )
        return 130
    try:
        save(document)
        continual.plot_results(document, out)
    except KeyboardInterrupt:
        print(
            f"\nmemgeom: interrupted while writing the plots; the results "
            f"are complete in {path}. Draw the plots again with: memgeom "
            f"{args.command} --resume {out} (and the same settings)",
            file=sys.stderr,
        )
        return 130
    print(continual.format_table(document))
    print(f"\nResults and plots in {out}/ (results.json, *.png)")
    return 0


def _check_output(parser, args):
    """Checks the output folder before any work; reads back a run to resume.

    Returns:
        `(folder, previous)`: `previous` is the results document of the
        run to continue, or `None`.
    """
    out, flag = check_resume_folder(parser, args)
    previous = None
    if args.resume is not None:
        previous = _read_run(parser, out)
    elif out is None:
        out = default_folder(parser, args.command)
    folder = check_folder(parser, out, flag)
    if previous is None:
        state = _run_state(folder)
        if state == "unfinished":
            usage_error(
                parser,
                f"argument --out: {out!r} holds an unfinished run; continue "
                f"it with --resume {out}, or choose another folder",
            )
        if state == "finished":
            usage_error(
                parser,
                f"argument --out: {out!r} holds a finished run, which a new "
                "run would overwrite; choose another --out (or --resume "
                f"{out} with its settings to redraw its plots)",
            )
        if state is not None:
            usage_error(
                parser,
                f"argument --out: {out!r} holds a results.json that cannot "
                f"be read ({state}); a new run would overwrite it: choose "
                "another --out",
            )
    return out, previous


def _run_state(folder):
    """`None` (no run), "finished", "unfinished", or why it is unreadable."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return None
    try:
        complete = continual.load_results(path).get("complete", True)
    except (OSError, ValueError) as error:
        return str(error).splitlines()[0]
    return "finished" if complete else "unfinished"


def _read_run(parser, folder):
    """The results document of the run in `folder`, for `--resume`."""
    path = os.path.join(folder, "results.json")
    try:
        previous = continual.load_results(path)
    except FileNotFoundError:
        usage_error(
            parser,
            f"argument --resume: no {path!r}; is {folder!r} a memgeom run's "
            "folder?",
        )
    except (OSError, ValueError) as error:
        usage_error(parser, f"argument --resume: cannot read {path!r}: {error}")
    if "settings" not in previous["config"]:
        usage_error(
            parser,
            f"argument --resume: {path!r} records no command settings to "
            "continue",
        )
    return previous


def _check_memory(args, dataset):
    """Refuses a task stream that cannot fit in memory, before making it."""
    size = continual.TaskStream.estimate_nbytes(
        dataset,
        args.scenario,
        args.tasks,
        split_scenario=args.split_scenario,
        max_train_examples=args.train_examples,
    )
    # `joint` concatenates the training data of all tasks seen: a second copy.
    copies = 2 if "joint" in method_names(args.methods) else 1
    need, available = size["nbytes"] * copies, host_free_memory()
    if available is not None and need > available:
        raise ValueError(
            f"--tasks {args.tasks}: the task stream needs about "
            f"{need / 2**30:.1f} GiB ({size['tasks']} tasks x "
            f"{size['examples']} examples x {size['features']} features x 4 "
            f"bytes x {copies} copies), more than the {available / 2**30:.1f} "
            "GiB of memory available; use fewer --tasks or --train-examples."
        )


def _progress(quiet):
    if quiet:
        return None
    start = time.perf_counter()

    def report(message):
        print(
            f"[{time.perf_counter() - start:7.1f}s] {message}",
            file=sys.stderr,
            flush=True,
        )

    return report
