"""Prompt activations from any mlx-lm model, without per-architecture code.

The probe reads the residual stream: the outputs of some transformer blocks over the prompt
tokens, mean-pooled. mlx-lm has no hook API, so each chosen block is swapped for a thin wrapper
that records its output and calls the original; the originals always come back afterwards. MLX is
lazy: only the captured states are evaluated, so blocks after the last chosen one and the LM head
never run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from localguard.errors import InputError


def language_model(model: nn.Module) -> nn.Module:
    """The text model inside a multimodal wrapper, or the model itself."""
    return getattr(model, "language_model", model)


def _blocks(model: nn.Module) -> list:
    """The list of transformer blocks (mutable in place: the inner model iterates over it)."""
    return language_model(model).model.layers


def final_hidden(model: nn.Module, inputs: mx.array) -> mx.array:
    """The final normalized hidden states: the vectors the LM head reads (and the safety head)."""
    return language_model(model).model(inputs)


def output_logits(model: nn.Module, hidden: mx.array) -> mx.array:
    """The LM head applied to final hidden states, as the model's own __call__ does."""
    lm = language_model(model)
    args = getattr(lm, "args", None)
    tied = getattr(lm, "tie_word_embeddings", getattr(args, "tie_word_embeddings", False))
    if tied or "lm_head" not in lm:
        return lm.model.embed_tokens.as_linear(hidden)
    return lm.lm_head(hidden)


def layer_count(model: nn.Module) -> int:
    """Number of transformer blocks."""
    return len(_blocks(model))


def default_layers(n_layers: int) -> list[int]:
    """The middle third of the blocks: indices n // 3 up to (2 * n) // 3, exclusive, at least one.

    For 32 blocks that is 10..20, for 24 it is 8..15, for 2 it is block 0.
    """
    start = n_layers // 3
    return list(range(start, max(start + 1, (2 * n_layers) // 3)))


def resolve_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Sorted distinct block indices; negative ones count from the end like Python's."""
    if layers is None:
        return default_layers(n_layers)
    if not layers:
        raise InputError("layers: at least one layer index is needed")
    bad = [i for i in layers if not -n_layers <= i < n_layers]
    if bad:
        raise InputError(f"layers: {bad} out of range for a model with {n_layers} blocks")
    return sorted({i % n_layers for i in layers})


class _Recorder(nn.Module):
    """Stands in for one block: calls it and hands its hidden-state output to `record`."""

    def __init__(self, block: nn.Module, record: Callable[[mx.array], None]):
        super().__init__()
        self.block = block
        self._record = record  # a plain callable, kept out of the module's parameter tree

    def __call__(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        self._record(out[0] if isinstance(out, tuple) else out)
        return out

    def __getattr__(self, key: str):
        """Forward attribute reads (`use_sliding`, `self_attn`, ...) to the wrapped block."""
        if key in self:
            return self[key]
        block = self.get("block")
        if block is None:
            raise AttributeError(key)
        return getattr(block, key)


def _pool(states: list[mx.array], mask: mx.array, lengths: mx.array) -> mx.array:
    """Mean over real tokens of each row, then mean over layers: (B, hidden) float32."""
    total = None
    for h in states:
        pooled = (h.astype(mx.float32) * mask).sum(axis=1) / lengths
        total = pooled if total is None else total + pooled
    return total / len(states)


def _batch_features(model: nn.Module, batch: list[list[int]], chosen: list[int]) -> np.ndarray:
    """Features of one right-padded batch; causal attention keeps padding out of real tokens."""
    longest = max(len(t) for t in batch)
    padded = np.zeros((len(batch), longest), dtype=np.int32)
    for row, tokens in enumerate(batch):
        padded[row, : len(tokens)] = tokens
    lengths = np.array([len(t) for t in batch], dtype=np.float32)[:, None]
    mask = (np.arange(longest)[None, :] < lengths).astype(np.float32)[:, :, None]

    blocks = _blocks(model)
    originals = {i: blocks[i] for i in chosen}
    captured: dict[int, mx.array] = {}
    try:
        for i in chosen:
            blocks[i] = _Recorder(originals[i], lambda h, i=i: captured.__setitem__(i, h))
        language_model(model).model(mx.array(padded))
    finally:
        for i, block in originals.items():
            blocks[i] = block
    pooled = _pool([captured[i] for i in chosen], mx.array(mask), mx.array(lengths))
    mx.eval(pooled)
    return np.array(pooled, dtype=np.float32)


def _check_tokens(token_lists: Sequence[list[int]]) -> None:
    empty = [i for i, tokens in enumerate(token_lists) if len(tokens) == 0]
    if empty:
        raise InputError(f"prompts {empty[:5]} have no tokens; every prompt needs at least one")


def prompt_features(
    model: nn.Module,
    token_lists: Sequence[list[int]],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """One float32 vector per prompt: chosen blocks' outputs, mean over tokens and layers.

    Prompts are batched by length (less padding) and returned in the input order. `progress`
    is called with the number of prompts finished after each batch.
    """
    _check_tokens(token_lists)
    chosen = resolve_layers(layers, layer_count(model))
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    parts: list[np.ndarray] = []
    for start in range(0, len(order), max(1, batch_size)):
        batch = [list(token_lists[i]) for i in order[start : start + max(1, batch_size)]]
        parts.append(_batch_features(model, batch, chosen))
        if progress is not None:
            progress(len(batch))
    if not parts:
        return np.zeros((0, hidden_size(model)), dtype=np.float32)
    features = np.empty((len(order), parts[0].shape[1]), dtype=np.float32)
    features[order] = np.concatenate(parts)
    return features


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream, from the model's args (every mlx-lm model keeps them)."""
    return int(language_model(model).args.hidden_size)
