"""Tests for the fine-tuning data layer, on a tiny tokenizer trained in place (no downloads)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from localguard import data
from localguard.data import (
    Sample,
    content_key,
    detect_format,
    encode_rows,
    load_dataset,
    read_jsonl,
    split_for_validation,
    warnings_for,
)
from localguard.errors import InputError
from localguard.starter.tokenizer import train_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "hello there, how are you today?",
    "tell me a story about a dog",
] * 5

CHAT = {
    "messages": [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "the cat sat"},
    ]
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXTS, 300, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def plain_tok(tok_dir: Path):
    """The same tokenizer without a chat template, for the plain completions path."""
    from mlx_lm.utils import load_tokenizer

    wrapper = load_tokenizer(tok_dir)
    wrapper._tokenizer.chat_template = None
    return wrapper


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path so files are named as a user would type them ("train.jsonl")."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(lines: list, name: str = "train.jsonl") -> Path:
    """Write rows (dicts become JSON, strings go in verbatim) and return the relative path."""
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    Path(name).write_text(text, encoding="utf-8")
    return Path(name)


def ids(tok, text: str) -> list[int]:
    return tok._tokenizer(text, add_special_tokens=False)["input_ids"]


def reply(tok, sample: Sample) -> str:
    return tok.decode(sample.tokens[sample.offset :])


# --- reading and format detection ------------------------------------------------------------


def test_read_jsonl_skips_blank_lines_and_keeps_line_numbers(here: Path) -> None:
    path = write(["", {"text": "a"}, "   ", {"text": "b"}])
    rows = read_jsonl(path)
    assert rows == [{"text": "a"}, {"text": "b"}]
    assert [r.line for r in rows] == [2, 4]


def test_read_jsonl_accepts_a_byte_order_mark(here: Path) -> None:
    Path("bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a"}\n')
    assert read_jsonl(Path("bom.jsonl")) == [{"text": "a"}]


@pytest.mark.parametrize(
    "row, fmt",
    [
        (CHAT, "chat"),
        ({"prompt": "p", "completion": "c", "label": 1, "category": "x"}, "completions"),
        ({"text": "t", "kind": "harmless"}, "text"),
    ],
)
def test_detect_format(row: dict, fmt: str) -> None:
    assert detect_format([row, row], "train.jsonl") == fmt


# --- encoding --------------------------------------------------------------------------------


def test_chat_masks_the_prompt(tok) -> None:
    row = dict(CHAT, label=True, category="greeting", tools=[])
    (sample,) = encode_rows(tok, [row], "chat", 100)
    assert reply(tok, sample).startswith("the cat sat<|end|>")
    assert sample.tokens[: sample.offset] == tok._tokenizer.apply_chat_template(
        CHAT["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert (sample.prompt, sample.response) == ("hello there", "the cat sat")
    assert (sample.label, sample.truncated, sample.line) == (1, False, 1)
    assert sample.extra == {"category": "greeting", "tools": []}


def test_mask_prompt_off_counts_every_token(tok) -> None:
    masked, unmasked = (encode_rows(tok, [CHAT], "chat", 100, mask_prompt=m)[0] for m in (1, 0))
    assert unmasked.offset == 0
    assert unmasked.tokens == masked.tokens


def test_control_token_text_in_a_message_stays_text(tok) -> None:
    end = tok._tokenizer.convert_tokens_to_ids("<|end|>")
    row = {
        "messages": [
            {"role": "user", "content": "hi <|end|><|assistant|> there"},
            {"role": "assistant", "content": "no <|end|> here"},
        ]
    }
    (sample,) = encode_rows(tok, [row], "chat", 100)
    assert sample.tokens.count(end) == 2  # the two the template writes, nothing from the text
    assert "<|end|>" in tok.decode(sample.tokens[: sample.offset])


def test_completions_use_the_chat_template(tok) -> None:
    row = {"prompt": "hello there", "completion": "the cat sat"}
    chat = {"messages": [{"role": "user", "content": "hello there"}, CHAT["messages"][2]]}
    (sample,) = encode_rows(tok, [row], "completions", 100)
    (expected,) = encode_rows(tok, [chat], "chat", 100)
    assert (sample.tokens, sample.offset) == (expected.tokens, expected.offset)
    assert (sample.prompt, sample.response) == ("hello there", "the cat sat")


def test_completions_without_a_template_are_plain_text(plain_tok) -> None:
    row = {"prompt": "hello there", "completion": " the cat"}
    (sample,) = encode_rows(plain_tok, [row], "completions", 100)
    bos, eos = plain_tok.bos_token_id, plain_tok.eos_token_id
    prompt_ids = ids(plain_tok, "hello there")
    assert sample.tokens == [bos, *prompt_ids, *ids(plain_tok, " the cat"), eos]
    assert sample.offset == 1 + len(prompt_ids)
    assert reply(plain_tok, sample) == " the cat<|end|>"


def test_text_rows_have_bos_eos_and_no_prompt(tok) -> None:
    (sample,) = encode_rows(tok, [{"text": "the mat", "label": 0}], "text", 100)
    assert sample.tokens == [tok.bos_token_id, *ids(tok, "the mat"), tok.eos_token_id]
    assert (sample.offset, sample.prompt, sample.response, sample.label) == (0, "", "the mat", 0)


def test_truncation_is_flagged_and_warned(here: Path, tok) -> None:
    path = write([{"text": "the cat sat on the mat " * 4}, {"text": "a"}, {"text": "the dog"}])
    dataset = load_dataset(path, tok, max_length=6)
    assert dataset.fmt == "text"
    assert [len(s.tokens) for s in dataset.samples][0] == 6
    assert [s.truncated for s in dataset.samples] == [True, False, False]
    assert [s.line for s in dataset.samples] == [1, 2, 3]
    assert dataset.n_truncated == 1
    assert warnings_for(dataset) == [
        "train.jsonl: 1 of 3 samples longer than 6 tokens was truncated"
    ]
    assert warnings_for(load_dataset(path, tok, max_length=100)) == []


def test_truncated_chat_keeps_its_offset(tok) -> None:
    (full,) = encode_rows(tok, [CHAT], "chat", 100)
    (cut,) = encode_rows(tok, [CHAT], "chat", full.offset + 1)
    assert cut.truncated and cut.offset == full.offset
    assert cut.tokens == full.tokens[: full.offset + 1]


# --- errors ----------------------------------------------------------------------------------

USER_ONLY = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [{"text": "a"}, "", '{"text": "a" "b"}'],
            "train.jsonl:3: not valid JSON (Expecting ',' delimiter)",
        ),
        ([{"text": "a"}, "[1, 2]"], "train.jsonl:2: expected a JSON object, got a list"),
        (["", "  "], "train.jsonl: no examples"),
        (
            [CHAT, {"text": "a"}],
            'train.jsonl:2: missing "messages" key (line 1 is a chat example)',
        ),
        (
            [{"prompt": "p", "completion": "c"}, {"prompt": "p"}],
            'train.jsonl:2: missing "completion" key (line 1 is a completions example)',
        ),
        ([{"prompt": "p"}], 'train.jsonl:1: missing "completion" key'),
        ([{"input": "x"}], 'train.jsonl:1: no "messages", "prompt"/"completion" or "text" key'),
        ([{"text": 3}], 'train.jsonl:1: "text" must be a string, not a number'),
        (
            [CHAT, USER_ONLY],
            'train.jsonl:2: the last message must be the assistant\'s, not "user"',
        ),
        (
            [{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
            'train.jsonl:1: messages[1] has role "bot"; expected system, user or assistant',
        ),
        (
            [{"messages": [{"role": "user", "content": None}, CHAT["messages"][2]]}],
            'train.jsonl:1: messages[0] "content" must be a string, not null',
        ),
    ],
)
def test_read_errors(here: Path, tok, lines: list, message: str) -> None:
    with pytest.raises(InputError) as err:
        load_dataset(write(lines), tok, max_length=100)
    assert str(err.value) == message


def test_missing_file(here: Path, tok) -> None:
    with pytest.raises(InputError, match=r"^nope\.jsonl: no such file$"):
        load_dataset(Path("nope.jsonl"), tok, max_length=100)


@pytest.mark.parametrize("value", ['"yes"', "2", "0.5", "null"])
def test_bad_label(here: Path, tok, value: str) -> None:
    path = write([{"text": "a", "label": 1}, '{"text": "b", "label": ' + value + "}"])
    with pytest.raises(InputError) as err:
        load_dataset(path, tok, max_length=100)
    assert str(err.value) == f'train.jsonl:2: "label" must be 0, 1, true or false, not {value}'


def test_labels_required(here: Path, tok) -> None:
    path = write([{"text": "a", "label": False}, "", {"text": "b"}, {"text": "c"}])
    assert [s.label for s in load_dataset(path, tok, 100).samples] == [0, None, None]
    with pytest.raises(InputError) as err:
        load_dataset(path, tok, max_length=100, need_labels=True)
    assert str(err.value) == 'train.jsonl:3: no "label" (every example needs one: 0 or 1)'


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_prompt_longer_than_max_length(here: Path, tok, mask_prompt: bool) -> None:
    long = {"prompt": "tell me a story about a dog " * 3, "completion": "no"}
    path = write([{"prompt": "hi", "completion": "ok"}, long])
    start = encode_rows(tok, [long], "completions", 100)[0].offset
    with pytest.raises(InputError) as err:
        load_dataset(path, tok, max_length=12, mask_prompt=mask_prompt)
    assert str(err.value) == (
        f"train.jsonl:2: prompt is longer than max_seq_length 12 "
        f"({start} tokens leave no room for the reply)"
    )


# --- splitting, cache keys, dependencies -----------------------------------------------------


def test_split_for_validation_is_deterministic() -> None:
    items = list(range(20))
    train, valid = split_for_validation(items, 0.25, seed=7)
    assert (train, valid) == split_for_validation(items, 0.25, seed=7)
    assert len(valid) == 5 and sorted(train + valid) == items
    assert train == sorted(train) and valid == sorted(valid)
    assert split_for_validation([1, 2], 0.01, seed=0)[1] != []
    with pytest.raises(InputError):
        split_for_validation([1], 0.5, seed=0)
    with pytest.raises(InputError):
        split_for_validation(items, 1.0, seed=0)


def test_content_key() -> None:
    key = content_key("how do I", "like this")
    assert key == content_key("how do I", "like this")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != content_key("like this", "how do I")
    assert content_key("a", "bc") != content_key("ab", "c")


def test_data_module_does_not_import_mlx() -> None:
    tree = ast.parse(Path(data.__file__).read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "mlx" or n.startswith("mlx_")]
