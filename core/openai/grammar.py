"""OpenAI `response_format` -> a GBNF grammar for llama.cpp's grammar sampler.

`{"type": "text"}` (or nothing) means no constraint; `json_object` means "any JSON
object"; `json_schema` compiles the schema with llama-cpp-python's converter (the same
code llama.cpp's server uses, ported), so what the schema allows is what gets sampled.
The converter lives in the llama_cpp package, imported lazily so that importing this
module stays cheap for the Lambda handler.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from core.errors import BadRequest

# The JSON grammar from llama.cpp's grammars/json.gbnf: root is an object, as
# json_object promises. Kept here so json_object needs no llama_cpp import at all.
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,16})? ws

ws ::= | " " | "\n" [ \t]{0,20}
"""


PARAM = "response_format.json_schema"


def schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    """GBNF for one JSON schema; BadRequest when the converter cannot handle it.

    The converter signals a schema it cannot translate with whatever it has at hand
    (AssertionError for an unresolvable `$ref` or a pattern it cannot parse,
    ValueError, KeyError, IndexError, re.error, RecursionError, ...); the schema is the
    caller's input and the converter is pure, so every Exception from it is a 400.
    What would make the converter fetch a URL or build a huge grammar is refused
    first (`_check_schema`).
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    _check_schema(schema)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - see the docstring: all of it is a bad schema
        reason = str(exc).split("\n", 1)[0][:300] or type(exc).__name__
        raise BadRequest(f"unsupported json_schema: {reason}", param=PARAM) from None


MAX_REPEAT = 1024   # minLength/maxLength/minItems/maxItems and {m,n} in patterns
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")


def _check_schema(schema: Any) -> None:
    """What the converter must not be handed, refused before it runs:
    - a `$ref` that is not a JSON pointer into the schema itself (`#/...`);
    - repetition counts above MAX_REPEAT: the converter spells a count out (`maxLength:
      10**8` is a grammar string of gigabytes), so a large one is a memory bomb."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
                raise BadRequest(f"unsupported json_schema: only local $ref values "
                                 f"('#/...') are allowed, got {ref!r}"[:400], param=PARAM)
            for key in _BOUNDS:
                count = node.get(key)
                if isinstance(count, (int, float)) and not 0 <= count <= MAX_REPEAT:
                    raise BadRequest(f"unsupported json_schema: {key} must be between 0 "
                                     f"and {MAX_REPEAT}, got {count}", param=PARAM)
            pattern = node.get("pattern")
            if isinstance(pattern, str) and any(
                    len(n) > 5 or int(n) > MAX_REPEAT for m in _QUANTIFIER.finditer(pattern)
                    for n in m.groups() if n):
                raise BadRequest(f"unsupported json_schema: a repetition count in "
                                 f"'pattern' is above {MAX_REPEAT}", param=PARAM)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def from_response_format(response_format: Any) -> str | None:
    """The grammar for an OpenAI `response_format` value, or None for plain text.

    Accepts `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` as
    OpenAI sends it, and the older llama.cpp shape `{"type": "json_object", "schema": {...}}`.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise BadRequest("response_format must be an object", param="response_format")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return schema_to_gbnf(schema) if isinstance(schema, Mapping) else JSON_OBJECT_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise BadRequest("response_format.json_schema must be an object", param=PARAM)
        schema = spec.get("schema", {})
        if not isinstance(schema, Mapping):
            raise BadRequest("response_format.json_schema.schema must be an object",
                             param="response_format.json_schema.schema")
        return schema_to_gbnf(schema) if schema else JSON_OBJECT_GBNF
    raise BadRequest(f"response_format.type must be text, json_object or json_schema, "
                     f"got {kind!r}", param="response_format.type")
