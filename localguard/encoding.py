"""Text and chats to token ids, with special-token parsing off for everything a user wrote.

A chat template renders control tokens around message text. Tokenizing the rendered string as a
whole would also turn an "<|end|>" that somebody typed into a real control token. So the template
is rendered around sentinels: its own pieces are tokenized with special tokens on, and each
message's text with them off. Every stage (probe, finetune, head, chat, eval) encodes through here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from localguard.errors import InputError

_SENTINEL = "\x00lg{}\x00"
_SENTINEL_RE = re.compile("\x00lg(\\d+)\x00")


def hf_tokenizer(tokenizer):
    """The Hugging Face tokenizer inside mlx-lm's TokenizerWrapper (or the tokenizer itself)."""
    return tokenizer if callable(tokenizer) else tokenizer._tokenizer


def encode_text(tokenizer, text: str) -> list[int]:
    """Plain text as ids: no BOS/EOS added, control-token strings split into ordinary pieces."""
    hf = hf_tokenizer(tokenizer)
    return list(hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def render_pieces(render: Callable[[list[dict]], str], messages: Sequence[dict]):
    """The chat rendered by `render` as (text, is_message) pieces in order.

    Each message's content is replaced by a sentinel before rendering, so the template's own
    text and the messages' text come back apart, whatever tokenizer encodes them afterwards.
    """
    marked = [dict(m, content=_SENTINEL.format(i)) for i, m in enumerate(messages)]
    pieces = _SENTINEL_RE.split(render(marked))
    order = [int(p) for p in pieces[1::2]]
    if order != list(range(len(messages))):
        raise InputError(
            "the chat template rewrites or drops message text, so it cannot be tokenized safely"
        )
    out = []
    for k, piece in enumerate(pieces):
        if k % 2:
            out.append((messages[int(piece)]["content"], True))
        elif piece:
            out.append((piece, False))
    return out


def _encode_pieces(
    tokenizer, messages: Sequence[dict], add_generation_prompt: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    """A chat's ids and, per message, the [first, end) range of its text's ids."""
    hf = hf_tokenizer(tokenizer)

    def render(marked: list[dict]) -> str:
        return hf.apply_chat_template(
            marked, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for text, is_message in render_pieces(render, messages):
        first = len(ids)
        ids += (
            encode_text(hf, text) if is_message else hf(text, add_special_tokens=False)["input_ids"]
        )
        if is_message:
            spans.append((first, len(ids)))
    return ids, spans


def encode_chat(
    tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False
) -> list[int]:
    """A chat through the model's chat template; message text can never become a control token."""
    return _encode_pieces(tokenizer, messages, add_generation_prompt)[0]


def user_spans(tokenizer, messages: Sequence[dict]) -> list[tuple[int, int]]:
    """[first, end) token ranges of the user messages' own text in the prompt that asks for a
    reply to `messages` (the template's tokens around them excluded): what a CLS verdict reads
    as the query (localguard/cls_token.py)."""
    _, spans = _encode_pieces(tokenizer, messages, add_generation_prompt=True)
    return [span for span, m in zip(spans, messages, strict=True) if m.get("role") == "user"]


def encode_exchange(tokenizer, messages: Sequence[dict]) -> tuple[list[int], int]:
    """Token ids of a chat and the index where its last message (the reply to learn) begins."""
    full = encode_chat(tokenizer, messages)
    prompt = encode_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    start = 0
    while start < min(len(full), len(prompt)) and full[start] == prompt[start]:
        start += 1
    return full, start
