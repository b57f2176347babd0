"""Checks every GuardBackend must pass, shared by the MLX and llama.cpp backend tests."""

from __future__ import annotations

import numpy as np
import pytest

from localguard.backends.base import Sampling
from localguard.guard import GuardSettings, generate


def chat(prompt: str, prefill: str | None = None) -> list[dict]:
    """A user message, and a forced start of the assistant's reply when prefill is given."""
    msgs = [{"role": "user", "content": prompt}]
    return msgs + ([{"role": "assistant", "content": prefill}] if prefill else [])


def greedy(backend, n: int, logits: np.ndarray) -> list[int]:
    """n greedy tokens from logits on, fed one by one."""
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = backend.feed([out[-1]]).logits
    return out


def check_rewind_matches_fresh(backend, prompt: list[int], forced: list[int], atol: float):
    """Feed, rewind, force tokens: logits, safety logits and the greedy continuation equal a
    from-scratch run on the same tokens. Returns the reply the rewind cut."""
    b = backend
    b.reset()
    reply = greedy(b, 8, b.feed(prompt).logits)
    assert b.length == len(prompt) + 8
    b.rewind(len(prompt) + 3)
    assert b.length == len(prompt) + 3 and b.tokens == prompt + reply[:3]
    after = b.feed(forced)
    tail = greedy(b, 6, after.logits)
    b.reset()
    fresh = b.feed(prompt + reply[:3] + forced)
    assert np.allclose(after.logits, fresh.logits, atol=atol)
    assert np.allclose(after.safety, fresh.safety[-len(forced) :], atol=atol)
    assert greedy(b, 6, fresh.logits) == tail
    with pytest.raises(ValueError, match="cannot rewind"):
        b.rewind(b.length + 1)
    return reply


def check_rows_never_sampled(backend, temperature: float) -> None:
    """The safety rows are never drawn by the backend's sampler, nor in guarded generation
    with the guard on or off under a +1e6 logit bias on them; unmasked they would win."""
    b = backend
    b.reset()
    logits = b.feed(b.encode_chat(chat("Tell me a story."))).logits
    raw = logits.copy()
    raw[list(b.safety_ids)] = raw[np.isfinite(raw)].max() + 5.0  # what an unmasked row could be
    for seed in range(3):
        sample = b.sampler(Sampling(temperature=temperature, top_k=0, seed=seed))
        assert not {sample(logits) for _ in range(300)} & set(b.safety_ids)
        if temperature == 0.0:
            assert sample(raw) in b.safety_ids  # teeth: unmasked, they would win
    sampling = Sampling(
        temperature=temperature, max_tokens=48, seed=3, logit_bias={i: 1e6 for i in b.safety_ids}
    )
    for mode in ("on", "off"):
        result = generate(b, chat("Tell me a story."), GuardSettings(mode=mode), sampling)
        assert not set(result.tokens) & set(b.safety_ids) and result.steps >= 1


def check_guarded_generation(backend, prefix: str, refusal_prefix: str | None = None):
    """Every response verdict unsafe: the first tau tokens are rewound and the prefix forced,
    then the reply stops; the query verdict forced unsafe: the reply starts with the prefix and
    a prefill is dropped; guard off: the prefill stays. refusal_prefix None means the model's
    own prefix (expected to be `prefix`). Returns the first result."""
    b = backend
    settings = GuardSettings(
        query_threshold=1.0,
        response_threshold=0.0,
        tau=2,
        refusal_prefix=refusal_prefix,
        max_interventions=1,
    )
    steps: list[tuple[float, bool]] = []
    first = generate(
        b,
        chat("How do I bake bread?"),
        settings,
        Sampling(max_tokens=24),
        on_step=lambda score, flagged: steps.append((score, flagged)),
    )
    assert first.text.startswith(prefix) and first.interventions[0].at == 0
    assert [i.action for i in first.interventions] == ["refuse", "stop"]
    assert first.finish == "stopped" and first.text == prefix
    # on_step saw every fed token: 2 flagged and rewound, the prefix (never flagged), 2 more
    n = len(b.encode_text(prefix))
    assert len(steps) == first.steps == 2 + n + 2
    assert [f for _, f in steps] == [True] * 2 + [False] * n + [True] * 2
    assert [s for s, _ in steps[2 : 2 + n]] == first.response_logits
    settings = GuardSettings(
        query_threshold=0.0, response_threshold=1.0, refusal_prefix=refusal_prefix
    )
    result = generate(b, chat("Hi", "Sure, here is"), settings, Sampling(max_tokens=24))
    assert result.text.startswith(prefix) and result.interventions[0].output == "query"
    off = generate(
        b, chat("Hi", "Sure, here is"), GuardSettings(mode="off"), Sampling(max_tokens=24)
    )
    assert off.text.startswith("Sure, here is") and not off.interventions
    return first


def check_drawing_ahead_changes_nothing(backend) -> None:
    """Guarded replies equal those of a run that cannot draw ahead (a logit bias of 0 turns a
    backend's drawing ahead off without changing any draw): with rewinds, refusals and the
    token limit, in every mode, greedy and (without interventions) sampled."""
    b = backend
    off = {next(iter(b.eos_ids)): 0.0}
    cases = [
        (GuardSettings(query_threshold=1.0, response_threshold=0.0, tau=2), 0.0),
        (GuardSettings(query_threshold=0.0), 0.0),
        (GuardSettings(mode="monitor", response_threshold=0.0), 0.0),
        (GuardSettings(mode="off"), 1.0),
    ]
    for settings, temperature in cases:
        for prompt in ("How do I bake bread?", "Tell me about the river."):
            runs = [
                generate(
                    b,
                    chat(prompt),
                    settings,
                    Sampling(temperature=temperature, max_tokens=20, seed=5, logit_bias=bias),
                )
                for bias in ({}, off)
            ]
            ahead, plain = (r.record() for r in runs)
            assert ahead["tokens"] == plain["tokens"] and ahead["finish"] == plain["finish"]
            assert [i["at"] for i in ahead["interventions"]] == [
                i["at"] for i in plain["interventions"]
            ]
            assert np.allclose(ahead["response_logits"], plain["response_logits"], atol=1e-4)
