"""OpenAI `response_format` -> a GBNF grammar for llama.cpp's grammar sampler.

`{"type": "text"}` (or nothing) means no constraint; `json_object` means "any JSON
object"; `json_schema` compiles the schema with llama-cpp-python's converter (the same
code llama.cpp's server uses, ported), so what the schema allows is what gets sampled.
The converter lives in the llama_cpp package, imported lazily so that importing this
module stays cheap for the Lambda handler.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

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


def schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    """GBNF for one JSON schema; BadRequest when the converter cannot handle it."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, RecursionError, NotImplementedError) as exc:
        raise BadRequest(f"unsupported json_schema: {exc}",
                         param="response_format.json_schema") from None


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
            raise BadRequest("response_format.json_schema must be an object",
                             param="response_format.json_schema")
        schema = spec.get("schema", {})
        if not isinstance(schema, Mapping):
            raise BadRequest("response_format.json_schema.schema must be an object",
                             param="response_format.json_schema.schema")
        return schema_to_gbnf(schema) if schema else JSON_OBJECT_GBNF
    raise BadRequest(f"response_format.type must be text, json_object or json_schema, "
                     f"got {kind!r}", param="response_format.type")


def tool_calls_gbnf(functions: Sequence[tuple[str, Mapping[str, Any]]], *, open_tag: str,
                    close_tag: str, max_calls: int) -> str:
    """GBNF for 1..max_calls tool calls, each `open_tag\\n{json}\\nclose_tag` where the
    JSON is `{"name": <one of the names>, "arguments": <per that function's schema>}`.

    Each parameters schema's `$ref`s are resolved against that schema alone, as it is
    its own document. A schema the converter cannot handle is a 400 on `tools`, through
    the same path as an unsupported json_schema.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False,
                                dotall=False, raw_pattern=False)
    try:
        calls = [{"type": "object", "required": ["name", "arguments"], "properties": {
            "name": {"const": name},
            "arguments": converter.resolve_refs(json.loads(json.dumps(params)),
                                                f"tools-{i}")}}
            for i, (name, params) in enumerate(functions)]
        call = converter.visit({"oneOf": calls}, "tool-call")
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError,
            NotImplementedError) as exc:
        raise BadRequest(f"unsupported tool parameters schema: {exc}",
                         param="tools") from None
    block = f'{json.dumps(open_tag)} "\\n" {call} "\\n" {json.dumps(close_tag)}'
    more = f' ("\\n" {block}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
    return f"root ::= {block}{more}\n{converter.format_grammar()}"
