"""Checks every GuardBackend must pass, shared by the MLX and llama.cpp backend tests."""

from __future__ import annotations

import numpy as np
import pytest


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
