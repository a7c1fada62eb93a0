"""Validate response bodies against OpenAI's published schemas (tests/openapi/schemas.json,
copied from the openai/openai-openapi spec by tests/openapi/extract.py)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).parent / "openapi" / "schemas.json"
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
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
}


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = json.loads(SCHEMAS.read_text())
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def check(body: Any, name: str) -> Any:
    """Raise jsonschema.ValidationError unless `body` is a valid `name`; returns body."""
    _validator(name).validate(body)
    return body
