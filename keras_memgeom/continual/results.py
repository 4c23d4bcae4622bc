"""The results document of the harness: schema, checks, saving, table.

A results document is a JSON object:

- `schema_version` (int, 1), `created` (ISO 8601 UTC time), `backend`
  (the Keras backend), `versions` (package name -> version: python,
  numpy, keras, keras_memgeom and the backend's library), `seed` (int);
- `config`: the harness settings (`scenario`, `dataset`, `num_tasks`,
  `width`, `epochs`, `batch_size`, `learning_rate`, `strength_grid`,
  `prior_precision`, ...);
- `methods`: method name -> its run: `method`, `config` (the strategy's
  settings: `name`, and e.g. `strength`, `estimator`, `decay`),
  `accuracy_matrix` (`R[i][j]`, accuracy on task j after task i),
  `initial_accuracy` (untrained model, per task), `average_accuracy`,
  `average_accuracy_curve` (per task), `backward_transfer`,
  `forward_transfer`, `forgetting` (null for one task),
  `learning_accuracy`, `strength` (strength used per task, null where
  none applies), `effective_dimension` (of the memory after each task,
  null without one), `wall_time_per_task` and `wall_time` (seconds).

`RESULTS_SCHEMA` states this as JSON Schema; `validate_results` checks a
document against it.
"""

import datetime
import importlib
import json
import os
import platform
import tempfile

import keras
import numpy as np

SCHEMA_VERSION = 1

_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_TRANSFER = {"type": ["number", "null"], "minimum": -1, "maximum": 1}
_PER_TASK_OPTIONAL = {"type": "array", "items": {"type": ["number", "null"]}}

_METHOD_SCHEMA = {
    "type": "object",
    "required": [
        "method",
        "config",
        "accuracy_matrix",
        "initial_accuracy",
        "average_accuracy",
        "average_accuracy_curve",
        "backward_transfer",
        "forward_transfer",
        "forgetting",
        "learning_accuracy",
        "strength",
        "effective_dimension",
        "wall_time_per_task",
        "wall_time",
    ],
    "properties": {
        "method": {"type": "string"},
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
        "initial_accuracy": {"type": "array", "minItems": 1, "items": _PROBABILITY},
        "average_accuracy": _PROBABILITY,
        "average_accuracy_curve": {"type": "array", "items": _PROBABILITY},
        "backward_transfer": _TRANSFER,
        "forward_transfer": _TRANSFER,
        "forgetting": _TRANSFER,
        "learning_accuracy": _PROBABILITY,
        "strength": _PER_TASK_OPTIONAL,
        "effective_dimension": _PER_TASK_OPTIONAL,
        "wall_time_per_task": {"type": "array", "items": {"type": "number", "minimum": 0}},
        "wall_time": {"type": "number", "minimum": 0},
    },
}

RESULTS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "keras_memgeom continual-learning results",
    "type": "object",
    "required": ["schema_version", "created", "backend", "versions", "seed", "config", "methods"],
    "properties": {
        "schema_version": {"enum": [SCHEMA_VERSION]},
        "created": {"type": "string"},
        "backend": {"type": "string"},
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
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
            },
        },
        "methods": {"type": "object", "minProperties": 1, "additionalProperties": _METHOD_SCHEMA},
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(instance, schema, path="$"):
    """Checks `instance` against a JSON schema.

    Supports the keywords `RESULTS_SCHEMA` uses: `type`, `enum`,
    `required`, `properties`, `additionalProperties`, `minProperties`,
    `items`, `minItems`, `minimum`, `maximum`.

    Args:
        instance: a JSON value (dicts, lists, str, numbers, bool, None).
        schema: a JSON schema dict.
        path: where `instance` sits, for the messages.

    Returns:
        A list of error messages, empty if `instance` is valid.
    """
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](instance) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(instance).__name__}"]
    errors = []
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} is above the maximum {schema['maximum']}")
    if isinstance(instance, dict):
        errors += [
            f"{path}: missing {key!r}" for key in schema.get("required", []) if key not in instance
        ]
        if len(instance) < schema.get("minProperties", 0):
            errors.append(f"{path}: needs at least {schema['minProperties']} entries")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in properties:
                errors += schema_errors(value, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(value, extra, f"{path}.{key}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def validate_results(document):
    """Checks a results document against `RESULTS_SCHEMA`.

    Also checks that every accuracy matrix is `num_tasks x num_tasks`.

    Raises:
        ValueError: listing what is wrong.
    """
    errors = schema_errors(document, RESULTS_SCHEMA)
    if not errors:
        num_tasks = document["config"]["num_tasks"]
        for name, run in document["methods"].items():
            shape = np.shape(run["accuracy_matrix"])
            if shape != (num_tasks, num_tasks):
                errors.append(
                    f"$.methods.{name}.accuracy_matrix: shape {shape}, expected "
                    f"({num_tasks}, {num_tasks})"
                )
    if errors:
        raise ValueError("Invalid results document:\n  " + "\n  ".join(errors))


def make_document(config, seed, runs):
    """Wraps method runs (from `Harness.run`) into a results document."""
    backend = keras.backend.backend()
    versions = {"python": platform.python_version()}
    for module in ("numpy", "keras", "keras_memgeom", backend):
        versions[module] = str(getattr(importlib.import_module(module), "__version__", "unknown"))
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": backend,
        "versions": versions,
        "seed": seed,
        "config": config,
        "methods": runs,
    }
    validate_results(document)
    return document


def save_results(document, path):
    """Validates and writes a results document as JSON, atomically.

    The file is written next to `path` and renamed into place, so readers
    never see a partial file.

    Raises:
        ValueError: if the document is invalid (nothing is written).
    """
    validate_results(document)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=".results-", suffix=".tmp", delete=False
    ) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def load_results(path):
    """Reads and validates a results document."""
    with open(path) as handle:
        document = json.load(handle)
    validate_results(document)
    return document


def format_table(document):
    """The metrics of every method as a plain-text table.

    Returns:
        A string: one row per method with average accuracy, backward and
        forward transfer, forgetting, learning accuracy, effective
        dimension after the last task, strength and wall time.
    """
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
    )
    rows = [header]
    for name, run in document["methods"].items():
        rows.append(
            (
                name,
                _number(run["average_accuracy"]),
                _number(run["backward_transfer"]),
                _number(run["forward_transfer"]),
                _number(run["forgetting"]),
                _number(run["learning_accuracy"]),
                _number(run["effective_dimension"][-1], "{:.0f}"),
                _strength(run),
                f"{run['wall_time']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
