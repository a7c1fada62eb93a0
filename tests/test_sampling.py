"""Sampler-chain decisions, without a model."""

from __future__ import annotations

import pytest

from core.errors import BadRequest
from core.engine.protocol import SamplingParams
from core.engine.sampling import PENALTY_LAST_N, RANDOM_SEED, chain_spec, validate


def names(spec) -> list[str]:
    return [name for name, _ in spec]


def test_greedy_at_temperature_zero_skips_truncation_samplers() -> None:
    assert names(chain_spec(SamplingParams(temperature=0), False)) == ["greedy"]


def test_default_chain_order_matches_llama_server() -> None:
    spec = chain_spec(SamplingParams(seed=5), False)
    assert names(spec) == ["top_k", "top_p", "min_p", "temp", "dist"]
    assert spec[-1] == ("dist", (5,))


def test_grammar_comes_first_and_penalties_before_truncation() -> None:
    params = SamplingParams(temperature=0.7, repeat_penalty=1.3, frequency_penalty=0.5)
    spec = chain_spec(params, True)
    assert names(spec)[:2] == ["grammar", "penalties"]
    assert spec[1] == ("penalties", (PENALTY_LAST_N, 1.3, 0.5, 0.0))


def test_disabled_knobs_are_left_out() -> None:
    spec = chain_spec(SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0), False)
    assert names(spec) == ["temp", "dist"]
    assert spec[-1] == ("dist", (RANDOM_SEED,))


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=-1),
    SamplingParams(temperature=float("nan")),
    SamplingParams(top_p=1.5),
    SamplingParams(top_k=-3),
    SamplingParams(repeat_penalty=0),
    SamplingParams(presence_penalty=3),
])
def test_invalid_params_are_bad_requests(params) -> None:
    with pytest.raises(BadRequest):
        validate(params)


def test_log_softmax_at_matches_the_definition_and_orders_the_top() -> None:
    import math

    import numpy as np

    from core.engine.sampling import log_softmax_at

    logits = np.array([1.0, 3.0, 2.0, -50.0, 3.0], dtype=np.single)
    logprob, top = log_softmax_at(logits, 2, 3)
    norm = math.log(sum(math.exp(x) for x in logits.tolist()))
    assert logprob == pytest.approx(2.0 - norm, abs=1e-6)
    assert [t for t, _ in top] == [1, 4, 2]  # ties keep vocabulary order
    assert [lp for _, lp in top] == pytest.approx([3.0 - norm, 3.0 - norm, 2.0 - norm])
    assert log_softmax_at(logits, 0, 0)[1] == []


def test_logit_bias_goes_first_in_the_chain() -> None:
    spec = chain_spec(SamplingParams(temperature=0, logit_bias=((5, -100.0),)), False)
    assert names(spec) == ["logit_bias", "greedy"]
    assert spec[0] == ("logit_bias", (((5, -100.0),),))
