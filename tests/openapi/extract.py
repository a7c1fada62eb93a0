"""Copy the OpenAI OpenAPI component schemas the tests validate against into this folder.

    python tests/openapi/extract.py /path/to/openai-openapi.json

writes tests/openapi/schemas.json: the named roots and every component they reference,
unchanged except one rewrite: the spec is OpenAPI 3.1 but still carries 3.0's
`nullable: true` in places, which JSON Schema ignores; `{"type": T, "nullable": true}`
becomes `{"type": [T, "null"]}` (and a nullable enum gains null), which is what it means.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
         "CreateCompletionResponse", "Response", "ResponseCreatedEvent",
         "ResponseInProgressEvent", "ResponseOutputItemAddedEvent",
         "ResponseContentPartAddedEvent", "ResponseTextDeltaEvent", "ResponseTextDoneEvent",
         "ResponseContentPartDoneEvent", "ResponseOutputItemDoneEvent",
         "ResponseCompletedEvent", "ResponseIncompleteEvent", "ResponseErrorEvent",
         "ResponseFunctionCallArgumentsDeltaEvent", "ResponseFunctionCallArgumentsDoneEvent"]
PREFIX = "#/components/schemas/"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        if "type" not in node and "enum" not in node:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


def _refs(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_refs(n) for n in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"][len(PREFIX):]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_refs(v) for v in node.values()))


def extract(spec: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    todo, out = list(roots), {}
    while todo:
        name = todo.pop()
        if name not in out:
            out[name] = _nullable(schemas[name])
            todo.extend(_refs(schemas[name]) - out.keys())
    return {"source": "openai/openai-openapi, components/schemas",
            "components": {"schemas": dict(sorted(out.items()))}}


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    dest = Path(__file__).with_name("schemas.json")
    dest.write_text(json.dumps(extract(spec, ROOTS), indent=1) + "\n")
    print(f"wrote {dest}")
