"""A JSON Schema checker for the subset of the standard this package uses.

The results documents of the harness are checked against a JSON Schema
(`keras_memgeom.continual.RESULTS_SCHEMA`) without a dependency on a JSON
Schema library.
"""

# What the checker reads, and the annotations it may skip.
_KEYWORDS = {
    "type",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "minProperties",
    "items",
    "minItems",
    "minimum",
    "maximum",
    "$schema",
    "title",
    "description",
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

    Supports a subset of JSON Schema: the keywords `type`, `enum`,
    `required`, `properties`, `additionalProperties`, `minProperties`,
    `items`, `minItems`, `minimum`, `maximum`; others are refused.

    Args:
        instance: a JSON value (dicts, lists, str, numbers, bool, None).
        schema: a JSON schema dict.
        path: where `instance` sits, for the messages.

    Returns:
        A list of error messages, empty if `instance` is valid.

    Raises:
        ValueError: for a keyword of `schema` outside that subset, which
            would otherwise be ignored.

    Example:

    ```python
    from keras_memgeom.src.utils.json_schema import schema_errors

    schema = {"type": "object", "required": ["n"],
              "properties": {"n": {"type": "integer", "minimum": 1}}}
    print(schema_errors({"n": 0}, schema))
    # ['$.n: 0 is below the minimum 1']
    ```
    """
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(
            f"schema_errors does not support the JSON Schema keyword(s) "
            f"{sorted(unknown)} (at {path})."
        )
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](instance) for t in types):
            return [
                f"{path}: expected {' or '.join(types)}, got "
                f"{type(instance).__name__}"
            ]
    errors = []
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(
                f"{path}: {instance} is below the minimum {schema['minimum']}"
            )
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(
                f"{path}: {instance} is above the maximum {schema['maximum']}"
            )
    if isinstance(instance, dict):
        errors += [
            f"{path}: missing {key!r}"
            for key in schema.get("required", [])
            if key not in instance
        ]
        if len(instance) < schema.get("minProperties", 0):
            errors.append(
                f"{path}: needs at least {schema['minProperties']} entries"
            )
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
