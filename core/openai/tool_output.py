"""What a chat model wrote -> content, reasoning and tool calls, incrementally.

`OutputParser` is fed the text of each token as it comes and returns `Delta`s; a
non-streamed answer feeds the whole text and `collect`s them, so both paths split the
output the same way. It recognises:

* a leading `<think>...</think>` block (or, when the prompt already opened one, as
  DeepSeek R1 and Qwen 3 templates do, text up to `</think>`): `reasoning_content`;
* `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks (core.openai.tools's
  format) when the request has tools: tool calls. With the name first (as the
  grammar for forced calls guarantees), a call streams as OpenAI's do: a first delta
  with index, id, type and name, then the arguments in pieces as the model writes them.
  A call written another way (arguments first) is parsed whole at its closing tag; one
  that is not JSON, or names no tool, stays in the content as the model wrote it.

Text that might be the start of a tag is held back until it is clearly not one, so a
stream never shows half a tag.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from core.openai.tools import CLOSE, OPEN, new_call_id

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


@dataclass(frozen=True)
class Delta:
    """One piece of output. kind: "content", "reasoning", "call" (a new call: index, id,
    name) or "arguments" (more argument text of call `index`)."""

    kind: str
    text: str = ""
    index: int = 0
    id: str = ""
    name: str = ""


@dataclass
class Collected:
    """A whole answer: content (None when the turn is only tool calls), reasoning, calls."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class OutputParser:
    """Incremental splitter; one per choice. `tool_names` None means no tool parsing."""

    def __init__(self, tool_names: frozenset[str] | None = None, *, in_think: bool = False,
                 prefix: str = "", call_id: Callable[[], str] = new_call_id,
                 reasoning: bool = True) -> None:
        """`prefix`: text the prompt already wrote for the model (a forced call's start,
        core.openai.tools.ForcedCall), parsed as if the model had written it.
        `reasoning` False leaves a <think> block in the content as written (the Responses
        API's messages have no place for it)."""
        self._names, self._call_id = tool_names, call_id
        self._state = "text" if not reasoning else "think" if in_think else "start"
        self._buf = prefix
        self._calls = 0
        self._scan: _ValueScanner | None = None
        self._lstrip = False

    @property
    def calls(self) -> int:
        return self._calls

    def feed(self, text: str) -> list[Delta]:
        if self._state == "text" and self._names is None and not self._lstrip:
            return [Delta("content", text)] if text else []  # plain chat: per-token path
        self._buf += text
        out: list[Delta] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Delta]:
        """Flush what was held back: the output ended (stop, length)."""
        out = self.feed("")
        buf, self._buf = self._buf, ""
        if self._state == "think":
            self._emit(out, "reasoning", buf)
        elif self._state == "call":
            if not self._whole_call(out, buf):
                self._emit(out, "content", OPEN + buf)
        elif self._state in ("start", "text"):
            self._emit(out, "content", buf)
        return out  # "arguments" / "tail": a call cut off by the length limit ends as is

    # -- states -----------------------------------------------------------------------
    def _step(self, out: list[Delta]) -> bool:
        """Advance one state on the buffer; True when another step may make progress."""
        state, buf = self._state, self._buf
        if state == "start":
            head = buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._buf, self._state = head[len(THINK_OPEN):], "think"
                return True
            if head and THINK_OPEN.startswith(head):
                return False
            self._state = "text"
            return True
        if state == "think":
            return self._until(out, THINK_CLOSE, "reasoning", "text")
        if state == "text":
            if self._names is None:
                self._buf = ""
                self._emit(out, "content", buf)
                return False
            return self._until(out, OPEN, "content", "call")
        if state == "call":
            return self._call_header(out, buf)
        if state == "arguments":
            assert self._scan is not None
            fresh = not self._scan.started
            done, taken = self._scan.feed(buf)
            self._buf, piece = buf[taken:], buf[:taken]
            piece = piece.lstrip() if fresh else piece
            if piece:
                out.append(Delta("arguments", piece, index=self._calls - 1))
            if done:
                self._state = "tail"
            return done
        # tail: the wrapper's closing brace, then the closing tag
        at = buf.find(CLOSE)
        if at < 0:
            return False
        self._buf, self._state = buf[at + len(CLOSE):], "text"
        return True

    def _until(self, out: list[Delta], tag: str, kind: str, next_state: str) -> bool:
        """Emit `kind` text up to `tag` (then switch state), holding back a partial tag."""
        buf = self._buf
        at = buf.find(tag)
        if at >= 0:
            self._emit(out, kind, buf[:at])
            self._buf, self._state = buf[at + len(tag):], next_state
            self._lstrip = self._lstrip or next_state == "text"
            return True
        keep = _partial_suffix(buf, tag)
        self._emit(out, kind, buf[:len(buf) - keep])
        self._buf = buf[len(buf) - keep:]
        return False

    def _call_header(self, out: list[Delta], buf: str) -> bool:
        match = _HEADER.match(buf)
        if match:
            try:
                name = json.loads(f'"{match.group(1)}"')
            except json.JSONDecodeError:
                name = None
            if name in (self._names or ()):
                out.append(Delta("call", index=self._calls, id=self._call_id(), name=name))
                self._calls += 1
                self._buf, self._state = buf[match.end():], "arguments"
                self._scan = _ValueScanner()
                return True
        at = buf.find(CLOSE)
        if at < 0:
            return False
        self._buf, self._state = buf[at + len(CLOSE):], "text"
        if not self._whole_call(out, buf[:at]):
            self._emit(out, "content", OPEN + buf[:at + len(CLOSE)])
        return True

    def _whole_call(self, out: list[Delta], inner: str) -> bool:
        """A call parsed at once (any key order); False when it is not a call."""
        try:
            call = json.loads(inner)
        except json.JSONDecodeError:
            return False
        if not isinstance(call, dict) or call.get("name") not in (self._names or ()):
            return False
        args = call.get("arguments", call.get("parameters", {}))
        out.append(Delta("call", index=self._calls, id=self._call_id(), name=call["name"]))
        out.append(Delta("arguments", args if isinstance(args, str) else
                         json.dumps(args, ensure_ascii=False), index=self._calls))
        self._calls += 1
        return True

    def _emit(self, out: list[Delta], kind: str, text: str) -> None:
        if kind == "content":
            if self._lstrip:  # the answer after a think block starts at its first word
                text = text.lstrip()
                self._lstrip = not text
            if self._calls and not text.strip():
                return  # whitespace between or after calls is not content
        if text:
            out.append(Delta(kind, text))


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class _ValueScanner:
    """Finds where one JSON value ends in text that arrives in pieces (strings and
    nesting tracked; whitespace before the value skipped)."""

    def __init__(self) -> None:
        self.depth, self.started, self.in_string, self.escape = 0, False, False, False

    def feed(self, text: str) -> tuple[bool, int]:
        """(value complete, characters of `text` that belong to it)."""
        for i, c in enumerate(text):
            if not self.started:
                if c.isspace():
                    continue
                self.started = True
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return True, i + 1
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                if self.depth == 0:  # a bare scalar ended at the wrapper's brace
                    return True, i
                self.depth -= 1
                if self.depth == 0:
                    return True, i + 1
            elif self.depth == 0 and c in ",":
                return True, i
        return False, len(text)


def prompt_opens_think(prompt: str) -> bool:
    """Whether the rendered prompt leaves a think block open for the model to close
    (DeepSeek R1 and Qwen 3 templates end the generation prompt with `<think>`)."""
    return prompt.rstrip().endswith(THINK_OPEN)


def collect(deltas: Iterable[Delta]) -> Collected:
    """A non-streamed answer from all of its deltas."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for d in deltas:
        if d.kind == "content":
            content.append(d.text)
        elif d.kind == "reasoning":
            reasoning.append(d.text)
        elif d.kind == "call":
            calls.append({"id": d.id, "type": "function",
                          "function": {"name": d.name, "arguments": ""}})
        else:
            calls[d.index]["function"]["arguments"] += d.text
    text = "".join(content)
    return Collected(content=None if calls and not text.strip() else text,
                     reasoning="".join(reasoning) or None, tool_calls=calls)
