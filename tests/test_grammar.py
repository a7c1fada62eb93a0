"""response_format -> GBNF: the mapping as pure functions, and the grammar actually
constraining the real model's output."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from core.errors import BadRequest
from core.engine.protocol import GenerationRequest, SamplingParams
from core.openai.grammar import JSON_OBJECT_GBNF, from_response_format

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "population": {"type": "integer"},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
}


def test_text_and_none_mean_no_grammar() -> None:
    assert from_response_format(None) is None
    assert from_response_format({"type": "text"}) is None


def test_json_object_is_the_json_grammar() -> None:
    assert from_response_format({"type": "json_object"}) == JSON_OBJECT_GBNF


def test_json_schema_compiles_to_rules_for_each_property() -> None:
    gbnf = from_response_format({"type": "json_schema",
                                 "json_schema": {"name": "city", "schema": SCHEMA}})
    assert "root ::=" in gbnf
    for name in ("city", "population", "capital"):
        assert f'\\"{name}\\"' in gbnf


@pytest.mark.parametrize("bad", [
    "json",
    {"type": "xml"},
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"schema": "not an object"}},
])
def test_bad_response_formats_are_bad_requests(bad) -> None:
    with pytest.raises(BadRequest):
        from_response_format(bad)


async def _complete(engine, prompt: str, grammar: str | None, **sampling) -> tuple[str, str]:
    events = [ev async for ev in engine.generate(GenerationRequest(
        prompt=prompt, max_tokens=120, grammar=grammar, sampling=SamplingParams(**sampling)))]
    return "".join(e.text for e in events), events[-1].finish_reason


def test_json_schema_output_parses_and_validates(engine) -> None:
    ask = "Describe Paris as JSON with city, population, capital."
    prompt = engine.render_chat([{"role": "user", "content": ask}])
    grammar = from_response_format({"type": "json_schema", "json_schema": {"schema": SCHEMA}})
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        text, finish = asyncio.run(_complete(engine, prompt, grammar, **sampling))
        assert finish == "stop", text  # the grammar ends, so the model must stop
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_output_is_an_object(engine) -> None:
    # The default model is a base model: a few-shot prompt keeps its object short.
    prompt = 'Pets as JSON.\nCat: {"name": "Tom", "age": 3}\nDog: {"name": "Rex", "age": 5}\nBird: '
    text, _ = asyncio.run(_complete(engine, prompt, from_response_format({"type": "json_object"}),
                                    temperature=0))
    assert isinstance(json.loads(text), dict)


def test_unparseable_grammar_is_a_bad_request(engine) -> None:
    async def run() -> None:
        async for _ in engine.generate(GenerationRequest(prompt="x", max_tokens=4,
                                                         grammar="root ::= (")):
            pass

    with pytest.raises(BadRequest):
        asyncio.run(run())
