"""The interface a guarded-generation backend gives the Guard (localguard/guard.py).

A backend holds one model with its safety head and one sequence in a KV cache. The Guard drives
it token by token: feed tokens, read the next-token logits and the safety logits of every fed
token, sample, and rewind the cache to an earlier length. Everything here is numpy, so the
Guard never sees a framework; backends/mlx/guarded.py and the llama.cpp backend implement it.

    backend.reset()
    step = backend.feed(backend.encode_chat(messages))   # the prompt
    step.safety[-1]            # (K,) calibrated safety logits at the last prompt token
    token = sample(step.logits)                          # safety rows are -inf in step.logits
    step = backend.feed([token])
    backend.rewind(n)          # keep the first n tokens of the sequence, drop the rest

User text is encoded with special-token parsing off (localguard.encoding), so typing
"<|end|>" gives ordinary text tokens. The safety rows sit in the logits at `safety_ids`
(extra rows of the output matrix); `feed` returns them at -inf and the Guard masks them again
after any logit bias, so they are never sampled.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from localguard.errors import InputError

Sampler = Callable[[np.ndarray], int]


class Step(NamedTuple):
    """What one `feed` returns."""

    logits: np.ndarray  # (V,) float32 next-token logits after the last fed token, safety at -inf
    safety: np.ndarray  # (n, K) float64 calibrated safety logits at each fed token


@dataclass(frozen=True)
class HeadInfo:
    """The safety head as the Guard needs it: output names, thresholds in logit units (flag
    when logit >= threshold) and the guard defaults the model file carries, if any."""

    names: tuple[str, ...]
    thresholds: np.ndarray
    tau: int | None = None
    refusal_prefix: str | None = None

    @classmethod
    def absent(cls) -> HeadInfo:
        """A model without a safety head: the guard can only be off."""
        return cls((), np.zeros(0))

    def index(self, name: str) -> int:
        if name not in self.names:
            raise InputError(f"the head has no output {name!r}; it has {', '.join(self.names)}")
        return self.names.index(name)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 is greedy; top_p 1 and top_k 0 are off.
    logit_bias is added before the safety rows are masked, so it cannot unmask them."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 128
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # OpenAI's penalties: each reply token's logit is lowered by presence_penalty once it has
    # appeared in the reply and by frequency_penalty times its count there
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0 or not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            raise InputError(
                f"sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got "
                f"{self.temperature}, {self.top_p}, {self.top_k}"
            )
        if not (-2.0 <= self.presence_penalty <= 2.0 and -2.0 <= self.frequency_penalty <= 2.0):
            raise InputError("presence_penalty and frequency_penalty must lie in [-2, 2]")
        if self.max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, not {self.max_tokens}")


REPLY_BATCH = 8
"""Replies the stages that decode many (label, eval's targets without a head) ask
GuardBackend.replies for at a time: on 2 CPU cores llama.cpp wrote the SmolLM2 recipe's label
rows 1.66 times as fast as one after another from its F16 aligned model, 1.14 times from the
raw Q4_1 file (scripts/bench_label.py), and the evaluation's attacks 1.70 times as fast on its
raw Q4_K_M export (scripts/bench_eval.py)."""


class GuardBackend(abc.ABC):
    """One model + safety head + one sequence. Subclasses set `head`, `eos_ids`, `safety_ids`
    and `vocab_size` (size of the logits, safety rows included) and implement the methods."""

    head: HeadInfo
    eos_ids: frozenset[int]
    safety_ids: tuple[int, ...]
    vocab_size: int
    batches_replies: bool = False
    """Whether replies decodes its prompts side by side (faster), not one after another."""

    # --- text -------------------------------------------------------------------------------

    @abc.abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """Token ids of text with special-token parsing off (no BOS/EOS added)."""

    @abc.abstractmethod
    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True):
        """Token ids of a chat through the model's template; message text stays text."""

    @abc.abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """Text of token ids, control tokens left out."""

    # --- the sequence -------------------------------------------------------------------------

    _tokens: list[int]  # the sequence in the KV cache, kept by each backend

    @property
    def length(self) -> int:
        """Number of tokens in the KV cache."""
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        """The sequence in the KV cache."""
        return list(self._tokens)

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the sequence (empty the KV cache)."""

    @abc.abstractmethod
    def feed(self, tokens: Sequence[int], every: bool = True) -> Step:
        """Append tokens to the sequence; the next-token logits after the last one (safety rows
        at -inf) and the safety logits at each of them, or at the last one only when every is
        False (a prompt needs only its query verdict, and a backend may then skip the output
        matrix at the other positions)."""

    @abc.abstractmethod
    def rewind(self, length: int) -> None:
        """Keep the first `length` tokens of the sequence in the KV cache, drop the rest."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the model, its KV cache and anything held outside Python (llama.cpp's context);
        the backend is not used afterwards."""

    # --- unguarded replies, several at once ------------------------------------------------

    def replies(
        self,
        prompts: Sequence[Sequence[int]],
        samplings: Sequence[Sampling],
        ended: Callable[[int, list[int]], bool] | None = None,
    ) -> list[list[int]]:
        """The sampled tokens of an unguarded reply to each prompt (token ids, a forced reply
        start at their end), end-of-turn token left out: up to its sampling's max_tokens, or
        until ended(i, tokens so far) holds. For the stages that make data, not for users: no
        guard, no logit bias or penalties. This decodes them one after another; a backend
        that can decode many sequences in one batch does so (rounding may then differ)."""
        out, next_token = reply_steps(len(prompts), samplings, self.eos_ids, ended)
        for i, prompt in enumerate(prompts):
            self.reset()
            token = next_token(i, self.feed(prompt, every=False).logits)
            while token is not None:
                token = next_token(i, self.feed([token], every=False).logits)
        return out

    # --- sampling -----------------------------------------------------------------------------

    def sampler(self, sampling: Sampling) -> Sampler:
        """A function from (V,) logits to a token id; numpy unless a backend has its own. The
        Guard asks for it after reset and before the first feed, once per reply, so a backend
        may use it to draw the next token ahead of the Guard."""
        return numpy_sampler(sampling)

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of logits with the safety rows at -inf."""
        out = np.array(logits, dtype=np.float32, copy=True)
        out[..., np.array(self.safety_ids, np.intp)] = -np.inf
        return out


def reply_steps(
    count: int,
    samplings: Sequence[Sampling],
    eos_ids: frozenset[int],
    ended: Callable[[int, list[int]], bool] | None,
) -> tuple[list[list[int]], Callable[[int, np.ndarray], int | None]]:
    """(replies, next_token) for GuardBackend.replies: next_token(i, logits, safety rows
    masked) samples reply i's next token and appends it to replies[i], and returns it to be fed,
    or None once the reply has ended (end of turn, max_tokens or ended). numpy samplers, which
    apply no logit bias nor penalties."""
    if len(samplings) != count:
        raise ValueError("replies needs one sampling per prompt")
    if any(s.logit_bias or s.presence_penalty or s.frequency_penalty for s in samplings):
        raise InputError("unguarded batch replies take no logit_bias nor penalties")
    picks = [numpy_sampler(s) for s in samplings]
    out: list[list[int]] = [[] for _ in samplings]

    def next_token(i: int, logits: np.ndarray) -> int | None:
        token = picks[i](logits)
        if token in eos_ids:
            return None
        out[i].append(token)
        done = len(out[i]) >= samplings[i].max_tokens or (ended and ended(i, out[i]))
        return None if done else token

    return out, next_token


def numpy_sampler(sampling: Sampling) -> Sampler:
    """Greedy at temperature 0, else top-k, then top-p, then a categorical draw."""
    if sampling.temperature == 0:

        def greedy(logits: np.ndarray) -> int:
            return int(np.asarray(logits).argmax())  # no copy: argmax is exact in float32

        return greedy
    rng = np.random.default_rng(sampling.seed)

    def sample(logits: np.ndarray) -> int:
        x = np.asarray(logits, dtype=np.float64)
        x = x / sampling.temperature
        if 0 < sampling.top_k < x.size:
            kth = np.partition(x, -sampling.top_k)[-sampling.top_k]
            x = np.where(x >= kth, x, -np.inf)
        p = np.exp(x - x.max())
        p /= p.sum()
        if sampling.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            drop = order[cum - p[order] >= sampling.top_p]  # keep the smallest covering set
            p[drop] = 0.0
            p /= p.sum()
        return int(rng.choice(p.size, p=p))

    return sample
