"""core.catalog.schema_check agrees with jsonschema on strato's manifest schema.

Hypothesis mutates a valid manifest (values of every JSON type, integral floats,
booleans where numbers go, deleted keys, extra keys) and both checkers must reach the
same verdict; where the manifest is invalid, the place schema_check names must be one
of the places jsonschema finds an error at.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.catalog import schema_check
from core.catalog.manifest import SCHEMA
from tests.test_manifest import HEX, make

REFERENCE = jsonschema.Draft202012Validator(SCHEMA)
VALID = json.loads(make().to_json())
VALID_SIGNED = {**VALID, "variants": [{"tag": "q2", "size": 5, "file_type": None,
                                       "digest": "blake3:" + HEX[3]}],
                "signature": {"algorithm": "ed25519", "public_key": "k", "value": "v"},
                "frame_offsets": [0, 4096], "blob": "blake3:" + HEX[4]}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
        [0, 1, 1.0, 4096, 4096.0, 4095.5, -1, "", "x", "none", "zstd", "ed25519",
         "blake3:" + HEX[0], HEX[0], "sha256:" + HEX[0], HEX[0].upper(), "a" * 1025])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _mutated(base: dict, data: st.DataObject) -> dict:
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(JSON_VALUES)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(JSON_VALUES)
        else:
            parent.append(data.draw(JSON_VALUES))
    return doc


def _verdict(doc: dict) -> tuple | None:
    try:
        schema_check.validate(doc, SCHEMA)
    except schema_check.SchemaViolation as exc:
        return exc.path
    return None


@settings(max_examples=600, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([VALID, VALID_SIGNED]))
def test_agrees_with_jsonschema_on_mutated_manifests(data, base):
    doc = _mutated(base, data)
    where = _verdict(doc)
    errors = {tuple(e.absolute_path) for e in REFERENCE.iter_errors(doc)}
    assert (where is None) == (not errors), (doc, where, errors)
    if where is not None:
        assert where in errors, (where, errors)


def test_the_valid_manifests_pass():
    assert _verdict(VALID) is None and _verdict(VALID_SIGNED) is None
    assert REFERENCE.is_valid(VALID) and REFERENCE.is_valid(VALID_SIGNED)


@pytest.mark.parametrize("value, ok", [(4096.0, True), (True, False), (1.5, False)])
def test_json_numbers_as_json_schema_reads_them(value, ok):
    doc = {**VALID, "chunk_size": value}
    assert (_verdict(doc) is None) is ok is REFERENCE.is_valid(doc)


def test_a_schema_keyword_it_does_not_interpret_is_refused():
    with pytest.raises(ValueError, match="additionalProperties"):
        schema_check.check_schema({**SCHEMA, "additionalProperties": False})
    with pytest.raises(ValueError, match="uniqueItems"):
        schema_check.check_schema({"properties": {"a": {"items": {"uniqueItems": True}}}})
