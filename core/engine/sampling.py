"""Per-sequence sampler chains over llama.cpp's sampler API.

Every running sequence owns one `llama_sampler` chain built from its request's
parameters, so eight streams in one batch can each have their own temperature, seed,
penalties and grammar. Which samplers go into a chain, in which order and with which
arguments is decided by `chain_spec`, a pure function (unit-tested without a model);
`SamplerChain` only turns that spec into llama.cpp objects.

Order follows llama.cpp's server: grammar first (it must see every candidate, or it can
be left with none), then logit bias, penalties, top-k, top-p, min-p, temperature, and
finally the seeded distribution draw; temperature 0 replaces the tail with a greedy
argmax. A bias of -100 bans a token outright (-inf), as OpenAI documents it.

Log-probabilities (`logprobs`) are read from the step's raw logits, before any of these
samplers: the model's own distribution, as llama-server reports it by default.

A grammar over Gemma's 262,144-token vocabulary is expensive to apply to every candidate,
so a grammar sequence samples the way llama.cpp's `common_sampler` does: draw without the
grammar, ask the grammar about that one token, and only when it is rejected apply the
grammar to the whole vocabulary and draw again. The result is the same distribution.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import TYPE_CHECKING, Any, Callable

from core.engine.protocol import SamplingParams, TokenLogprob
from core.errors import BadRequest

if TYPE_CHECKING:   # numpy is imported where logits are read, off the cold start's path
    import numpy as np

# llama.cpp server default: penalties look at the last 64 tokens.
PENALTY_LAST_N = 64
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a random seed


def validate(params: SamplingParams) -> None:
    """Reject values llama.cpp would misbehave on (NaN, negative temperature, ...)."""
    checks = [
        (params.temperature >= 0 and params.temperature == params.temperature,
         "temperature", "must be >= 0"),
        (0.0 <= params.top_p <= 1.0, "top_p", "must be between 0 and 1"),
        (params.top_k >= 0, "top_k", "must be >= 0"),
        (0.0 <= params.min_p <= 1.0, "min_p", "must be between 0 and 1"),
        (params.repeat_penalty > 0, "repeat_penalty", "must be > 0"),
        (-2.0 <= params.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]"),
        (-2.0 <= params.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]"),
    ]
    for ok, name, why in checks:
        if not ok:
            raise BadRequest(f"{name} {why}", param=name)


def chain_spec(params: SamplingParams, has_grammar: bool) -> list[tuple[str, tuple[Any, ...]]]:
    """The sampler chain for `params`, as (sampler name, arguments) in order."""
    spec: list[tuple[str, tuple[Any, ...]]] = []
    if has_grammar:
        spec.append(("grammar", ()))
    if params.logit_bias:
        spec.append(("logit_bias", (params.logit_bias,)))
    if (params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0):
        spec.append(("penalties", (PENALTY_LAST_N, params.repeat_penalty,
                                   params.frequency_penalty, params.presence_penalty)))
    if params.temperature <= 0:
        spec.append(("greedy", ()))
        return spec
    if params.top_k > 0:
        spec.append(("top_k", (params.top_k,)))
    if params.top_p < 1.0:
        spec.append(("top_p", (params.top_p, 1)))
    if params.min_p > 0.0:
        spec.append(("min_p", (params.min_p, 1)))
    spec.append(("temp", (params.temperature,)))
    seed = RANDOM_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    spec.append(("dist", (seed,)))
    return spec


class SamplerChain:
    """One llama.cpp sampler chain; `sample` draws from logits row `idx` and accepts the
    token (penalty history and grammar state advance with it)."""

    def __init__(self, llama: Any, vocab: Any, n_vocab: int, params: SamplingParams,
                 grammar: str | None) -> None:
        self._ll = llama
        self._n_vocab = n_vocab
        self._grammar: Any = None
        chain_params = llama.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama.llama_sampler_chain_init(chain_params)
        try:
            for name, args in chain_spec(params, grammar is not None):
                sampler = self._make(name, args, vocab, n_vocab, grammar)
                if name == "grammar":
                    self._grammar = sampler  # kept out of the chain: see module docstring
                else:
                    self._chain_add(sampler)
        except BaseException:
            self.free()
            raise

    def _make(self, name: str, args: tuple[Any, ...], vocab: Any, n_vocab: int,
              grammar: str | None) -> Any:
        ll = self._ll
        if name == "grammar":
            sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not sampler:
                raise BadRequest("invalid grammar: llama.cpp could not parse it",
                                 param="response_format")
            return sampler
        if name == "penalties":
            return ll.llama_sampler_init_penalties(n_vocab, *args)
        if name == "logit_bias":
            return self._logit_bias(args[0])
        return getattr(ll, f"llama_sampler_init_{name}")(*args)

    def _logit_bias(self, pairs: tuple[tuple[int, float], ...]) -> Any:
        ll = self._ll
        for token, _ in pairs:
            if not 0 <= token < self._n_vocab:
                raise BadRequest(f"logit_bias names token {token}; this model's tokens are "
                                 f"0 to {self._n_vocab - 1}", param="logit_bias")
        biases = (ll.llama_logit_bias * len(pairs))()
        for i, (token, bias) in enumerate(pairs):
            biases[i].token = token
            biases[i].bias = -math.inf if bias <= -100 else bias
        return ll.llama_sampler_init_logit_bias(self._n_vocab, len(pairs), biases)

    def logits(self, ctx: Any, idx: int) -> np.ndarray:
        """Row `idx` of the step's logits (a view: valid until the next decode)."""
        import numpy as np

        return np.ctypeslib.as_array(self._ll.llama_get_logits_ith(ctx, idx),
                                     shape=(self._n_vocab,))

    def _chain_add(self, sampler: Any) -> None:
        # The chain takes ownership: freeing the chain frees its samplers.
        self._ll.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, idx: int) -> int:
        if self._grammar is None:
            return int(self._ll.llama_sampler_sample(self._chain, ctx, idx))
        import numpy as np

        ll = self._ll
        logits = self.logits(ctx, idx)
        cand = _Candidates(ll, logits)
        ll.llama_sampler_apply(self._chain, cand.ref)
        token = cand.selected()
        probe = _Candidates(ll, np.array([1.0], dtype=np.single), ids=np.array([token]))
        ll.llama_sampler_apply(self._grammar, probe.ref)
        if not np.isfinite(probe.rows.logit[0]):
            cand = _Candidates(ll, logits)
            ll.llama_sampler_apply(self._grammar, cand.ref)
            ll.llama_sampler_apply(self._chain, cand.ref)
            token = cand.selected()
        ll.llama_sampler_accept(self._grammar, token)
        ll.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        if self._chain:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            self._ll.llama_sampler_free(self._grammar)
            self._grammar = None


def log_softmax_at(logits: np.ndarray, token: int, top: int
                   ) -> tuple[float, list[tuple[int, float]]]:
    """log p(`token`) under softmax(`logits`), and the `top` most likely (id, log p),
    most likely first. Pure numpy, about a millisecond over a 262k vocabulary."""
    import numpy as np

    peak = float(logits.max())
    norm = peak + math.log(float(np.exp(logits - peak).sum(dtype=np.float64)))
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.sort(np.argpartition(logits, -top)[-top:])  # ties: lower id first
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = [(int(i), float(logits[i]) - norm) for i in ids]
    return float(logits[token]) - norm, best


def describe(piece: Callable[[int], bytes], token: int, logprob: float | None,
             top: list[tuple[int, float]]) -> TokenLogprob:
    """A TokenLogprob with each token's text (its bytes decoded, invalid UTF-8 replaced;
    `raw` keeps the exact bytes for clients that join partial characters)."""
    def one(tok: int, lp: float | None, alts: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        raw = piece(tok)
        return TokenLogprob(raw.decode("utf-8", "replace"), raw, lp, alts)

    return one(token, logprob, tuple(one(t, lp) for t, lp in top))


@functools.cache
def _token_data() -> np.dtype:
    """llama_token_data's layout as a numpy record."""
    import numpy as np

    return np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class _Candidates:
    """A llama_token_data_array over numpy memory (the rows outlive every C call)."""

    def __init__(self, ll: Any, logits: np.ndarray, ids: np.ndarray | None = None) -> None:
        import numpy as np

        self.rows = np.recarray((len(logits),), dtype=_token_data())
        self.rows.id[:] = np.arange(len(logits), dtype=np.intc) if ids is None else ids
        self.rows.logit[:] = logits
        self.rows.p[:] = 0.0
        self.array = ll.llama_token_data_array(
            data=self.rows.ctypes.data_as(ll.llama_token_data_p), size=len(logits),
            selected=-1, sorted=False)
        self.ref = ctypes.byref(self.array)

    def selected(self) -> int:
        # Samplers may move `data` (e.g. top-k truncation keeps the pointer, sorting may
        # not), so read through the struct rather than our numpy view.
        return int(self.array.data[self.array.selected].id)
