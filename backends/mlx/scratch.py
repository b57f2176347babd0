"""Train a small Llama-architecture chat model from scratch in MLX (the starter world's model).

Reuses mlx-lm's llama model, tokenizer wrapper and batch generator. The batch iterator is our
own: mlx-lm's sorts by length, which on a corpus of short templated examples makes every batch
one kind of example and stalls training, and it pads where packing wastes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from localguard.encoding import encode_chat as encode_chat_prompt
from localguard.encoding import encode_exchange

Example = tuple[list[int], int]  # tokens, index of the first token the loss counts
Progress = Callable[[int, float, float], None]  # step, loss, tokens per second


def init_model(config: dict, seed: int) -> nn.Module:
    """A freshly initialized mlx-lm llama model for an HF-style config dict."""
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def load_tokenizer(path: Path):
    """mlx-lm's tokenizer wrapper for a folder of Hugging Face tokenizer files, tokenizing as
    its tokenizer.json (backends/mlx/loading.py)."""
    from localguard.backends.mlx.loading import load_tokenizer as load

    return load(Path(path))


def parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def encode_chat(tokenizer, rows: Sequence[dict]) -> list[Example]:
    """Chat rows ({"messages": [...]}) as token ids, the loss starting at the last reply."""
    return [encode_exchange(tokenizer, row["messages"]) for row in rows]


def encode_text(tokenizer, rows: Sequence[dict]) -> list[Example]:
    """Text rows ({"text": ...}) framed by BOS and EOS, the loss on every token."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [
        ([bos, *tokenizer.encode(row["text"], add_special_tokens=False), eos], 0) for row in rows
    ]


class _BlockMask:
    """Stands in for a layer's KV cache so that mlx-lm's model applies our attention mask.

    With examples packed into one row, each token may only attend within its own example:
    otherwise a tiny model learns to copy from the unrelated example before it.
    """

    offset = 0

    def __init__(self, mask: mx.array):
        self.mask = mask

    def make_mask(self, *_args, **_kwargs) -> mx.array:
        return self.mask

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return keys, values


def packed_batches(
    examples: Sequence[Example], batch_size: int, width: int, seed: int
) -> Iterator[tuple[mx.array, mx.array, mx.array]]:
    """Endless batches of examples packed end to end into rows of `width` tokens.

    The order is shuffled afresh every epoch (sorting by length would make every batch one kind
    of example, which stalled training). Packing wastes almost nothing on padding, which
    matters at a few thousand tokens per second. Yields (tokens, mask, segments): mask[b, t]
    says whether tokens[b, t + 1] is a target the loss counts; segments numbers the examples
    of a row (-1 for padding) so attention stays within each example.
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.zeros(width, np.int32),
            np.zeros(width - 1, np.float32),
            np.full(width, -1, np.int32),
        )

    tokens, mask, segments = empty()
    used = count = 0
    while True:
        for index in rng.permutation(len(examples)):
            ids, offset = examples[index]
            ids = ids[:width]
            if used + len(ids) > width:
                rows.append((tokens, mask, segments))
                tokens, mask, segments = empty()
                used = count = 0
            tokens[used : used + len(ids)] = ids
            mask[used + max(offset, 1) - 1 : used + len(ids) - 1] = 1.0
            segments[used : used + len(ids)] = count
            used += len(ids)
            count += 1
            if len(rows) == batch_size:
                yield tuple(mx.array(np.stack(part)) for part in zip(*rows, strict=True))
                rows = []


def masked_loss(
    model: nn.Module, tokens: mx.array, mask: mx.array, segments: mx.array
) -> tuple[mx.array, mx.array]:
    """Mean next-token cross-entropy over the masked targets, attention kept per example."""
    inputs, seg = tokens[:, :-1], segments[:, :-1]
    n = inputs.shape[1]
    causal = mx.arange(n)[:, None] >= mx.arange(n)[None, :]
    allowed = (seg[:, None, :, None] == seg[:, None, None, :]) & causal
    logits = model(inputs, cache=[_BlockMask(allowed)] * len(model.layers))
    ce = nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask
    count = mask.sum()
    return ce.astype(mx.float32).sum() / count, count


def train(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    width: int,
    seed: int,
    warmup: int = 50,
    progress: Progress | None = None,
) -> float:
    """Full-parameter AdamW training with warm-up and cosine decay; returns the last loss."""
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(learning_rate / 20, learning_rate, warmup),
            optim.cosine_decay(learning_rate, max(steps - warmup, 1), learning_rate / 20),
        ],
        [warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)
    loss_and_grad = nn.value_and_grad(model, masked_loss)
    state = [model.state, optimizer.state]

    def step(tokens: mx.array, mask: mx.array, segments: mx.array) -> mx.array:
        (loss, _), grads = loss_and_grad(model, tokens, mask, segments)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    model.train()
    batches = packed_batches(examples, batch_size, width, seed)
    loss_value = float("nan")
    for number in range(1, steps + 1):
        start = time.perf_counter()
        tokens, mask, segments = next(batches)
        loss = step(tokens, mask, segments)
        mx.eval(loss, state)
        loss_value = loss.item()
        if progress is not None:
            progress(number, loss_value, tokens.size / (time.perf_counter() - start))
    model.eval()
    return loss_value


def save(model: nn.Module, config: dict, out: Path) -> None:
    """Weights (model.safetensors) and config.json in the Hugging Face layout."""
    from mlx_lm.utils import save_config, save_model

    save_model(out, model)
    save_config(dict(config), out / "config.json")


def greedy_answers(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_tokens: int = 48
) -> list[str]:
    """Greedy replies to single-turn user prompts, batched through mlx-lm's batch generator.

    Prompts are user text: they are encoded with special-token parsing off."""
    from mlx_lm import batch_generate

    user = [[{"role": "user", "content": p}] for p in prompts]
    encoded = [
        encode_chat_prompt(tokenizer, messages, add_generation_prompt=True) for messages in user
    ]
    return list(batch_generate(model, tokenizer, encoded, max_tokens=max_tokens).texts)
