"""Chat messages -> one prompt string.

A GGUF usually carries its own Jinja chat template (`tokenizer.chat_template`); when it
does we render exactly that, in a sandbox, the way Hugging Face's `apply_chat_template`
does. The default Gemma 3 270M GGUF carries none, so a model without a template gets a
fallback chosen by architecture:

* `gemma*`: Gemma's turn format. Gemma has no system role, so system (and developer)
  messages are folded into the first user turn, separated by a blank line, exactly as
  Google's own template does::

      <start_of_turn>user
      {system}\\n\\n{user}<end_of_turn>
      <start_of_turn>model
      {assistant}<end_of_turn>
      <start_of_turn>model

* anything else: ChatML (`<|im_start|>role\\n...<|im_end|>`), the most widely trained
  format among instruction-tuned GGUFs without a template.

The BOS token is not written by the fallbacks: the engine adds it when it tokenizes (and
drops a duplicate when a GGUF template writes `{{ bos_token }}` itself).

Tools (core.openai.tools): a template that knows the Hermes tool format gets `tools`,
assistant `tool_calls` and `role: tool` turns as variables; every other template and
both fallbacks get the generic format, written into plain text turns first.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from core.errors import BadRequest
from core.openai import tools as tool_format
from core.openai.schemas import parse_messages


def fallback_format(architecture: str) -> str:
    """Which built-in format a template-less model gets: 'gemma' or 'chatml'."""
    return "gemma" if architecture.lower().startswith("gemma") else "chatml"


def render_gemma(messages: Sequence[dict[str, Any]]) -> str:
    """Gemma turns; system/developer text is prepended to the first user turn."""
    system = [m["content"] or "" for m in messages if m["role"] in ("system", "developer")]
    turns = [m for m in messages if m["role"] not in ("system", "developer")]
    prefix = "\n\n".join(s.strip() for s in system if s.strip())
    out: list[str] = []
    if prefix and (not turns or turns[0]["role"] != "user"):
        # A system prompt with no user turn after it still has to reach the model.
        turns.insert(0, {"role": "user", "content": ""})
    for i, m in enumerate(turns):
        text = (m["content"] or "").strip()
        if i == 0 and prefix:
            text = f"{prefix}\n\n{text}" if text else prefix
        role = "model" if m["role"] == "assistant" else "user"
        out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    out.append("<start_of_turn>model\n")
    return "".join(out)


def render_chatml(messages: Sequence[dict[str, Any]]) -> str:
    """ChatML; developer messages map to the system role."""
    out = []
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        out.append(f"<|im_start|>{role}\n{m['content'] or ''}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    """A sandboxed Jinja template; sandboxed because the template comes from a file we
    downloaded, and a template is code."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    # HF's tojson: plain json.dumps, keys in their order, no HTML escaping. Jinja's own
    # sorts keys and writes '<' as \u003c, which changes what tool templates print.
    env.filters["tojson"] = _tojson
    return env.from_string(template)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def render_template(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str,
                    eos_token: str, tools: Sequence[dict[str, Any]] | None = None) -> str:
    """Render a GGUF's own chat template with the variables HF templates expect.

    Any failure is the request's 400, never a 500: a template is code written for the
    messages its authors had in mind, and one that cannot render these (its own
    raise_exception, or `'...' + message['content']` on a null content: TypeError)
    says so, naming the template, so the caller can change the messages.
    """
    import jinja2

    variables: dict[str, Any] = {"messages": list(messages), "bos_token": bos_token,
                                 "eos_token": eos_token, "add_generation_prompt": True}
    if tools:
        variables["tools"] = list(tools)
    try:
        return _compile(template).render(**variables)
    except jinja2.TemplateError as exc:
        # The template's own raise_exception() (e.g. "roles must alternate") is the
        # user's error, and its message says what to fix.
        raise BadRequest(f"the model's chat template (tokenizer.chat_template) rejected "
                         f"the messages: {exc}", param="messages") from None
    except Exception as exc:  # noqa: BLE001 - template code can raise anything
        raise BadRequest(f"the model's chat template (tokenizer.chat_template) failed on "
                         f"the messages: {type(exc).__name__}: {exc}",
                         param="messages") from None


def render(messages: Sequence[Any], *, template: str | None, architecture: str,
           bos_token: str = "", eos_token: str = "",
           tools: Sequence[tool_format.Tool] = ()) -> str:
    """The prompt for `messages` (and the request's tools, when the model may call
    them): the model's template if it has one, else the fallback."""
    msgs: Sequence[dict[str, Any]] = parse_messages(messages)
    if template and tool_format.template_knows_tools(template):
        return render_template(template, tool_format.template_messages(msgs),
                               bos_token=bos_token, eos_token=eos_token,
                               tools=[t.as_openai() for t in tools])
    if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in msgs):
        msgs = tool_format.generic_messages(msgs, tools)
    if template:
        return render_template(template, msgs, bos_token=bos_token, eos_token=eos_token)
    if fallback_format(architecture) == "gemma":
        return render_gemma(msgs)
    return render_chatml(msgs)
