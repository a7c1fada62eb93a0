"""OpenAI's published response schemas, for validating what strato sends.

`tests/openai_schemas.json` holds the schemas strato's tests validate against and every
schema they reference, copied from OpenAI's OpenAPI description (the `openai/openai-openapi`
repository, version 2.3.0) with descriptions and examples removed. Regenerate it with
`python -m tests.openai_spec ../shared/specs/openai-openapi.json` after adding a root.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

HERE = Path(__file__).with_name("openai_schemas.json")
ROOTS = (
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse", "Response",
    "ResponseCreatedEvent", "ResponseInProgressEvent", "ResponseOutputItemAddedEvent",
    "ResponseContentPartAddedEvent", "ResponseTextDeltaEvent", "ResponseTextDoneEvent",
    "ResponseContentPartDoneEvent", "ResponseOutputItemDoneEvent", "ResponseCompletedEvent",
    "ResponseIncompleteEvent", "ResponseErrorEvent",
)
# Responses API event type -> its schema.
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
}
_DROP = ("description", "example", "examples", "x-oaiMeta", "x-oaiTypeLabel",
         "x-stainless-const", "x-oaiSupportedSDKs", "x-stainless-skip", "title")


@lru_cache(maxsize=None)
def _schemas() -> dict[str, Any]:
    return json.loads(HERE.read_text())


def validate(instance: Any, name: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` is a valid OpenAI `name`."""
    doc = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": _schemas()}}
    jsonschema.Draft202012Validator(doc).validate(instance)


def _strip(node: Any) -> Any:
    """Documentation out; OpenAPI 3.0's leftover `nullable: true` (which JSON Schema
    ignores) spelled as JSON Schema says it: null is one of the types."""
    if isinstance(node, dict):
        out = {k: _strip(v) for k, v in node.items() if k not in _DROP}
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def extract(spec: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    """`roots` and the schemas they reference, transitively."""
    every = spec["components"]["schemas"]
    kept: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept[name] = _strip(every[name])
        text = json.dumps(kept[name])
        todo += [ref.split('"')[0] for ref in text.split('"$ref": "#/components/schemas/')[1:]]
    return dict(sorted(kept.items()))


if __name__ == "__main__":
    HERE.write_text(json.dumps(extract(json.loads(Path(sys.argv[1]).read_text())),
                               indent=1, sort_keys=True) + "\n")
