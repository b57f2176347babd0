"""The MLX guard backend: an mlx-lm model (+ LoRA adapter) with its safety head baked in.

The head's rows are appended to the output matrix (head_train.bake_head), as the GGUF export
does, so one forward step gives the vocabulary logits and the K safety logits together; the
safety rows are set to -inf before sampling, which uses mlx-lm's own sampler. The KV cache is
mlx-lm's prompt cache; a rewind trims it (or, for a cache that cannot be trimmed, rebuilds it
from the kept tokens).

Decoding runs one step ahead, as mlx_lm.generate does: while a guarded run's sampler is active,
`feed` draws the next token on the device from the step's own logits and queues its forward
pass before handing the step to the Guard, so the device computes while Python judges. When the
Guard then picks that very draw (it always does, unless it added a logit bias or forces tokens),
the next `feed` finds the work done; otherwise the step ahead is dropped from the cache.

A CLS head (head train --mode cls, localguard/cls_token.py) is not baked: after each forward
step its verdicts come from a CLS pass over the KV cache (one row per fed token, reading the
query and the rule's window, one position past the newest token it reads), taken on the chosen
re-classification schedule; a token between re-checks carries the last verdict. The first feed
after a reset is the prompt: its user text is the query when it came from encode_chat, else
the whole prompt is. CLS mode keeps a plain KV cache on every block; it draws ahead too: a
step between re-checks costs no CLS pass, and a due one is computed with the step ahead (the
live verdicts before it are kept, and come back when that step is dropped).

    backend = MLXGuardBackend.load(model_dir, head_dir)
    result = localguard.guard.generate(backend, [{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import (
    KVCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)
from mlx_lm.sample_utils import make_sampler

from localguard.backends.base import GuardBackend, HeadInfo, Sampler, Sampling, Step
from localguard.backends.mlx import loading
from localguard.backends.mlx.head_train import bake_head, cache_cls_states
from localguard.backends.mlx.hidden import hidden_size, language_model, output_logits
from localguard.cls_token import (
    ClsState,
    LiveVerdicts,
    check_schedule,
    head_rule,
    row_positions,
    rows_mask,
)
from localguard.encoding import encode_chat, encode_text, hf_tokenizer, user_spans
from localguard.errors import InputError
from localguard.recipe import default
from localguard.safety_head import SafetyHead, check_head_matches, load_head

ADAPTER_FILE = "adapters.safetensors"


def load_with_head(model_dir: Path, head_dir: Path, adapter: Path | None = None):
    """(model, tokenizer, head): the head checked against the model; a stream head's own
    adapter (saved in its folder) is loaded with the model unless another adapter is given."""
    head = load_head(head_dir)
    check_head_matches(head, Path(model_dir))
    if adapter is None and (Path(head_dir) / ADAPTER_FILE).is_file():
        adapter = Path(head_dir)
    return (*load_model(model_dir, adapter), head)


def load_model(model_dir: Path, adapter: Path | None = None):
    """(model, tokenizer) through localguard's loading, with the adapter when one is given."""
    return loading.load_model(model_dir, adapter)


class _Ahead(NamedTuple):
    """A next token drawn on the device, with its forward pass queued."""

    token: mx.array  # the draw, a scalar
    masked: mx.array  # the step after feeding it, as _outputs returns it
    safety: mx.array
    drawn_from: np.ndarray  # the host logits the Guard will sample from (checked by identity)
    verdicts_before: LiveVerdicts | None  # a CLS head's live verdicts before the draw's


class _ClsReader(ClsState):
    """A CLS head's verdicts during generation (see the module docstring)."""

    def __init__(self, head: SafetyHead, schedule: str, period: int) -> None:
        super().__init__(head, head_rule(head), schedule, period)
        self.cls = mx.array(np.asarray(head.cls, np.float32))
        self.rows = mx.array(np.asarray(head.weight, np.float32))
        self.bias = mx.array(np.asarray(head.bias, np.float32))

    def verdicts(self, model: nn.Module, cache: list, count: int) -> np.ndarray:
        """(count, K) verdicts after each of the last `count` tokens in the cache; nan for a
        prompt token before the last (no verdict is taken inside the prompt)."""
        live = self.live
        length = cache[0].offset
        first = length - count + 1 - live.start  # reply tokens read by the first row
        if first < 0:
            inside = np.full((-first, self.rows.shape[0]), np.nan)
            return np.concatenate([inside, self.verdicts(model, cache, count + first)])
        # one pass over the rows the schedule wants; the others carry the last verdict
        wanted = [i for i in range(count) if live.wants(first + i)]
        logits: dict[int, np.ndarray] = {}
        if wanted:
            windows = live.windows(first, count)[wanted]
            mask = rows_mask(live.query, live.start, windows, length, len(wanted))
            positions = mx.array(row_positions(live.query, live.start, windows)[None])
            cls = self.cls.astype(cache[0].keys.dtype)
            states = cache_cls_states(model, cache, cls, positions, mx.array(mask[None, None]))
            rows = (states.astype(mx.float32) @ self.rows.T) + self.bias
            logits = dict(zip(wanted, np.array(rows, np.float64), strict=True))
        return np.stack([live.take(first + i, logits.get(i)) for i in range(count)])


class MLXGuardBackend(GuardBackend):
    """One mlx-lm model with a baked safety head and one sequence in its KV cache."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        head: SafetyHead | None,
        cls_schedule: str = default("guard", "cls_schedule"),
        cls_period: int = default("guard", "cls_period"),
    ) -> None:
        """head None: a model without a safety head (no rows; the guard can only be off). A CLS
        head's verdicts are re-checked on cls_schedule (localguard/cls_token.py: due)."""
        self.model, self.tokenizer = model, tokenizer
        self._hf = hf_tokenizer(tokenizer)
        if getattr(model, "_localguard_head_baked", False):
            raise InputError("this model already has a safety head baked in; load it afresh")
        check_schedule(cls_schedule, cls_period)
        self._cls = None
        if head is not None and head.cls is not None:
            self._cls = _ClsReader(head, cls_schedule, cls_period)
        if head is None or self._cls is not None:
            d = hidden_size(model)
            first = int(output_logits(model, mx.zeros((1, 1, d))).shape[-1])
            none = np.zeros(0, np.float32)
            head = head or SafetyHead([], np.zeros((0, d), np.float32), none, none)
        else:
            first = bake_head(model, head)  # in place: the model now has K more output rows
            model._localguard_head_baked = True
        k = 0 if self._cls else len(head.names)  # rows in the output matrix
        self._first = first
        hide = np.zeros(first + k, np.float32)
        hide[first:] = -np.inf
        self._hide = mx.array(hide)  # added to the logits: the safety rows at -inf
        self._bias = mx.array(np.asarray(head.bias, np.float32))
        self._rows = mx.array(np.asarray(head.weight, np.float32))
        self.safety_ids = tuple(range(first, first + k))
        self.vocab_size = first + k
        guard = head.metadata.get("guard") or {}
        self.head = HeadInfo(
            tuple(head.names),
            np.asarray(head.thresholds, np.float64),
            tau=guard.get("tau"),
            refusal_prefix=guard.get("refusal_prefix"),
        )
        self.eos_ids = frozenset(int(t) for t in tokenizer.eos_token_ids)
        self._tokens: list[int] = []
        self._cache = self._new_cache()
        self._draw: Callable[[mx.array], mx.array] | None = None  # the active run's sampler
        self._ahead: _Ahead | None = None

    @classmethod
    def load(
        cls, model_dir: Path, head_dir: Path | None, adapter: Path | None = None, **cls_options
    ) -> MLXGuardBackend:
        """head_dir None: the model (+ adapter) alone, for guard-off generation; cls_options:
        cls_schedule and cls_period, for a CLS head."""
        if head_dir is not None:
            return cls(*load_with_head(model_dir, head_dir, adapter), **cls_options)
        return cls(*load_model(model_dir, adapter), None)

    def _new_cache(self) -> list:
        """mlx-lm's prompt cache; for a CLS head a plain KVCache on every block, which keeps
        every position the CLS pass reads (the blocks' masks keep their sliding windows)."""
        if self._cls is None:
            return make_prompt_cache(self.model)
        return [KVCache() for _ in language_model(self.model).model.layers]

    # --- text ---

    def encode_text(self, text: str) -> list[int]:
        return encode_text(self._hf, text)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True):
        ids = encode_chat(self._hf, messages, add_generation_prompt)
        if self._cls is not None and add_generation_prompt:  # the query a prompt feed reads
            self._cls.prompt = (tuple(ids), user_spans(self._hf, messages))
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        return self._hf.decode([int(t) for t in tokens], skip_special_tokens=True)

    # --- the sequence ---

    def reset(self) -> None:
        self._cache = self._new_cache()
        self._tokens = []
        self._draw = self._ahead = None

    def _forward(self, ids: list[int] | mx.array) -> mx.array:
        """Final hidden states of ids appended to the cache: (1, n, D)."""
        inputs = ids.reshape(1, -1) if isinstance(ids, mx.array) else mx.array([ids])
        return language_model(self.model).model(inputs, cache=self._cache)

    def _outputs(self, ids: list[int] | mx.array, every: bool) -> tuple[mx.array, mx.array]:
        """(masked next-token logits, safety logits) of ids appended to the cache, lazily."""
        hidden = self._forward(ids)
        last = output_logits(self.model, hidden[:, -1:, :])[0, 0].astype(mx.float32)
        if self._cls is not None:
            if not self._tokens:
                self._cls.begin(list(ids))
            count = hidden.shape[1] if every else 1
            safety = self._cls.verdicts(self.model, self._cache, count)
            return last + self._hide, mx.array(safety.astype(np.float32))
        # the last position's safety logits come from the baked rows of this very forward
        safety = (last[self._first :] + self._bias)[None]
        if every and hidden.shape[1] > 1:
            rest = (hidden[0, :-1].astype(mx.float32) @ self._rows.T) + self._bias
            safety = mx.concatenate([rest, safety], axis=0)
        return last + self._hide, safety

    def feed(self, tokens: Sequence[int], every: bool = True) -> Step:
        ids = [int(t) for t in tokens]
        if not ids:
            raise InputError("feed needs at least one token")
        bad = [t for t in ids if not 0 <= t < self._first]
        if bad:
            raise InputError(f"token id {bad[0]} is not a vocabulary token (safety row or beyond)")
        ahead = self._ahead
        if ahead is not None and ids == [int(ahead.token.item())]:
            masked, safety = ahead.masked, ahead.safety  # queued by the previous feed
            self._ahead = None
        else:
            self._drop_ahead()
            masked, safety = self._outputs(ids, every)
        self._tokens += ids
        # (the cache's new entries are inputs of these outputs, so they are evaluated too)
        if self._draw is not None and ids[-1] not in self.eos_ids and self._can_trim():
            token = self._draw(masked)
            mx.async_eval(token)  # on its own, so that reading it waits for this step only
            before = None if self._cls is None else dataclasses.replace(self._cls.live)
            nxt = self._outputs(token, every=True)  # a due CLS verdict is computed here
            mx.async_eval(*nxt)
            logits = np.array(masked, np.float32)
            self._ahead = _Ahead(token, *nxt, logits, before)
        else:
            mx.eval(masked, safety)
            logits = np.array(masked, np.float32)
        return Step(logits, np.array(safety, np.float64))

    def _can_trim(self) -> bool:
        return can_trim_prompt_cache(self._cache)

    def _drop_ahead(self) -> None:
        """Remove the queued step's token, if any, from the cache (rebuild it where it cannot
        be trimmed), and a CLS head's verdict on it."""
        ahead = self._ahead
        if ahead is None:
            return
        self._ahead = None
        if ahead.verdicts_before is not None:
            self._cls.live = ahead.verdicts_before
        if not (self._can_trim() and trim_prompt_cache(self._cache, 1) == 1):
            self._rebuild(self._tokens)

    def _rebuild(self, kept: list[int]) -> None:
        """A fresh cache holding kept (for a cache that cannot be trimmed, e.g. a rotating
        cache that has wrapped)."""
        self._cache, self._tokens = self._new_cache(), []
        if kept:
            self._forward(kept)
            mx.eval([c.state for c in self._cache])
            self._tokens = kept

    def close(self) -> None:
        self._drop_ahead()
        self._cache = []
        self._tokens = []
        mx.clear_cache()

    def rewind(self, length: int) -> None:
        if not 0 <= length <= len(self._tokens):
            raise ValueError(f"cannot rewind to {length}: the sequence has {self.length} tokens")
        self._drop_ahead()
        drop = len(self._tokens) - length
        if drop == 0:
            return
        kept = self._tokens[:length]
        if self._cls is not None and self._cls.live is not None:
            self._cls.live.rewind(length - self._cls.live.start)
        if self._can_trim():
            trimmed = trim_prompt_cache(self._cache, drop)
            if trimmed != drop:
                raise RuntimeError(f"the KV cache trimmed {trimmed} tokens, not {drop}")
            self._tokens = kept
            return
        self._rebuild(kept)

    # --- sampling ---

    def sampler(self, sampling: Sampling) -> Sampler:
        """mlx-lm's sampler (greedy at temperature 0) on the given logits. It becomes the
        sequence's sampler until the next reset, so feed draws one step ahead with it; a logit
        bias changes the Guard's draw, so then nothing is drawn ahead."""
        top_p = sampling.top_p if sampling.top_p < 1.0 else 0.0
        chosen = make_sampler(sampling.temperature, top_p=top_p, top_k=sampling.top_k)
        if sampling.seed is not None:
            mx.random.seed(sampling.seed)

        def draw(x: mx.array) -> mx.array:
            if sampling.temperature == 0:
                return mx.argmax(x)  # what mlx-lm's greedy sampler does, without normalizing
            return chosen((x - mx.logsumexp(x, keepdims=True))[None])[0]

        self._draw = None if sampling.logit_bias else draw

        def sample(logits: np.ndarray) -> int:
            ahead = self._ahead
            if ahead is not None and logits is ahead.drawn_from:
                return int(ahead.token.item())  # drawn from these very logits, already
            return int(draw(mx.array(np.asarray(logits, np.float32))).item())

        return sample
