"""Train the explicit safety head in MLX: probe mode (frozen model), stream mode (with LoRA) and
cls mode (with LoRA, the head reading a CLS token: localguard/cls_token.py, two passes below).

Both start the same way: the head is fitted as a logistic probe on the frozen model's final
hidden states (seconds). Stream mode then trains it jointly with LoRA on the same
conversations: loss = SFT + gamma * BCE, where the SFT term covers only replies labeled benign
(answers and refusals; a harmful continuation is never a target) and the BCE term covers every
position from the last prompt token on; beta > 0 adds beta * KL(start || model) at the SFT
targets, start the policy training began from (HeadObjective). Both end the same way: Platt
scaling folded into the rows and thresholds set on a validation split
(localguard/safety_head.py).

With task data (head train --task-data), its conversations are simply added to the training
conversations (query 0, response 0), so batches draw from both in proportion to their sizes:
the SFT term keeps rehearsing the task the adapter learned and the BCE term sees its prompts as
benign, with no mixing ratio to tune (a fifth of the rows on the starter world kept the task).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import create_causal_mask

from localguard.backends.mlx import lora_train as lt
from localguard.backends.mlx.hidden import (
    final_hidden,
    hidden_size,
    language_model,
)
from localguard.cls_token import (
    ClsRule,
    LiveVerdicts,
    cls_mask,
    head_rule,
    query_columns,
    query_spans,
    row_positions,
    rows_mask,
    verdict_count,
)
from localguard.conversations import Conversation
from localguard.errors import InputError
from localguard.probe import STD_FLOOR
from localguard.safety_head import OUTPUTS, SafetyHead
from localguard.stats import fit_logistic

POSITIONS_PER_CONVERSATION = 24  # response positions sampled per conversation for the probe fit
PROBE_L2 = 1.0


def _padded(convs: Sequence[Conversation], multiple: int = 1) -> np.ndarray:
    width = max(len(c.tokens) for c in convs)
    width = -(-width // multiple) * multiple
    tokens = np.zeros((len(convs), width), np.int32)
    for k, c in enumerate(convs):
        tokens[k, : len(c.tokens)] = c.tokens
    return tokens


def reply_states(
    model: nn.Module,
    convs: Sequence[Conversation],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, final hidden states at positions start - 1 .. len - 1) for each conversation,
    computed in length-sorted batches (causal attention keeps padding out of real tokens)."""
    order = sorted(range(len(convs)), key=lambda i: len(convs[i].tokens))
    for first in range(0, len(order), batch_size):
        chosen = order[first : first + batch_size]
        states = final_hidden(model, mx.array(_padded([convs[i] for i in chosen])))
        states = np.array(states.astype(mx.float32))
        for row, i in enumerate(chosen):
            c = convs[i]
            yield i, states[row, c.start - 1 : len(c.tokens)]
        if progress is not None:
            progress(len(chosen))


def teacher_traces(
    model: nn.Module, head: SafetyHead, convs: Sequence[Conversation], batch_size: int = 16
) -> list[np.ndarray]:
    """The head's logits at positions start - 1 .. len - 1 of each conversation; a CLS head's
    verdicts after 0 .. n reply tokens (the same rows) read the windows the labels give, as in
    training: what calibration (before there are thresholds) and export parity read."""
    out: list[np.ndarray] = [np.zeros(0)] * len(convs)
    for i, states in state_reader(head.cls, head_rule(head))(model, convs, batch_size):
        out[i] = head.logits(states)
    return out


def traces(
    model: nn.Module, head: SafetyHead, convs: Sequence[Conversation], batch_size: int = 16
) -> list[np.ndarray]:
    """What a guard reading the head sees on each conversation: teacher_traces, but a CLS
    head's windows are the ones generation gives them (live_cls_trace)."""
    if head.cls is None:
        return teacher_traces(model, head, convs, batch_size)
    return [live_cls_trace(model, head, conv) for conv in convs]


def live_cls_trace(model: nn.Module, head: SafetyHead, conv: Conversation) -> np.ndarray:
    """A CLS head's calibrated verdicts after 0 .. n reply tokens with generation's windows
    (cls_token.LiveVerdicts, re-checked every step): its first verdict and turning point come
    from its own verdicts at its thresholds, not from the labels. Three CLS passes at most:
    the query's, the reply's under the windows so far, and the rest after a turning point."""
    q, r = head.index("query"), head.index("response")
    query = query_columns(conv)
    live = LiveVerdicts(
        head_rule(head),
        query_spans(conv),
        conv.start,
        (q, r),
        (float(head.thresholds[q]), float(head.thresholds[r])),
    )
    _, kept = _token_pass(model, mx.array([conv.tokens]))
    cls = mx.array(np.asarray(head.cls, np.float32))

    def verdicts(first: int, count: int) -> np.ndarray:
        windows = live.windows(first, count)
        mask = rows_mask(query, conv.start, windows, len(conv.tokens), count)
        positions = row_positions(query, conv.start, windows)
        states = _cls_pass(model, kept, cls, mx.array(positions[None]), mx.array(mask[None, None]))
        return head.logits(np.array(states[0].astype(mx.float32)))

    rows = [live.take(0, verdicts(0, 1)[0])]
    n = len(conv.tokens) - conv.start
    pending = verdicts(1, n) if n else np.zeros((0, len(head.names)))
    for t in range(1, n + 1):
        rows.append(live.take(t, pending[t - 1]))
        if live.turn == t - 1 and t < n:  # the windows change from here on
            pending = np.r_[pending[:t], verdicts(t + 1, n - t)]
    return np.stack(rows)


StateReader = Callable[..., Iterator[tuple[int, np.ndarray]]]


def state_reader(cls: np.ndarray | None, rule: ClsRule | None) -> StateReader:
    """reply_states, or cls_states for a CLS vector and its rule: (model, convs, batch_size,
    progress) -> (index, (n + 1, D) states) per conversation."""
    return reply_states if cls is None else partial(cls_states, cls=cls, rule=rule)


def _sample_positions(conv: Conversation, rng: np.random.Generator) -> np.ndarray:
    """Reply positions (relative to start - 1) for the probe fit: the onset and its neighbours
    always, the rest sampled."""
    n = len(conv.tokens) - conv.start
    every = np.arange(1, n + 1)
    if n <= POSITIONS_PER_CONVERSATION:
        return every
    keep = {1, n}
    if conv.onset >= 0:
        at = conv.onset - conv.start + 1
        keep |= {p for p in (at - 1, at, at + 1) if 1 <= p <= n}
    rest = np.setdiff1d(every, list(keep))
    extra = rng.choice(rest, POSITIONS_PER_CONVERSATION - len(keep), replace=False)
    return np.sort(np.concatenate([list(keep), extra]))


def _fit_row(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression on standardized features, returned in raw-feature units."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > STD_FLOOR, std, 1.0)
    w, b = fit_logistic((x - mean) / std, y, PROBE_L2)
    return w / std, float(b - (w / std) @ mean)


def fit_probe_head(
    model: nn.Module,
    convs: Sequence[Conversation],
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    states_of: StateReader = reply_states,
) -> SafetyHead:
    """Query and response rows fitted on the frozen model's final hidden states (uncalibrated;
    a CLS head's on its CLS states: states_of = state_reader(cls, rule))."""
    rng = np.random.default_rng(seed)
    query_x, query_y, resp_x, resp_y = [], [], [], []
    for i, states in states_of(model, convs, progress=progress):
        conv = convs[i]
        query_x.append(states[0])
        query_y.append(conv.query)
        picked = _sample_positions(conv, rng)
        resp_x.append(states[picked])
        resp_y.append(conv.response_labels[picked - 1])
    rows = [
        _fit_row(np.stack(query_x).astype(np.float64), np.array(query_y)),
        _fit_row(np.concatenate(resp_x).astype(np.float64), np.concatenate(resp_y)),
    ]
    weight = np.stack([w for w, _ in rows]).astype(np.float32)
    bias = np.array([b for _, b in rows], np.float32)
    return SafetyHead(list(OUTPUTS), weight, bias, np.zeros(len(OUTPUTS)))


# --- stream mode ------------------------------------------------------------------------------


class HeadBatch(NamedTuple):
    tokens: mx.array  # (B, L) right-padded
    starts: mx.array  # first reply token
    lengths: mx.array
    onsets: mx.array  # first harmful token, or a large number
    queries: mx.array  # query label per row
    sft_states: mx.array  # the states whose next token is an SFT target (sft_targets)
    sft_weights: mx.array


def sft_targets(convs: Sequence[Conversation], width: int) -> tuple[np.ndarray, np.ndarray]:
    """lora_train.target_states of the SFT targets: the reply tokens of the rows whose reply is
    not harmful (refusals and benign answers) within the batch's width, about a quarter of its
    positions on localguard label's rows."""
    spans = [(c.start, min(len(c.tokens), width)) if c.response == 0 else (0, 0) for c in convs]
    return lt.target_states(spans, width - 1)


def head_batch(convs: Sequence[Conversation], max_len: int) -> HeadBatch:
    tokens = _padded(convs, lt.PAD_MULTIPLE)[:, :max_len]
    never = tokens.shape[1] + 1
    states, weights = sft_targets(convs, tokens.shape[1])
    return HeadBatch(
        tokens=mx.array(tokens),
        starts=mx.array([c.start for c in convs]),
        lengths=mx.array([len(c.tokens) for c in convs]),
        onsets=mx.array([c.onset if c.onset >= 0 else never for c in convs]),
        queries=mx.array([float(c.query) for c in convs]),
        sft_states=mx.array(states),
        sft_weights=mx.array(weights),
    )


def _bce(logits: mx.array, labels: mx.array, mask: mx.array) -> mx.array:
    loss = nn.losses.binary_cross_entropy(logits, labels, with_logits=True, reduction="none")
    return (loss * mask).sum() / mx.maximum(mask.sum(), 1.0)


def _sft(
    model: nn.Module, hidden: mx.array, batch: HeadBatch, ref: lt.Reference | None
) -> tuple[mx.array, mx.array, mx.array]:
    """(SFT target tokens, their mean NLL, their mean KL(ref || model), 0 without ref): the
    tokens of the replies that are not harmful."""
    states = hidden[:, :-1]
    lse, target = lt.target_logits(model, states, batch.tokens[:, 1:], batch.sft_states)
    weights = batch.sft_weights
    tokens = weights.sum()
    nll_mean = ((lse - target) * weights).sum() / mx.maximum(tokens, 1.0)
    if ref is None:
        return tokens, nll_mean, mx.array(0.0)
    chosen = states.reshape(-1, states.shape[-1])[batch.sft_states]
    kl = lt.policy_kl(model, ref, chosen, lse)
    return tokens, nll_mean, (kl * weights).sum() / mx.maximum(tokens, 1.0)


def _outputs_bce(
    safety: mx.array, first: mx.array, end: mx.array, onset: mx.array, queries: mx.array
) -> mx.array:
    """Mean BCE of the two outputs over rows j of safety (B, J, 2): the query output at rows
    first .. end - 1 (its label every row), the response output at rows first + 1 .. end - 1,
    labeled 1 from row onset on."""
    j = mx.arange(safety.shape[1])[None, :]
    inside = j < end[:, None]
    query_mask = ((j >= first[:, None]) & inside).astype(mx.float32)
    reply_mask = ((j > first[:, None]) & inside).astype(mx.float32)
    query_labels = mx.broadcast_to(queries[:, None], query_mask.shape)
    reply_labels = (j >= onset[:, None]).astype(mx.float32)
    return (
        _bce(safety[..., 0], query_labels, query_mask)
        + _bce(safety[..., 1], reply_labels, reply_mask)
    ) / 2


class Weights(NamedTuple):
    """The loss terms' weights: loss = SFT + gamma * BCE + beta * KL."""

    gamma: float
    beta: float = 0.0


def head_loss(
    model: nn.Module, batch: HeadBatch, weights: Weights, ref: lt.Reference | None = None
) -> tuple[mx.array, ...]:
    """(loss, SFT target tokens, SFT NLL, BCE, KL): SFT on benign replies + gamma * BCE of both
    outputs at their positions (see localguard/conversations.py) + beta * KL(ref || model) at
    the SFT targets, ref the policy training started from (see HeadObjective)."""
    hidden = final_hidden(model, batch.tokens)
    tokens, nll_mean, kl = _sft(model, hidden, batch, ref)
    safety = getattr(model, lt.HEAD_MODULE)(hidden).astype(mx.float32)
    bce = _outputs_bce(safety, batch.starts - 1, batch.lengths, batch.onsets, batch.queries)
    return nll_mean + weights.gamma * bce + weights.beta * kl, tokens, nll_mean, bce, kl


def cls_loss(
    model: nn.Module,
    batch: HeadBatch,
    rows: tuple[mx.array, mx.array],
    weights: Weights,
    ref: lt.Reference | None = None,
) -> tuple[mx.array, ...]:
    """head_loss for CLS mode: SFT (and KL) from the tokens' pass, BCE of the head on the CLS
    verdicts (row t: after t reply tokens) from the CLS pass; rows: cls_masks' mask and
    positions."""
    hidden, kept = _token_pass(model, batch.tokens)
    tokens, nll_mean, kl = _sft(model, hidden, batch, ref)
    layer = getattr(model, lt.HEAD_MODULE)
    mask, positions = rows
    states = _cls_pass(model, kept, layer.cls.astype(hidden.dtype), positions, mask)
    safety = layer(states).astype(mx.float32)
    first = mx.zeros_like(batch.starts)
    rows = batch.starts - 1  # token j is verdict row j - rows
    bce = _outputs_bce(safety, first, batch.lengths - rows, batch.onsets - rows, batch.queries)
    return nll_mean + weights.gamma * bce + weights.beta * kl, tokens, nll_mean, bce, kl


@dataclass
class HeadObjective:
    """Stream- or CLS-mode training of LoRA + head for lora_train.run_training. With
    weights.beta > 0 the KL term holds the policy to `start`, the adapter tensors training
    started from (a fine-tune's adapter: the head stage then keeps what the fine-tune left)."""

    convs: Sequence[Conversation]
    spec: lt.TrainSpec
    weights: Weights
    rule: ClsRule | None = None  # CLS mode's windows; None: stream mode
    start: dict[str, mx.array] = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lengths = np.array([min(len(c.tokens), self.spec.max_seq_length) for c in self.convs])

    def loss(self, model: nn.Module, batch: HeadBatch, rows, ref: lt.Reference | None):
        if rows is None:
            return head_loss(model, batch, self.weights, ref)
        return cls_loss(model, batch, rows, self.weights, ref)

    def inputs(self, model: nn.Module, index: int, rows: np.ndarray, mine: slice):
        convs = [self.convs[i] for i in rows[mine]]
        batch = head_batch(convs, self.spec.max_seq_length)
        windows = None if self.rule is None else cls_masks(convs, self.rule, batch.tokens.shape[1])
        ref = None
        if self.weights.beta > 0:
            policy = partial(lt.adapters_at, model, self.start)
            ref = lt.reference(model, batch, policy, batch.sft_states)
        return (batch, windows, ref), np.zeros(0)

    def metrics(self, sums: np.ndarray, host: np.ndarray, micro: int, size: int) -> dict:
        nll, bce, kl = sums / (micro * size)
        return {"nll": nll, "bce": bce, **({"kl": kl} if self.weights.beta > 0 else {})}

    def validate(self, model: nn.Module) -> dict:
        return {}


def attach_head(model: nn.Module, head: SafetyHead) -> None:
    """Make the head a trainable submodule, so it gets gradients with the LoRA layers (a CLS
    head's input vector with it)."""
    layer = nn.Linear(hidden_size(model), len(head.names))
    layer.weight = mx.array(head.weight)
    layer.bias = mx.array(head.bias)
    if head.cls is not None:
        layer.cls = mx.array(head.cls)
    setattr(model, lt.HEAD_MODULE, layer)


def detach_head(model: nn.Module, like: SafetyHead) -> SafetyHead:
    """The trained rows back as an (uncalibrated) SafetyHead; the model loses the submodule."""
    layer = getattr(model, lt.HEAD_MODULE)
    weight = np.array(layer.weight.astype(mx.float32))
    bias = np.array(layer.bias.astype(mx.float32))
    cls = np.array(layer.cls.astype(mx.float32)) if "cls" in layer else None
    model.pop(lt.HEAD_MODULE)
    names, thresholds = list(like.names), np.zeros(len(like.names))
    return SafetyHead(names, weight, bias, thresholds, dict(like.metadata), cls)


# --- cls mode: two passes --------------------------------------------------------------------
# mlx-lm's blocks take their mask from cache.make_mask and their rotary offset from
# cache.offset, so a cache object per block is all it takes to run the CLS rows: the tokens'
# pass keeps every block's keys and values; the CLS pass lets each verdict row read those keys
# and its own through the rule's mask, and stores nothing. Its rows sit at their own positions
# (cls_token.row_positions), which a rotary offset per sequence cannot say: each attention's
# rope is stood in for by _RowRoPE during the pass.


class _KeptKV:
    """The tokens' pass cache for one block: keeps its keys and values (causal, offset 0)."""

    offset = 0

    def __init__(self) -> None:
        self.keys = self.values = None

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = keys, values
        return keys, values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        if return_array or (window_size and n > window_size):
            return create_causal_mask(n, window_size=window_size)
        return "causal"


class _ClsKV:
    """The CLS pass cache for one block: rows over the kept keys and their own (the rule's
    mask on every block, sliding-window ones included)."""

    def __init__(self, kept: _KeptKV, offset: mx.array, mask: mx.array) -> None:
        self.kept, self.offset, self.mask = kept, offset, mask

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        keys = mx.concatenate([self.kept.keys, keys], axis=2)
        return keys, mx.concatenate([self.kept.values, values], axis=2)

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        return self.mask


class _ClsInput(nn.Module):
    """Stands in for the input embedding during the CLS pass: every row is the CLS vector."""

    def __init__(self, vector: mx.array) -> None:
        super().__init__()
        self._vector = [vector]  # in a list: not a parameter of this stand-in

    def __call__(self, ids: mx.array) -> mx.array:
        vector = self._vector[0]
        return mx.broadcast_to(vector, (*ids.shape, vector.shape[-1]))


def _token_pass(model: nn.Module, tokens: mx.array) -> tuple[mx.array, list[_KeptKV]]:
    """Final hidden states of the tokens (exactly final_hidden's) and every block's keys."""
    inner = language_model(model).model
    kept = [_KeptKV() for _ in inner.layers]
    return inner(tokens, cache=kept), kept


class _RowRoPE(nn.Module):
    """Stands in for an attention's rope during the CLS pass: row v of sequence b at
    positions[b, v] (the model's own rope, with one offset per row)."""

    def __init__(self, rope: nn.Module, positions: mx.array) -> None:
        super().__init__()
        self._parts = [rope, positions]  # in a list: not parameters of this stand-in

    def __call__(self, x: mx.array, offset=None) -> mx.array:
        rope, positions = self._parts
        b, h, v, d = x.shape
        rows = x.transpose(0, 2, 1, 3).reshape(b * v, h, 1, d)
        rows = rope(rows, offset=positions.reshape(-1))
        return rows.reshape(b, v, h, d).transpose(0, 2, 1, 3)


def _attentions(inner: nn.Module) -> list[nn.Module]:
    """Every block's attention module (mlx-lm names it self_attn, and its rope rope)."""
    found = [getattr(layer, "self_attn", None) for layer in inner.layers]
    if any(a is None or not hasattr(a, "rope") for a in found):
        raise InputError("CLS mode needs attention modules with a rotary embedding (rope)")
    return found


def _cls_pass(
    model: nn.Module,
    kept: list[_KeptKV],
    cls: mx.array,
    positions: mx.array,
    mask: mx.array,
) -> mx.array:
    """Final CLS states (B, V, D) of verdict rows 0 .. V - 1 at positions (B, V) under mask
    (B, 1, V, W + V)."""
    inner = language_model(model).model
    caches = [_ClsKV(k, positions[:, 0], mask) for k in kept]
    embed, attentions = inner.embed_tokens, _attentions(inner)
    ropes = [a.rope for a in attentions]
    inner.embed_tokens = _ClsInput(cls)
    for a in attentions:
        a.rope = _RowRoPE(a.rope, positions)
    try:
        return inner(mx.zeros(mask.shape[::2], mx.int32), cache=caches)
    finally:
        inner.embed_tokens = embed
        for a, rope in zip(attentions, ropes, strict=True):
            a.rope = rope


def cls_masks(
    convs: Sequence[Conversation], rule: ClsRule, width: int
) -> tuple[mx.array, mx.array]:
    """(B, 1, V, width + V) masks and (B, V) positions of a batch's verdict rows, V the most
    verdicts rounded up for the compiler."""
    rows = max(verdict_count(c) for c in convs)
    rows = -(-rows // lt.PAD_MULTIPLE) * lt.PAD_MULTIPLE
    masks, positions = zip(*(cls_mask(c, rule, width, rows) for c in convs), strict=True)
    return mx.array(np.stack(masks)[:, None]), mx.array(np.stack(positions))


def cls_states(
    model: nn.Module,
    convs: Sequence[Conversation],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    *,
    cls: np.ndarray,
    rule: ClsRule,
) -> Iterator[tuple[int, np.ndarray]]:
    """reply_states for CLS mode: (index, final CLS states of the verdicts after 0 .. n reply
    tokens) for each conversation, in length-sorted batches."""
    order = sorted(range(len(convs)), key=lambda i: len(convs[i].tokens))
    for first in range(0, len(order), batch_size):
        chosen = order[first : first + batch_size]
        batch = [convs[i] for i in chosen]
        tokens = mx.array(_padded(batch))
        hidden, kept = _token_pass(model, tokens)
        mask, positions = cls_masks(batch, rule, tokens.shape[1])
        states = _cls_pass(model, kept, mx.array(cls).astype(hidden.dtype), positions, mask)
        states = np.array(states.astype(mx.float32))
        for row, i in enumerate(chosen):
            yield i, states[row, : verdict_count(convs[i])]
        if progress is not None:
            progress(len(chosen))


def embedding_mean(model: nn.Module, chunk: int = 4096) -> np.ndarray:
    """The mean input embedding: a new token's starting vector (the CLS token's)."""
    embed = language_model(model).model.embed_tokens
    count = getattr(embed, "num_embeddings", None) or embed.weight.shape[0]
    total = mx.zeros((hidden_size(model),), mx.float32)
    for first in range(0, count, chunk):
        ids = mx.arange(first, min(count, first + chunk))
        total = total + embed(ids).astype(mx.float32).sum(axis=0)
        mx.eval(total)
    return np.array(total / count)


# --- baked rows -------------------------------------------------------------------------------


def bake_head(model: nn.Module, head: SafetyHead) -> int:
    """Append the head's rows to the output matrix in place (the shared embedding matrix of a
    tied model); returns the first extra logit's index. logits[..., first + k] + bias[k] is
    then output k. The GGUF export does the same in the file; the rows' input embeddings are
    never used, because no text ever encodes to those ids."""
    lm = language_model(model)
    args = getattr(lm, "args", None)
    tied = getattr(lm, "tie_word_embeddings", getattr(args, "tie_word_embeddings", False))
    layer = lm.model.embed_tokens if tied or "lm_head" not in lm else lm.lm_head
    if not hasattr(layer, "weight") or "scales" in layer:
        raise InputError("baking the safety head needs a full-precision output layer")
    rows = mx.array(head.weight).astype(layer.weight.dtype)
    first = layer.weight.shape[0]
    layer.weight = mx.concatenate([layer.weight, rows], axis=0)
    return first


def cache_cls_states(
    model: nn.Module, cache: list, cls: mx.array, positions: mx.array, mask: mx.array
) -> mx.array:
    """CLS states (V, D) over a generation's KV caches (mlx-lm KVCache, one per block) of L
    tokens: rows at positions (1, V) under mask (1, 1, V, L + V). The caches are read, never
    written."""
    kept = []
    for c in cache:
        k = _KeptKV()
        k.keys, k.values = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
        kept.append(k)
    return _cls_pass(model, kept, cls, positions, mask)[0]
