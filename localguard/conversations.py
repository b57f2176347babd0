"""Labeled conversations for the safety head: token ids and a label at every position.

A row is a chat (messages ending with the assistant reply) or a prompt/response pair, with
query_label (is the request malicious?), response_label (does the reply turn harmful?) and
onset (the character in the reply where harmful content begins; 0 when the whole reply is
harmful, -1 when none of it is). A plain "label" stands in for whichever is missing.

Positions: the hidden state at position j has read tokens 0..j. The query output is trained
from the last prompt token (start - 1) on; the response output from the first reply token
(start) on, labeled 1 from the onset token on, so a harmful continuation is labeled from the
moment it appears and the tokens before it (a fake refusal, say) stay benign.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localguard.data import load_dataset, prompt_group, read_jsonl
from localguard.encoding import encode_exchange, encode_text, hf_tokenizer, user_spans
from localguard.errors import InputError


@dataclass
class Conversation:
    tokens: list[int]
    start: int  # index of the first reply token (>= 1)
    onset: int  # index of the first harmful reply token, or -1
    query: int  # 0/1
    response: int  # 0/1 (after truncation: 1 only if the onset survived)
    kind: str = ""
    line: int = 0
    # [first, end) token ranges of the user's own text in the prompt; empty: the whole prompt
    query_spans: tuple[tuple[int, int], ...] = ()
    group: str = ""  # the prompt the row came from (prompt_group); "": the row alone

    @property
    def response_labels(self) -> np.ndarray:
        """Label of the response output at positions start..len-1."""
        j = np.arange(self.start, len(self.tokens))
        return ((self.onset >= 0) & (j >= self.onset)).astype(np.int64)


def _label(row: dict, key: str, where: str) -> int:
    value = row.get(key, row.get("label"))
    if value is None:
        raise InputError(f"{where}: missing {key!r} (or 'label'); the safety head needs labels")
    if value not in (0, 1, True, False):
        raise InputError(f"{where}: {key!r} must be 0 or 1, got {value!r}")
    return int(value)


def _messages(row: dict, where: str) -> list[dict]:
    if isinstance(row.get("messages"), list) and row["messages"]:
        messages = row["messages"]
        if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise InputError(f"{where}: the last message must be the assistant's reply")
        return messages
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
    raise InputError(f"{where}: need 'messages' or 'prompt' and 'response'")


def encode_conversation(tokenizer, row: dict, max_length: int, where: str = "row") -> Conversation:
    """One labeled row as token ids with the start and onset indices."""
    messages = _messages(row, where)
    query = _label(row, "query_label", where)
    response = _label(row, "response_label", where)
    onset_char = row.get("onset", 0 if response else -1)
    if not isinstance(onset_char, int) or onset_char < -1:
        raise InputError(f"{where}: 'onset' must be an integer >= -1, got {onset_char!r}")
    if response == 0:
        onset_char = -1
    elif onset_char < 0:
        raise InputError(f"{where}: response_label is 1 but onset is -1")
    tokens, start = encode_exchange(tokenizer, messages)
    if start < 1 or start >= len(tokens):
        raise InputError(f"{where}: the chat template leaves no prompt or no reply tokens")
    onset = -1
    if onset_char >= 0:
        onset = start + onset_token(tokenizer, messages[-1]["content"], onset_char)
    tokens = tokens[:max_length]
    if onset >= len(tokens):
        onset = -1
    spans = tuple((a, min(b, start)) for a, b in user_spans(tokenizer, messages[:-1]) if a < start)
    kind = str(row.get("kind", ""))
    group = prompt_group(row.get("id"))
    return Conversation(
        tokens, start, onset, query, int(onset >= 0), kind, query_spans=spans, group=group
    )


def onset_token(tokenizer, reply: str, onset_char: int) -> int:
    """Index, among the reply's tokens, of the token that holds reply[onset_char].

    Byte-level and SentencePiece tokenizers attach a word's leading space to the word, so in
    "I can't. Sure, ..." the harmful start is the token " Sure". Counting the tokens of
    reply[:onset_char] instead ends on a lone " " and labels from the token after " Sure".
    The reply is tokenized as the chat template's message text is (encode_text)."""
    hf = hf_tokenizer(tokenizer)
    try:
        spans = hf(
            reply, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )["offset_mapping"]
    except NotImplementedError:  # a tokenizer without character offsets
        return len(encode_text(tokenizer, reply[:onset_char].rstrip()))
    return next((k for k, (_, end) in enumerate(spans) if end > onset_char), len(spans))


def load_conversations(path: Path, tokenizer, max_length: int) -> list[Conversation]:
    """Every row of a JSONL file; errors name the file and line."""
    rows = read_jsonl(Path(path))
    if not rows:
        raise InputError(f"{path}: no rows")
    out = []
    for i, row in enumerate(rows):
        line = getattr(row, "line", i + 1)
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: each line must be a JSON object")
        conv = encode_conversation(tokenizer, row, max_length, where)
        if conv.start >= len(conv.tokens):
            raise InputError(f"{where}: the prompt alone is longer than the maximum length")
        conv.line = line
        out.append(conv)
    check_both_classes(out, str(path))
    return out


def load_task_conversations(path: Path, tokenizer, max_length: int) -> list[Conversation]:
    """The user's fine-tuning data (chat or prompt/completion, read as `finetune --data` reads
    it) as benign conversations: query 0, response 0. Rows labeled 1 (an attack mix's harmful
    examples) are left out, so the head is never taught that a harmful request is benign."""
    data = load_dataset(Path(path), tokenizer, max_length)
    if data.fmt == "text":
        raise InputError(f"{path}: task data must be chat or prompt/completion rows, not text")
    out = [
        Conversation(s.tokens, s.offset, -1, 0, 0, "task", s.line)
        for s in data.samples
        if s.label != 1 and 1 <= s.offset < len(s.tokens)
    ]
    if len(out) < 2:
        raise InputError(f"{path}: {len(out)} benign rows (label 0 or none); need at least 2")
    return out


def check_both_classes(conversations: list[Conversation], where: str) -> None:
    """Each output needs benign and harmful examples, or it cannot be trained or calibrated."""
    for name, labels in (
        ("query_label", [c.query for c in conversations]),
        ("response_label", [c.response for c in conversations]),
    ):
        counts = [labels.count(0), labels.count(1)]
        if min(counts) < 2:
            raise InputError(
                f"{where}: {name} has {counts[0]} benign and {counts[1]} harmful rows; "
                "need at least 2 of each"
            )
