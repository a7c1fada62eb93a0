"""A JSON Schema checker for the few keywords strato's own manifest schema uses.

Why not jsonschema: a cold start validates one manifest, and importing jsonschema
(referencing, rpds, attrs, the bundled metaschemas) and building its validator cost
0.15 s of CPU on the path to the first token, on a 2-vCPU function where every import
competes with the fetch and the model build for the GIL. The manifest schema
(core.catalog.manifest.SCHEMA) uses ten validation keywords; this module interprets
exactly those, with JSON Schema 2020-12's meaning (an integral float is an integer,
`true` is not `1`, `pattern` searches), and refuses a schema with any other keyword
instead of ignoring it, so a schema change cannot silently weaken the check.
tests/test_schema_check.py checks it against jsonschema on valid and mutated manifests.

Tools' JSON schemas, which callers write, still go through jsonschema (core.openai.tools).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterator

_ANNOTATIONS = {"$schema", "title", "description"}
KEYWORDS = {"type", "required", "properties", "items", "const", "enum", "pattern",
            "minimum", "minLength", "maxLength", "minItems", "maxItems"}


class SchemaViolation(ValueError):
    """`path` (keys and indices from the root) and what is wrong there."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def check_schema(schema: Any) -> None:
    """Raise ValueError for a keyword this checker does not interpret."""
    for sub in _subschemas(schema):
        unknown = set(sub) - KEYWORDS - _ANNOTATIONS
        if unknown:
            raise ValueError(f"schema keyword(s) {sorted(unknown)} are not supported by "
                             "core.catalog.schema_check")


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Raise SchemaViolation at the first place `instance` breaks `schema`."""
    _check(instance, schema, ())


def _subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from _subschemas(sub)
    if "items" in schema:
        yield from _subschemas(schema["items"])


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers (Python has True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


@lru_cache(maxsize=64)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _check(value: Any, schema: dict[str, Any], path: tuple[str | int, ...]) -> None:
    def fail(message: str) -> None:
        raise SchemaViolation(path, message)

    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            fail(f"{value!r} is not of type {' or '.join(repr(t) for t in types)}")
    if "const" in schema and not _same(value, schema["const"]):
        fail(f"{schema['const']!r} was expected")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        fail(f"{value!r} is not one of {schema['enum']!r}")
    if _TYPES["number"](value) and "minimum" in schema and value < schema["minimum"]:
        fail(f"{value!r} is less than the minimum of {schema['minimum']!r}")
    if isinstance(value, (str, list)):
        low, high, unit = (("minLength", "maxLength", "characters") if isinstance(value, str)
                           else ("minItems", "maxItems", "items"))
        if not schema.get(low, 0) <= len(value) <= schema.get(high, len(value)):
            fail(f"{value!r} has {len(value)} {unit}, outside "
                 f"[{schema.get(low, 0)}, {schema.get(high, 'any')}]")
    if isinstance(value, str) and "pattern" in schema:
        if not _regex(schema["pattern"]).search(value):
            fail(f"{value!r} does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], path + (i,))
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                fail(f"{key!r} is a required property")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, path + (key,))
