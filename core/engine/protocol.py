"""The engine's interface: what a handler asks for and what comes back.

Handlers build a `GenerationRequest`, hand it to `Engine.generate`, and iterate the
`TokenEvent`s it yields. The engine behind this interface (a serial loop today, a
continuous-batching scheduler tomorrow) can change without touching any handler, which
is why everything here is plain data with no llama.cpp types in it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; defaults follow llama.cpp's server."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, added to its logit)

    def for_choice(self, index: int) -> "SamplingParams":
        """The parameters of choice `index` of an n > 1 request: choice 0 keeps the
        seed, choice i draws from seed + i, so the n answers differ and each one is
        still reproducible."""
        if index == 0 or self.seed is None:
            return self
        return replace(self, seed=(self.seed + index) & 0xFFFFFFFF)


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: an already-rendered prompt and how to continue it.

    `prompt` is text (chat messages were rendered through the chat template already);
    the engine tokenizes it. `prompt_tokens`, when given, are the prompt's token ids as
    the caller sent them (a completions token-array prompt): used as they are, no BOS
    added, `prompt` ignored. `grammar` is GBNF text or None.

    `n` answers share the prompt's KV cells. `logprobs` None means none; k >= 0 means
    each generated token's log-probability and its k most likely alternatives.
    `prompt_logprobs` scores the prompt's tokens too (completions with `echo`); then
    `max_tokens` may be 0, to score a text without generating (lm-eval's loglikelihood).
    """

    prompt: str
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    add_bos: bool = True
    n: int = 1
    logprobs: int | None = None
    prompt_logprobs: bool = False
    prompt_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model, and its most likely alternatives.

    Computed from the raw logits of the step, before any sampler touched them (logit
    bias, penalties, grammar, temperature, top-k/p): the model's own distribution, as
    llama-server reports by default. `logprob` is None only for a prompt's first token,
    which nothing precedes.
    """

    token: str
    raw: bytes
    logprob: float | None
    top: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One step of one answer of a stream.

    `index` says which of the request's n answers it belongs to; each answer's last
    event has `finish_reason` set and carries usage (prompt tokens and that answer's
    tokens), and the stream ends after all n. `logprobs` covers the tokens sampled
    since the answer's previous event; `prompt_logprobs` comes once, on answer 0's first
    event, when the request asked for it.
    """

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """What the server can say about a model as soon as its GGUF header is known."""

    name: str
    architecture: str
    n_ctx: int
    n_ctx_train: int
    chat_template: str | None
    file_type: str | None = None
    size_bytes: int = 0


class Engine(Protocol):
    """A loaded model. One engine owns one llama.cpp model and its contexts."""

    info: ModelInfo

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of `tokens` (special tokens spelled out); BadRequest for an unknown id."""
        ...

    def render_chat(self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] = ()) -> str:
        """The prompt for chat messages; `tools` are core.openai.tools.Tool values."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        """Stream tokens. Closing the generator early (`aclose()`, client gone) frees the
        sequence; callers close it in a `finally`, hence a generator, not an iterator."""
        ...

    async def embed(self, inputs: Sequence[str]) -> tuple[list[list[float]], int]:
        """Return one vector per input and the total prompt tokens."""
        ...

    def queue_depth(self) -> int: ...

    def close(self) -> None: ...
