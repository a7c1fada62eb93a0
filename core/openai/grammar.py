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


def tool_calls_gbnf(functions: Sequence[tuple[str, Mapping[str, Any]]], *, call_open: str,
                    args_sep: str, call_close: str, max_calls: int,
                    prefilled: str = "", answer: Mapping[str, Any] | None = None) -> str:
    """GBNF for 1..max_calls tool calls, each `call_open <name> args_sep <arguments>
    call_close` (core.openai.tools's format), the arguments per that function's schema.

    `prefilled` says how much of the first call the prompt already holds: "open" (the
    text before the name) or "name" (also the one function's name and `args_sep`);
    the grammar then starts right after it. `answer`, a JSON schema, allows a text
    answer of that shape instead of the calls (`tool_choice: auto` with a
    `response_format`: the model chooses, each branch constrained).

    The wrapper is literal text (no choice of whitespace) and the functions part only
    at their names: a grammar with fewer live alternatives is cheaper to check against
    a whole vocabulary, which happens at every token the model would not have written
    by itself. Each parameters schema is converted (and its `$ref`s resolved) on its
    own, as it is its own document. A schema the converter cannot handle is a 400 on
    `tools`, the path an unsupported json_schema takes.
    """
    import llama_cpp.llama_grammar as llama_grammar

    schema_converter: Any = llama_grammar.SchemaConverter  # it carries no type hints
    converter = schema_converter(prop_order={}, allow_fetch=False, dotall=False,
                                 raw_pattern=False)
    branches, arguments = [], []
    try:
        for i, (name, params) in enumerate(functions):
            schema = converter.resolve_refs(_own_defs(params, f"tool-{i}-"), f"tools-{i}")
            arguments.append(converter.visit(schema, f"tool-{i}-arguments"))
            branches.append(f"{_literal(json.dumps(name) + args_sep)} {arguments[-1]}")
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError,
            NotImplementedError) as exc:
        raise BadRequest(f"unsupported tool parameters schema: {exc}",
                         param="tools") from None
    choice, closing = f"({' | '.join(branches)})", _literal(call_close)
    first = {"": "tool-call", "open": f"{choice} {closing}",
             "name": f"{arguments[0]} {closing}"}[prefilled]
    more = f' ("\\n" tool-call){{0,{max_calls - 1}}}' if max_calls > 1 else ""
    root = f"first-call{more}"
    if answer is not None:
        _check_schema(answer)
        try:
            root = f"{converter.visit(converter.resolve_refs(dict(answer), 'answer'), 'answer')}" \
                f" | {root}"
        except (ValueError, KeyError, TypeError, AssertionError, RecursionError,
                NotImplementedError) as exc:
            raise BadRequest(f"unsupported json_schema: {exc}", param=PARAM) from None
    return (f"root ::= {root}\nfirst-call ::= {first}\n"
            f"tool-call ::= {_literal(call_open)} {choice} {closing}\n"
            f"{converter.format_grammar()}")


def _own_defs(schema: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A copy of `schema` whose local definitions (`$defs`, `definitions`) and the refs
    to them carry `prefix`: the converter names a ref's rule after its last segment, so
    two tools that each define an `Address` would otherwise share one rule."""
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        for key in ("$defs", "definitions"):
            if isinstance(out.get(key), dict):
                out[key] = {prefix + name: d for name, d in out[key].items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            for key in ("$defs", "definitions"):
                if ref.startswith(f"#/{key}/"):
                    out["$ref"] = f"#/{key}/{prefix}{ref[len(key) + 3:]}"
        return out

    return walk(json.loads(json.dumps(schema)))


def _literal(text: str) -> str:
    """A GBNF string literal (GBNF's escapes are JSON's for this text)."""
    return json.dumps(text)
