"""Train a small Llama-architecture chat model from scratch in MLX (the starter world's model).

Reuses mlx-lm's llama model, its masked loss and its batch generator. The batch iterator is our
own: mlx-lm's sorts by length, which on a corpus of short templated examples makes every batch
one kind of example and stalls training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner.trainer import default_loss

Example = tuple[list[int], int]  # tokens, index of the first token the loss counts
Progress = Callable[[int, float, float], None]  # step, loss, tokens per second


def init_model(config: dict, seed: int) -> nn.Module:
    """A freshly initialized mlx-lm llama model for an HF-style config dict."""
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def encode_chat(tokenizer, rows: Sequence[dict]) -> list[Example]:
    """Chat rows ({"messages": [...]}) as token ids, the loss starting at the last reply."""
    examples = []
    for row in rows:
        messages = row["messages"]
        tokens = tokenizer.apply_chat_template(messages, return_dict=False)
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, return_dict=False
        )
        examples.append((list(tokens), len(prompt)))
    return examples


def encode_text(tokenizer, rows: Sequence[dict]) -> list[Example]:
    """Text rows ({"text": ...}) framed by BOS and EOS, the loss on every token."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [
        ([bos, *tokenizer.encode(row["text"], add_special_tokens=False), eos], 0) for row in rows
    ]


def shuffled_batches(
    examples: Sequence[Example], batch_size: int, max_len: int, seed: int
) -> Iterator[tuple[mx.array, mx.array]]:
    """Endless batches in a fresh random order each epoch, padded to a multiple of 16 tokens.

    Yields (tokens, lengths) in the layout of mlx-lm's default_loss: lengths[:, 0] is the first
    target position the loss counts, lengths[:, 1] the sequence length.
    """
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            longest = min(max(len(t) for t, _ in batch), max_len)
            width = min(16 * math.ceil(longest / 16), max_len)
            array = np.zeros((batch_size, width), np.int32)
            lengths = np.zeros((batch_size, 2), np.int32)
            for row, (tokens, offset) in enumerate(batch):
                tokens = tokens[:width]
                array[row, : len(tokens)] = tokens
                lengths[row] = (min(offset, len(tokens) - 1), len(tokens))
            yield mx.array(array), mx.array(lengths)


def train(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    max_len: int,
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
    loss_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state]

    def step(batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        (loss, ntoks), grads = loss_and_grad(model, batch, lengths)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss, ntoks

    step = mx.compile(step, inputs=state, outputs=state)
    model.train()
    batches = shuffled_batches(examples, batch_size, max_len, seed)
    loss_value = float("nan")
    for number in range(1, steps + 1):
        start = time.perf_counter()
        batch, lengths = next(batches)
        loss, _ = step(batch, lengths)
        mx.eval(loss, state)
        loss_value = loss.item()
        if progress is not None:
            progress(number, loss_value, batch.size / (time.perf_counter() - start))
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
    """Greedy replies to single-turn user prompts, batched through mlx-lm's batch generator."""
    from mlx_lm import batch_generate

    encoded = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
        )
        for p in prompts
    ]
    return list(batch_generate(model, tokenizer, encoded, max_tokens=max_tokens).texts)
