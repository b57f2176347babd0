"""Fine-tuning data: JSONL in the formats mlx-lm reads, turned into token ids and a loss start.

`localguard finetune`, `localguard probe train` and the safety head all read their data here, so
a bad file fails the same way everywhere: one InputError line naming the file and line, before any
model work starts. The module is framework-free; it takes a tokenizer but never imports mlx.

Formats (the first row decides, every later row must match):
  chat         {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
  completions  {"prompt": ..., "completion": ...}
  text         {"text": ...}
Any row may carry a "label" (0/1/true/false) and other keys, which are kept in Sample.extra.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from localguard.encoding import encode_chat, encode_exchange, encode_text, hf_tokenizer
from localguard.errors import InputError

FORMATS = ("chat", "completions", "text")
ROLES = ("system", "user", "assistant")
_FORMAT_KEYS = {"chat": ("messages",), "completions": ("prompt", "completion"), "text": ("text",)}
_T = TypeVar("_T")


ROW_RANGE = re.compile(r"^(?P<ref>.+)\[(?P<start>\d*):(?P<end>\d*)\]$")
"""A file reference may end in [START:END], Python's slice of its rows (0-based, END
excluded), so one file gives disjoint training and evaluation slices."""


def split_row_range(ref: str) -> tuple[str, int, int | None]:
    """(file reference, first row, end row or None) of a reference with an optional range."""
    match = ROW_RANGE.match(ref)
    if not match:
        return ref, 0, None
    start, end = int(match["start"] or 0), int(match["end"]) if match["end"] else None
    if end is not None and end <= start:
        raise InputError(f"{ref}: empty row range [{start}:{end}]")
    return match["ref"], start, end


class Row(dict):
    """A JSONL object that remembers its line number, so later checks can point at it."""

    line: int = 0


@dataclass
class Sample:
    """One example as token ids; the loss counts tokens[offset:]."""

    tokens: list[int]
    offset: int
    label: int | None
    prompt: str
    response: str
    truncated: bool = False
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """The encoded examples of one file and what is worth telling the user about them."""

    samples: list[Sample]
    fmt: str
    path: Path
    max_length: int
    n_truncated: int = 0


# ---------------------------------------------------------------------------------------------
# Reading


WRAPPED_MARK = "#wrap"
"""`localguard label` gives each row its prompt's id; a wrapped copy's id adds this and the
template's place."""


def prompt_group(row_id: object) -> str:
    """The prompt a labeled row came from: its id up to WRAPPED_MARK, so a prompt's refusal
    row, harmful row and wrapped copies share one group and a validation split can keep them
    together (the head and the probe are then measured on prompts they never trained on). ""
    without an id."""
    return str(row_id).split(WRAPPED_MARK)[0] if row_id not in (None, "") else ""


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-blank line, each a Row carrying its line number."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    rows: list[dict] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        row = _parse_line(raw, path, number)
        if row is not None:
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: no examples")
    return rows


def _parse_line(raw: bytes, path: Path, number: int) -> Row | None:
    """Split by bytes (not str.splitlines) so U+2028 inside a JSON string never breaks a line."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}:{number}: not valid UTF-8") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}:{number}: expected a JSON object, got {_kind(value)}")
    row = Row(value)
    row.line = number
    return row


def _kind(value: Any) -> str:
    """A JSON type name for messages about the wrong kind of value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _line(row: dict, index: int) -> int:
    """The source line of a row; plain dicts fall back to their position."""
    return getattr(row, "line", 0) or index + 1


def _name(path: Path | str | None) -> str:
    return str(path) if path is not None else "data"


# ---------------------------------------------------------------------------------------------
# Format detection and row checks


def detect_format(rows: Sequence[dict], path: Path | str | None = None) -> str:
    """The format of the first row, after checking that every row has that shape."""
    if not rows:
        raise InputError(f"{_name(path)}: no examples")
    first = _line(rows[0], 0)
    fmt = _shape_of(rows[0], f"{_name(path)}:{first}")
    for index, row in enumerate(rows):
        loc = f"{_name(path)}:{_line(row, index)}"
        _check_row(row, fmt, loc, first)
    return fmt


def _shape_of(row: dict, loc: str) -> str:
    """Which format a row is in, in mlx-lm's order of preference."""
    if "prompt" in row and "completion" in row:
        return "completions"
    if "messages" in row:
        return "chat"
    if "text" in row:
        return "text"
    if "prompt" in row:
        raise InputError(f'{loc}: missing "completion" key')
    if "completion" in row:
        raise InputError(f'{loc}: missing "prompt" key')
    raise InputError(f'{loc}: no "messages", "prompt"/"completion" or "text" key')


def _check_row(row: dict, fmt: str, loc: str, first: int = 1) -> None:
    """Every key the format needs is present and well typed."""
    for key in _FORMAT_KEYS[fmt]:
        if key not in row:
            raise InputError(f'{loc}: missing "{key}" key (line {first} is a {fmt} example)')
    if fmt == "chat":
        _check_messages(row["messages"], loc)
        return
    for key in _FORMAT_KEYS[fmt]:
        if not isinstance(row[key], str):
            raise InputError(f'{loc}: "{key}" must be a string, not {_kind(row[key])}')


def _check_messages(messages: Any, loc: str) -> None:
    """A list of role/content dicts that ends with the assistant reply to learn."""
    if not isinstance(messages, list) or not messages:
        raise InputError(f'{loc}: "messages" must be a non-empty list')
    for i, message in enumerate(messages):
        _check_message(message, i, loc)
    roles = [m["role"] for m in messages]
    if roles[-1] != "assistant":
        raise InputError(f'{loc}: the last message must be the assistant\'s, not "{roles[-1]}"')
    if "system" in roles[1:]:
        i = roles.index("system", 1)
        raise InputError(f"{loc}: messages[{i}] is a system message; only the first may be one")
    if "user" not in roles:
        raise InputError(f"{loc}: no user message before the assistant reply")


def _check_message(message: Any, i: int, loc: str) -> None:
    if not isinstance(message, dict):
        raise InputError(f"{loc}: messages[{i}] must be an object, not {_kind(message)}")
    for key in ("role", "content"):
        if key not in message:
            raise InputError(f'{loc}: messages[{i}] has no "{key}" key')
    if message["role"] not in ROLES:
        raise InputError(
            f"{loc}: messages[{i}] has role {json.dumps(message['role'])}; "
            "expected system, user or assistant"
        )
    if not isinstance(message["content"], str):
        raise InputError(
            f'{loc}: messages[{i}] "content" must be a string, not {_kind(message["content"])}'
        )


def _label(row: dict, loc: str, key: str = "label") -> int | None:
    """The row's 0/1 label, accepting JSON booleans; anything else is the user's typo."""
    if key not in row:
        return None
    value = row[key]
    if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return int(value)
    shown = json.dumps(value, ensure_ascii=False)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise InputError(f'{loc}: "{key}" must be 0, 1, true or false, not {shown}')


def _prompt_label_key(row: dict) -> str:
    """A prompt's label: "label", else the query label of a labeled conversation (what
    `localguard label` writes), so the risk probe reads the safety head's data too."""
    return "label" if "label" in row else "query_label"


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_rows(
    tokenizer,
    rows: Sequence[dict],
    fmt: str,
    max_length: int,
    mask_prompt: bool = True,
    path: Path | str | None = None,
) -> list[Sample]:
    """Token ids and loss start of every row, truncated to max_length."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}")
    if max_length < 1:
        raise InputError(f"max_seq_length must be at least 1, not {max_length}")
    samples = []
    first = _line(rows[0], 0) if rows else 1
    for index, row in enumerate(rows):
        line = _line(row, index)
        loc = f"{_name(path)}:{line}"
        _check_row(row, fmt, loc, first)
        samples.append(_encode_row(tokenizer, row, fmt, max_length, mask_prompt, loc, line))
    return samples


def _encode_row(
    tokenizer, row: dict, fmt: str, max_length: int, mask_prompt: bool, loc: str, line: int
) -> Sample:
    label = _label(row, loc)
    if fmt == "chat":
        tokens, start = encode_exchange(tokenizer, row["messages"])
        prompt, response = _last_exchange(row["messages"])
    elif fmt == "completions":
        prompt, response = row["prompt"], row["completion"]
        tokens, start = _encode_completion(tokenizer, prompt, response)
    else:
        prompt, response = "", row["text"]
        tokens, start = _bos(tokenizer) + encode_text(tokenizer, response) + _eos(tokenizer), 0
    if start >= max_length:
        raise InputError(
            f"{loc}: prompt is longer than max_seq_length {max_length} "
            f"({start} tokens leave no room for the reply)"
        )
    extra = {k: v for k, v in row.items() if k not in _FORMAT_KEYS[fmt] and k != "label"}
    return Sample(
        tokens=tokens[:max_length],
        offset=start if mask_prompt else 0,
        label=label,
        prompt=prompt,
        response=response,
        truncated=len(tokens) > max_length,
        line=line,
        extra=extra,
    )


def _last_exchange(messages: list[dict]) -> tuple[str, str]:
    """The last user message and the final assistant reply of a chat."""
    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return prompt, messages[-1]["content"]


def _encode_completion(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """As a one-turn chat when the model has a template (what it will see), else plain text."""
    if getattr(hf_tokenizer(tokenizer), "chat_template", None):
        user = {"role": "user", "content": prompt}
        return encode_exchange(tokenizer, [user, {"role": "assistant", "content": completion}])
    head = _bos(tokenizer) + encode_text(tokenizer, prompt)
    return head + encode_text(tokenizer, completion) + _eos(tokenizer), len(head)


def _bos(tokenizer) -> list[int]:
    bos = getattr(hf_tokenizer(tokenizer), "bos_token_id", None)
    return [] if bos is None else [bos]


def _eos(tokenizer) -> list[int]:
    eos = getattr(hf_tokenizer(tokenizer), "eos_token_id", None)
    return [] if eos is None else [eos]


# ---------------------------------------------------------------------------------------------
# Whole files


def load_dataset(
    path: Path,
    tokenizer,
    max_length: int,
    mask_prompt: bool = True,
    need_labels: bool = False,
) -> Dataset:
    """Read, check and encode one JSONL file; all user errors surface before any training."""
    path = Path(path)
    rows = read_jsonl(path)
    fmt = detect_format(rows, path)
    if need_labels:
        _require_labels(rows, path)
    samples = encode_rows(tokenizer, rows, fmt, max_length, mask_prompt, path)
    n_truncated = sum(s.truncated for s in samples)
    return Dataset(samples, fmt, path, max_length, n_truncated)


def _require_labels(rows: Sequence[dict], path: Path, prompts: bool = False) -> None:
    """Every row labeled ("label"; prompts for the probe may carry "query_label" instead)."""
    for index, row in enumerate(rows):
        if (_prompt_label_key(row) if prompts else "label") not in row:
            raise InputError(
                f'{path}:{_line(row, index)}: no "label" (every example needs one: 0 or 1)'
            )


def warnings_for(dataset: Dataset) -> list[str]:
    """Lines for the CLI to print about a dataset that loaded but is not quite what was asked."""
    lines = []
    if dataset.n_truncated:
        n, total = dataset.n_truncated, len(dataset.samples)
        verb = "was" if n == 1 else "were"
        noun = "sample" if total == 1 else "samples"
        lines.append(
            f"{dataset.path}: {n} of {total} {noun} longer than {dataset.max_length} tokens "
            f"{verb} truncated"
        )
    return lines


def split_for_validation(
    samples: Sequence[_T], fraction: float, seed: int, path: Path | str | None = None
) -> tuple[list[_T], list[_T]]:
    """(train, valid) with about `fraction` held out; the same seed gives the same split.

    Both parts keep the file order, so a re-run differs only where the seed says it should.
    """
    if not 0 < fraction < 1:
        raise InputError(f"validation fraction must be between 0 and 1, not {fraction}")
    if len(samples) < 2:
        raise InputError(
            f"{_name(path)}: too few examples ({len(samples)}) to hold some out for validation; "
            "give a validation file"
        )
    n_valid = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    held = set(random.Random(seed).sample(range(len(samples)), n_valid))
    train = [s for i, s in enumerate(samples) if i not in held]
    valid = [s for i, s in enumerate(samples) if i in held]
    return train, valid


def content_key(prompt: str, response: str) -> str:
    """A stable id of a prompt/reply pair, so a judge's score can be cached across runs."""
    canonical = json.dumps(
        {"prompt": prompt, "response": response},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_labeled_prompts(
    path: Path, tokenizer, max_length: int
) -> tuple[list[list[int]], list[int], list[str]]:
    """Prompt token ids (as the model sees them before it answers), 0/1 labels and each row's
    prompt_group (so a validation split keeps a prompt's rows together).

    Rows are {"prompt": ..., "label": ...} or chats, whose prompt is everything up to the last
    user message. This is what the risk probe reads.
    """
    path = Path(path)
    rows = read_jsonl(path)
    _require_labels(rows, path, prompts=True)
    prompts, labels = [], []
    for index, row in enumerate(rows):
        loc = f"{path}:{_line(row, index)}"
        if "messages" in row:
            _check_messages(row["messages"], loc)
            last_user = max(i for i, m in enumerate(row["messages"]) if m["role"] == "user")
            messages = row["messages"][: last_user + 1]
        elif isinstance(row.get("prompt"), str):
            messages = [{"role": "user", "content": row["prompt"]}]
        else:
            raise InputError(f'{loc}: needs a "prompt" string or "messages"')
        prompts.append(_encode_prompt(tokenizer, messages)[:max_length])
        labels.append(_label(row, loc, _prompt_label_key(row)))
    return prompts, labels, [prompt_group(row.get("id")) for row in rows]


def _encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(hf_tokenizer(tokenizer), "chat_template", None):
        return encode_chat(tokenizer, messages, add_generation_prompt=True)
    return _bos(tokenizer) + encode_text(tokenizer, "\n".join(m["content"] for m in messages))
