"""The results document of the harness: schema, checks, saving, table.

A results document is a JSON object:

- `schema_version` (int, 2), `created` (ISO 8601 UTC time), `backend`
  (the Keras backend), `versions` (package name -> version: python,
  numpy, keras, keras_memgeom and the backend's library), `seed` (int);
- `complete` (bool): whether every method of `config.methods` has
  finished every task; a run in progress or interrupted is saved with
  `false` after every task;
- `config`: the harness settings (`scenario`, `dataset`, `num_tasks`,
  `width`, `epochs`, `batch_size`, `learning_rate`, `strength_grid`,
  `prior_precision`, `methods`: the names of the methods to run, ...);
- `methods`: method name -> its run: `method`, `config` (the strategy's
  settings: `name`, and e.g. `strength`, `estimator`, `decay`),
  `tasks_done` (tasks finished), `accuracy_matrix` (`R[i][j]`, accuracy
  on task j after task i; one row per finished task), `initial_accuracy`
  (untrained model, per task), the per-task lists `strength`,
  `effective_dimension` and `wall_time_per_task` (one entry per finished
  task), `wall_time`; and, once every task is done, `average_accuracy`,
  `average_accuracy_curve` (per task), `backward_transfer`,
  `forward_transfer`, `forgetting` (null for one task),
  `learning_accuracy`. `strength` is the strength used per task (null
  where none applies), `effective_dimension` that of the memory after
  each task (null without one), wall times are in seconds.

`RESULTS_SCHEMA` states this as JSON Schema; `validate_results` checks a
document against it and the rules JSON Schema cannot say here (shapes,
what a complete document holds). Version 1 documents (no `complete`, no
`tasks_done`: always complete) are still accepted.
"""

import datetime
import importlib
import json
import platform

import keras
import numpy as np

from keras_memgeom.src.utils.atomic_write import atomic_write
from keras_memgeom.src.utils.json_schema import schema_errors

SCHEMA_VERSION = 2

_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_TRANSFER = {"type": ["number", "null"], "minimum": -1, "maximum": 1}
_PER_TASK_OPTIONAL = {"type": "array", "items": {"type": ["number", "null"]}}
_SECONDS_PER_TASK = {"type": "array", "items": {"type": "number", "minimum": 0}}

# Present once a method has finished every task.
_SUMMARY = (
    "average_accuracy",
    "average_accuracy_curve",
    "backward_transfer",
    "forward_transfer",
    "forgetting",
    "learning_accuracy",
)
_PER_TASK = ("strength", "effective_dimension", "wall_time_per_task")

_METHOD_SCHEMA = {
    "type": "object",
    "required": [
        "method",
        "config",
        "accuracy_matrix",
        "initial_accuracy",
        *_PER_TASK,
        "wall_time",
    ],
    "properties": {
        "method": {"type": "string"},
        "tasks_done": {"type": "integer", "minimum": 1},
        "config": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}},
        },
        "accuracy_matrix": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "minItems": 1, "items": _PROBABILITY},
        },
        "initial_accuracy": {
            "type": "array",
            "minItems": 1,
            "items": _PROBABILITY,
        },
        "average_accuracy": _PROBABILITY,
        "average_accuracy_curve": {"type": "array", "items": _PROBABILITY},
        "backward_transfer": _TRANSFER,
        "forward_transfer": _TRANSFER,
        "forgetting": _TRANSFER,
        "learning_accuracy": _PROBABILITY,
        "strength": _PER_TASK_OPTIONAL,
        "effective_dimension": _PER_TASK_OPTIONAL,
        "wall_time_per_task": _SECONDS_PER_TASK,
        "wall_time": {"type": "number", "minimum": 0},
        "init_seed": {"type": "integer"},
        "train_time_per_task": _SECONDS_PER_TASK,
        "memory_time_per_task": _SECONDS_PER_TASK,
        "eval_time_per_task": _SECONDS_PER_TASK,
    },
}

RESULTS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "keras_memgeom continual-learning results",
    "type": "object",
    "required": [
        "schema_version",
        "created",
        "backend",
        "versions",
        "seed",
        "config",
        "methods",
    ],
    "properties": {
        "schema_version": {"enum": [1, SCHEMA_VERSION]},
        "complete": {"type": "boolean"},
        "created": {"type": "string"},
        "backend": {"type": "string"},
        "versions": {
            "type": "object",
            "additionalProperties": {"type": "string"},
        },
        "seed": {"type": "integer"},
        "config": {
            "type": "object",
            "required": ["scenario", "dataset", "num_tasks", "width", "epochs"],
            "properties": {
                "scenario": {"type": "string"},
                "dataset": {"type": "string"},
                "num_tasks": {"type": "integer", "minimum": 1},
                "width": {"type": "integer", "minimum": 1},
                "epochs": {"type": "integer", "minimum": 1},
                "methods": {"type": "array", "items": {"type": "string"}},
            },
        },
        # A run saved before its first task has no method yet.
        "methods": {"type": "object", "additionalProperties": _METHOD_SCHEMA},
    },
}


def validate_results(document):
    """Checks a results document against `RESULTS_SCHEMA`.

    Also checks that every accuracy matrix has one row per finished task
    and `num_tasks` columns, that the per-task lists match it, that a
    method with every task done has its metrics, and that a document
    marked complete holds every method of `config.methods`, finished.

    Args:
        document: a results document (a dict).

    Raises:
        ValueError: listing what is wrong.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    document = harness.compare([keras_memgeom.continual.Finetune()])
    keras_memgeom.continual.validate_results(document)  # passes
    document["config"]["num_tasks"] = "two"
    try:
        keras_memgeom.continual.validate_results(document)
    except ValueError as error:
        print(error)
    ```
    """
    errors = schema_errors(document, RESULTS_SCHEMA)
    if not errors:
        errors = _progress_errors(document)
    if errors:
        raise ValueError("Invalid results document:\n  " + "\n  ".join(errors))


def _progress_errors(document):
    """What the schema cannot check: shapes and completeness."""
    current = document["schema_version"] == SCHEMA_VERSION
    num_tasks = document["config"]["num_tasks"]
    errors = []
    if current and "complete" not in document:
        errors.append("$: missing 'complete'")
    complete = document.get("complete", True)
    for name, run in document["methods"].items():
        path = f"$.methods.{name}"
        if current and "tasks_done" not in run:
            errors.append(f"{path}: missing 'tasks_done'")
        done = run.get("tasks_done", num_tasks)
        shape = np.shape(run["accuracy_matrix"])
        if shape != (done, num_tasks):
            errors.append(
                f"{path}.accuracy_matrix: shape {shape}, expected ({done}, "
                f"{num_tasks})"
            )
        errors += [
            f"{path}.{key}: {len(run[key])} entries, expected {done}"
            for key in _PER_TASK
            if len(run[key]) != done
        ]
        if done == num_tasks:
            errors += [
                f"{path}: missing {key!r}" for key in _SUMMARY if key not in run
            ]
        elif complete:
            errors.append(
                f"{path}: {done} of {num_tasks} tasks done in a complete "
                "document"
            )
    if complete:
        if not document["methods"]:
            errors.append("$.methods: needs at least 1 entries")
        errors += [
            f"$.methods: missing {name!r} of config.methods in a complete "
            "document"
            for name in document["config"].get("methods", [])
            if name not in document["methods"]
        ]
    return errors


def make_document(config, seed, runs):
    """Wraps method runs (from `Harness.run`) into a results document.

    Args:
        config: the harness settings; `config["methods"]`, if given, names
            every method the run is to have.
        seed: the seed.
        runs: method name -> its entry from `Harness.run`, finished or not.

    Returns:
        A valid results document; `"complete"` is true when every method
        (of `config["methods"]`, or of `runs`) has finished every task.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)

    runs = {"finetune": harness.run(keras_memgeom.continual.Finetune())}
    config = {**harness.get_config(), "methods": ["finetune"]}
    document = keras_memgeom.continual.make_document(config, 0, runs)
    print(document["complete"])  # True
    ```
    """
    backend = keras.backend.backend()
    versions = {"python": platform.python_version()}
    for module in ("numpy", "keras", "keras_memgeom", backend):
        versions[module] = str(
            getattr(importlib.import_module(module), "__version__", "unknown")
        )
    planned = config.get("methods", list(runs))
    complete = bool(planned) and all(
        name in runs
        and runs[name].get("tasks_done", config["num_tasks"])
        == config["num_tasks"]
        for name in planned
    )
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "backend": backend,
        "versions": versions,
        "seed": seed,
        "complete": complete,
        "config": config,
        "methods": runs,
        **summarize_runs(runs),
    }
    validate_results(document)
    return document


_SPREAD = (
    "average_accuracy",
    "backward_transfer",
    "forward_transfer",
    "forgetting",
    "learning_accuracy",
)


def run_group(key):
    """The name of a run without its init seed.

    `"online@100#seed1"` -> `"online@100"`.
    """
    return key.split("#seed")[0]


def summarize_runs(runs):
    """Mean and spread over init seeds, and the strength sweeps.

    Args:
        runs: run key -> entry, as in a results document's `methods`.

    Returns:
        A dict with `summary`: group (the key without `#seed<k>`) ->
        `runs`, `init_seeds`, and for each metric of the whole run a dict
        of `mean`, `std` (the sample standard deviation over the runs, 0
        for one run) and `values`, plus `average_accuracy_curve` (mean
        and std per task) and the mean seconds of `train_time`,
        `memory_time` and `eval_time`; and `sweep`: method -> `grid`
        (strength, mean and std of the average accuracy of each point)
        and `best` (the point with the best mean average accuracy).
        Only finished runs count.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)

    harness = keras_memgeom.continual.Harness(
        stream, width=32, epochs=1, repeats=2
    )
    document = harness.compare([keras_memgeom.continual.Finetune()])
    summary = keras_memgeom.continual.summarize_runs(document["methods"])
    print(summary["summary"]["finetune"]["average_accuracy"]["mean"])
    ```
    """
    groups = {}
    for key, run in runs.items():
        if "average_accuracy" in run:
            groups.setdefault(run_group(key), []).append((key, run))
    summary = {}
    for group, members in groups.items():
        entry = {
            "runs": [key for key, _ in members],
            "init_seeds": [run.get("init_seed") for _, run in members],
        }
        for metric in _SPREAD:
            values = [
                run[metric] for _, run in members if run.get(metric) is not None
            ]
            entry[metric] = _spread(values) if values else None
        curves = np.array([run["average_accuracy_curve"] for _, run in members])
        entry["average_accuracy_curve"] = {
            "mean": curves.mean(axis=0).tolist(),
            "std": _std(curves).tolist(),
        }
        for part in ("train", "memory", "eval"):
            times = [
                sum(run.get(f"{part}_time_per_task", [])) for _, run in members
            ]
            entry[f"{part}_time"] = float(np.mean(times))
        summary[group] = entry
    sweep = {}
    for group, entry in summary.items():
        method, at, _ = group.rpartition("@")
        if not at:
            continue
        strength = groups[group][0][1]["config"].get("strength")
        accuracy = entry["average_accuracy"]
        sweep.setdefault(method, {"grid": []})["grid"].append(
            {
                "strength": strength,
                "average_accuracy": accuracy["mean"],
                "std": accuracy["std"],
            }
        )
    for method, entry in sweep.items():
        best = max(entry["grid"], key=lambda point: point["average_accuracy"])
        entry["best"] = {
            "strength": best["strength"],
            "average_accuracy": best["average_accuracy"],
        }
    return {"summary": summary, "sweep": sweep}


def _std(values):
    values = np.asarray(values, "float64")
    return (
        values.std(axis=0, ddof=1)
        if len(values) > 1
        else np.zeros(values.shape[1:])
    )


def _spread(values):
    return {
        "mean": float(np.mean(values)),
        "std": float(_std(values)),
        "values": list(values),
    }


def save_results(document, path):
    """Validates and writes a results document as JSON, atomically.

    The file is written next to `path` and renamed into place
    (`keras_memgeom.src.utils.atomic_write`), so readers, and a run that is
    killed while writing, never leave a partial file.

    Args:
        document: a results document, as from `Harness.compare`.
        path: the JSON file to write.

    Raises:
        ValueError: if the document is invalid (nothing is written).
        OSError: if `path` cannot be written (e.g. its folder is missing).

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    document = harness.compare([keras_memgeom.continual.Finetune()])
    keras_memgeom.continual.save_results(document, "results.json")
    ```
    """
    validate_results(document)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    with atomic_write(path, "results") as handle:
        handle.write(text.encode("utf-8"))


def load_results(path):
    """Reads and validates a results document.

    Args:
        path: the JSON file, as written by `save_results`.

    Returns:
        The results document, a dict.

    Raises:
        ValueError: if the file is not valid JSON or not a valid results
            document.
        OSError: if `path` cannot be read.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    document = harness.compare([keras_memgeom.continual.Finetune()])
    keras_memgeom.continual.save_results(document, "results.json")
    loaded = keras_memgeom.continual.load_results("results.json")
    print(loaded == document)  # True
    ```
    """
    with open(path) as handle:
        document = json.load(handle)
    validate_results(document)
    return document


def format_table(document):
    """The metrics of every method as a plain-text table.

    Args:
        document: a results document, as from `Harness.compare`.

    Returns:
        A string: one row per run with average accuracy, backward and
        forward transfer, forgetting, learning accuracy, effective
        dimension after the last task, strength, and seconds of
        training, memory estimation and evaluation (`time s` is training
        plus memory). A run that has not finished every task shows `-`
        for the metrics of the whole run and `(k/T tasks)` after its
        name. With several init seeds per method, one row per method
        gives the mean and the spread (std) over the seeds. A strength
        sweep adds one line per swept method with every grid point and
        the best.

    Example:

    ```python
    import keras_memgeom

    stream = keras_memgeom.continual.TaskStream.make(
        "permuted", "digits", num_tasks=2
    )
    harness = keras_memgeom.continual.Harness(stream, width=32, epochs=1)
    document = harness.compare([keras_memgeom.continual.Finetune()])
    print(keras_memgeom.continual.format_table(document))
    ```
    """
    summary = (
        document.get("summary")
        or summarize_runs(document["methods"])["summary"]
    )
    if any(len(entry["runs"]) > 1 for entry in summary.values()):
        lines = _table(*_group_rows(document, summary))
    else:
        lines = _table(*_run_rows(document))
    sweep = document.get("sweep") or {}
    for method, entry in sweep.items():
        points = ", ".join(
            f"{p['strength']:g}: {p['average_accuracy']:.3f}"
            for p in entry["grid"]
        )
        best = entry["best"]
        lines.append(
            f"sweep {method}: {points}; best strength {best['strength']:g} "
            f"({best['average_accuracy']:.3f})"
        )
    return "\n".join(lines)


_TIMES = ("train s", "mem s", "eval s")


def _run_rows(document):
    num_tasks = document["config"]["num_tasks"]
    header = (
        "method",
        "avg acc",
        "BWT",
        "FWT",
        "forget",
        "learn acc",
        "eff dim",
        "strength",
        "time s",
        *_TIMES,
    )
    rows = []
    for name, run in document["methods"].items():
        done = run.get("tasks_done", num_tasks)
        rows.append(
            (
                name
                if done == num_tasks
                else f"{name} ({done}/{num_tasks} tasks)",
                _number(run.get("average_accuracy")),
                _number(run.get("backward_transfer")),
                _number(run.get("forward_transfer")),
                _number(run.get("forgetting")),
                _number(run.get("learning_accuracy")),
                _number(run["effective_dimension"][-1], "{:.0f}"),
                _strength(run),
                f"{run['wall_time']:.1f}",
                *(
                    _number(sum(run[f"{part}_time_per_task"]), "{:.1f}")
                    if f"{part}_time_per_task" in run
                    else "-"
                    for part in ("train", "memory", "eval")
                ),
            )
        )
    return header, rows


def _group_rows(document, summary):
    header = (
        "method",
        "runs",
        "avg acc",
        "BWT",
        "FWT",
        "forget",
        "learn acc",
        *_TIMES,
    )
    rows = []
    for group, entry in summary.items():
        rows.append(
            (
                group,
                str(len(entry["runs"])),
                *(_mean_std(entry[metric]) for metric in _SPREAD),
                *(
                    f"{entry[f'{part}_time']:.1f}"
                    for part in ("train", "memory", "eval")
                ),
            )
        )
    return header, rows


def _mean_std(spread):
    return (
        "-" if spread is None else f"{spread['mean']:.3f}±{spread['std']:.3f}"
    )


def _table(header, rows):
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) for cell, w in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _number(value, form="{:.3f}"):
    return "-" if value is None else form.format(value)


def _strength(run):
    setting = run["config"].get("strength")
    if setting is None:
        return "-"
    if setting != "auto":
        return f"{setting:g}"
    chosen = [f"{s:g}" for s in run["strength"] if s is not None]
    return "auto " + ",".join(chosen) if chosen else "auto"
