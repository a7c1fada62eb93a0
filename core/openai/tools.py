"""Function tools: the request side (parse, prompt, grammar) of OpenAI tool calling.

One call format is used everywhere, Hermes's (Qwen 2.5, Hermes 2/3, SmolLM3 and most
tool-tuned GGUFs): a call is a JSON object with the name first, between tags::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

* A model whose chat template knows this format (it mentions `tools` and
  `<tool_call>`) gets `tools` and the history (assistant `tool_calls`, `role: tool`
  turns) as template variables, exactly as Hugging Face's `apply_chat_template` passes
  them; its template decides how they read.
* Any other model gets the *generic format*: the tools and the call format are
  described in a system message (`generic_messages`), past calls are written into the
  assistant turns in the same tags and tool results become user turns wrapped in
  `<tool_response>` tags, so the model's own template (or strato's fallback) renders
  plain text turns.

`tool_choice` `required` or a named function constrains sampling with a GBNF grammar
built from the tools' JSON schemas (`forced_call`), so the name is one of the tools
and the arguments parse and validate on any model; `auto` lets the model choose, and
`core.openai.tool_output` finds the calls in what it wrote. `none` leaves the tools out
of the prompt and the output unparsed.

The Responses API's function tools are flat (`{"type": "function", "name", ...}`);
`parse_tool_spec(body, flat=True)` reads them (and a flat named `tool_choice`) into
the same `ToolSpec`, so /v1/responses shares everything below.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from core.errors import BadRequest

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# One call, as format_call writes it (json.dumps's separators): CALL_OPEN "name" ARGS_SEP
# {arguments} CALL_CLOSE. The grammar for forced calls is built from the same pieces.
CALL_OPEN, ARGS_SEP, CALL_CLOSE = OPEN + '\n{"name": ', ', "arguments": ', "}\n" + CLOSE
MAX_FORCED_CALLS = 8  # a forced turn with parallel calls ends after this many


@dataclass(frozen=True)
class Tool:
    """One function tool; `parameters` is a JSON schema for its arguments object."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None

    def as_openai(self) -> dict[str, Any]:
        """The chat-completions shape, which tools-aware chat templates iterate over."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": dict(self.parameters or {"type": "object", "properties": {}})}}


@dataclass(frozen=True)
class ToolSpec:
    """The tools of one request and how the model may use them.

    `choice` is "none", "auto", "required", or the name of the one function it must call.
    """

    tools: tuple[Tool, ...]
    choice: str = "auto"
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice not in ("none", "auto")

    @property
    def active(self) -> bool:
        """Whether tools reach the prompt and calls are looked for in the output."""
        return bool(self.tools) and self.choice != "none"

    def callable(self) -> tuple[Tool, ...]:
        """The tools the model may call now: all of them, or the named one."""
        if self.choice in ("none", "auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.callable())


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# --- parsing requests ------------------------------------------------------------------


def parse_tool_spec(body: Mapping[str, Any], *, flat: bool = False) -> ToolSpec | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` of a chat request (with `flat`, of
    a Responses API request); None when the request has no tools (a `tool_choice` other
    than none/auto then is a 400)."""
    raw = body.get("tools")
    choice_raw = body.get("tool_choice")
    if raw is None or raw == []:
        if choice_raw not in (None, "none", "auto"):
            raise BadRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(raw, list):
        raise BadRequest("'tools' must be an array of function tools", param="tools")
    tools = tuple(parse_tool(t, f"tools[{i}]", flat=flat) for i, t in enumerate(raw))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise BadRequest("tool names must be unique", param="tools")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("'parallel_tool_calls' must be a boolean",
                         param="parallel_tool_calls")
    spec = ToolSpec(tools, parse_tool_choice(choice_raw, names, flat=flat),
                    True if parallel is None else parallel)
    call_grammar(spec)  # an invalid parameters schema is a 400 now, whatever the choice
    return spec


def parse_tool(raw: Any, param: str, *, flat: bool = False) -> Tool:
    """One function tool: `{"type": "function", "function": {name, description,
    parameters}}`, or with `flat` the Responses API's `{"type": "function", name, ...}`."""
    if not isinstance(raw, dict) or raw.get("type") != "function":
        raise BadRequest(f"{param} must be a function tool ({{'type': 'function', ...}}); "
                         f"other tool types are not supported", param=param)
    fn = raw if flat else raw.get("function")
    where = param if flat else f"{param}.function"
    if not isinstance(fn, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    name = fn.get("name")
    if not isinstance(name, str) or not name or len(name) > 64 \
            or not all(c.isalnum() or c in "_-" for c in name):
        raise BadRequest(f"{where}.name must be 1-64 letters, digits, '_' or '-'",
                         param=f"{where}.name")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise BadRequest(f"{where}.description must be a string",
                         param=f"{where}.description")
    parameters = fn.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"{where}.parameters must be a JSON Schema object",
                         param=f"{where}.parameters")
    if parameters is not None:
        _check_schema(parameters, f"{where}.parameters")
    return Tool(name, description, parameters)


def parse_tool_choice(raw: Any, names: Sequence[str], *, flat: bool) -> str:
    """"none" / "auto" / "required", or the name of an existing function: from a string,
    `{"type": "function", "function": {"name"}}` or (flat) `{"type": "function", "name"}`."""
    if raw is None:
        return "auto"
    if raw in ("none", "auto", "required"):
        return str(raw)
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw if flat else raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name in names:
            return str(name)
        raise BadRequest(f"'tool_choice' names {name!r}, which is not one of the tools "
                         f"{sorted(names)}", param="tool_choice")
    named = "{'type': 'function', 'name': ...}" if flat else \
        "{'type': 'function', 'function': {'name': ...}}"
    raise BadRequest(f"'tool_choice' must be 'none', 'auto', 'required' or {named}",
                     param="tool_choice")


def _check_schema(schema: Mapping[str, Any], param: str) -> None:
    """A parameters schema that is not valid JSON Schema is the caller's error."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BadRequest(f"{param} is not a valid JSON Schema: {exc.message}",
                         param=param) from None


def parse_tool_calls(raw: Any, param: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, normalised to OpenAI's shape (arguments a
    JSON string, as clients send them back)."""
    if not isinstance(raw, list):
        raise BadRequest(f"{param} must be an array", param=param)
    calls = []
    for i, call in enumerate(raw):
        where = f"{param}[{i}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"{where} must be {{'id', 'type': 'function', 'function': "
                             f"{{'name', 'arguments'}}}}", param=where)
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            args = json.dumps(args)
        calls.append({"id": str(call.get("id") or new_call_id()), "type": "function",
                      "function": {"name": fn["name"], "arguments": args}})
    return calls


# --- prompts ---------------------------------------------------------------------------


def template_knows_tools(template: str | None) -> bool:
    """Whether a chat template renders tools in the Hermes format we parse."""
    return template is not None and "tools" in template and OPEN in template


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a tools-aware template: arguments as objects, as HF templates
    expect (`tool_call.arguments | tojson`); a string that is not JSON stays a string."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = dict(call["function"])
                fn["arguments"] = _json_or_text(fn["arguments"])
                calls.append({**call, "function": fn, **fn})  # both shapes, as HF does
            m["tool_calls"] = calls
        out.append(m)
    return out


def generic_messages(messages: Sequence[Mapping[str, Any]],
                     tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Plain text turns for a template that knows nothing of tools (see the module doc).

    The tool instructions open the first system message (or a new one); consecutive tool
    results merge into one user turn, so templates that insist on alternating user and
    assistant turns still accept the history.
    """
    out: list[dict[str, Any]] = []
    if tools:
        instructions = generic_instructions(tools)
        if messages and messages[0]["role"] in ("system", "developer"):
            first = messages[0]
            out.append({"role": first["role"],
                        "content": f"{first['content'] or ''}\n\n{instructions}".lstrip()})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": instructions})
    for m in messages:
        if m["role"] == "tool":
            result = f"<tool_response>\n{m['content'] or ''}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "_tool_results": True})
        elif m.get("tool_calls"):
            text = [m["content"]] if m.get("content") else []
            text += [format_call(c["function"]["name"], c["function"]["arguments"])
                     for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(text)})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_call_id"})
    for m in out:
        m.pop("_tool_results", None)
    return out


def generic_instructions(tools: Sequence[Tool]) -> str:
    listing = "\n".join(json.dumps(t.as_openai()["function"]) for t in tools)
    return ("You may call one or more functions to help with the user's request. The "
            f"functions, as JSON schemas:\n<tools>\n{listing}\n</tools>\n"
            "To call a function, reply with its name and arguments as a JSON object "
            f"between tags:\n{OPEN}\n"
            '{"name": <function name>, "arguments": <arguments object>}\n'
            f"{CLOSE}\nFunction results come back between <tool_response> tags.")


def format_call(name: str, arguments: str) -> str:
    """A call as the model writes it (the name first: `tool_output` streams on that)."""
    args = json.dumps(_json_or_text(arguments), ensure_ascii=False)
    return f"{CALL_OPEN}{json.dumps(name, ensure_ascii=False)}{ARGS_SEP}{args}{CALL_CLOSE}"


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, json.JSONDecodeError):
        return arguments


# --- grammar ---------------------------------------------------------------------------


def call_grammar(spec: ToolSpec, prefilled: str = "",
                 answer: Mapping[str, Any] | None = None) -> str:
    """GBNF for what a forced turn may sample: calls to the callable tools, arguments
    per their schemas (`prefilled`, `answer`: see core.openai.grammar.tool_calls_gbnf).
    A named function is called once (what clients that name one, instructor's TOOLS
    mode, LangChain's bind_tools, read back: small models otherwise repeat the call
    until max_tokens); `required` (or `auto`) with parallel calls allows up to
    MAX_FORCED_CALLS."""
    from core.openai import grammar

    functions = [(t.name, dict(t.parameters or {"type": "object"}))
                 for t in spec.callable()]
    many = spec.parallel and spec.choice in ("required", "auto")
    return grammar.tool_calls_gbnf(functions, call_open=CALL_OPEN, args_sep=ARGS_SEP,
                                   call_close=CALL_CLOSE, prefilled=prefilled,
                                   max_calls=MAX_FORCED_CALLS if many else 1,
                                   answer=answer)


def turn_grammar(spec: ToolSpec | None, forced: ForcedCall | None,
                 answer: Mapping[str, Any] | None) -> str | None:
    """The grammar of a chat turn whose output format (`answer`: response_format's JSON
    schema, `{"type": "object"}` for json_object) meets its active tools (`spec`).

    As in OpenAI's API, response_format shapes the turn's *text*: a forced call has no
    text, so its grammar alone applies; with `auto` the model may answer in the format
    or call tools, each branch constrained; without tools, the format's grammar (None
    here: the caller's, core.openai.grammar.from_response_format)."""
    if forced is not None:
        return forced.grammar
    if spec is not None and answer is not None:
        return call_grammar(spec, answer=answer)
    return None


@dataclass(frozen=True)
class ForcedCall:
    """How a forced turn runs: `prefix` is appended to the prompt (the start of the
    first call, which the grammar would force anyway: as prompt it costs one batch
    instead of a sampled, grammar-checked step per token) and `grammar` constrains the
    rest. The output parser is given the prefix back (`OutputParser(prefix=...)`)."""

    prefix: str
    grammar: str


def forced_call(spec: ToolSpec | None) -> ForcedCall | None:
    """The prefix and grammar a request's tools impose; None unless a call is forced."""
    if spec is None or not spec.forced:
        return None
    callable_ = spec.callable()
    if len(callable_) == 1:
        return ForcedCall(CALL_OPEN + json.dumps(callable_[0].name) + ARGS_SEP,
                          call_grammar(spec, "name"))
    return ForcedCall(CALL_OPEN, call_grammar(spec, "open"))
