import pytest

from keras_memgeom.src.utils.json_schema import schema_errors

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "a run",
    "type": "object",
    "required": ["n", "tags"],
    "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "mode": {"enum": ["a", "b"]},
        "rate": {"type": ["number", "null"]},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "instance, errors",
    [
        ({"n": 2, "tags": ["x"], "mode": "a", "rate": None}, []),
        ({"n": 2, "tags": ["x"], "rate": 0.5}, []),
        ({"tags": ["x"]}, ["$: missing 'n'"]),
        ({"n": 0, "tags": ["x"]}, ["$.n: 0 is below the minimum 1"]),
        ({"n": 4, "tags": ["x"]}, ["$.n: 4 is above the maximum 3"]),
        # JSON Schema: a boolean is no integer, and 1.5 no integer.
        ({"n": True, "tags": ["x"]}, ["$.n: expected integer, got bool"]),
        ({"n": 1.5, "tags": ["x"]}, ["$.n: expected integer, got float"]),
        ({"n": 1, "tags": []}, ["$.tags: needs at least 1 items"]),
        ({"n": 1, "tags": ["x", 2]}, ["$.tags[1]: expected string, got int"]),
        ({"n": 1, "tags": ["x"], "mode": "c"}, ["$.mode: 'c' is not one of"]),
        (
            {"n": 1, "tags": ["x"], "rate": "fast"},
            ["$.rate: expected number or null, got str"],
        ),
        ({"n": 1, "tags": ["x"], "x": 0}, ["$: unexpected key 'x'"]),
        ([], ["$: expected object, got list"]),
    ],
)
def test_errors_name_the_place_and_the_rule(instance, errors):
    found = schema_errors(instance, SCHEMA)
    assert len(found) == len(errors)
    for message, wanted in zip(found, errors):
        assert message.startswith(wanted), found


def test_additional_properties_schema_checks_every_other_key():
    schema = {"type": "object", "additionalProperties": {"type": "number"}}
    assert schema_errors({"a": 1, "b": 2.5}, schema) == []
    assert schema_errors({"a": 1, "b": "2"}, schema) == [
        "$.b: expected number, got str"
    ]


def test_a_keyword_outside_the_subset_is_refused_not_ignored():
    with pytest.raises(ValueError, match=r"\['pattern'\]"):
        schema_errors("abc", {"type": "string", "pattern": "^a"})
