"""A Hugging Face tokenizer folder as a GGUF vocabulary that stock llama.cpp tokenizes identically.

Two kinds are understood, the two that cover the architectures localguard converts:

- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): GGUF model "gpt2" with merges and the name of
  a pre-tokenizer that llama.cpp knows. llama.cpp re-implements each pre-tokenizer regex by
  name, so the name comes from a table of the regexes whose behaviour is known to match;
  an unknown one is refused rather than silently tokenized differently.
- SentencePiece style ("▁" pieces, byte fallback; Llama 2, Mistral, Gemma, Phi-3): GGUF model
  "llama" with scores. llama.cpp merges the adjacent pair whose result has the highest score;
  Hugging Face merges the pair with the lowest rank. Scoring each piece by minus the rank of
  the first merge that makes it turns one rule into the other. Read from tokenizer.json, or
  from tokenizer.model (sentencepiece) when there is no tokenizer.json.

Special token ids, add_bos/add_eos and the chat template come from gguf-py's SpecialVocab.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import gguf

from localguard.errors import InputError

SPACE = "\u2581"  # SentencePiece's visible space, "▁"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    # a Split regex followed by ByteLevel(use_regex=False)
    ("split", QWEN2_REGEX): "qwen2",
    ("split", LLAMA3_REGEX): "llama-bpe",
    ("split", GPT2_REGEX): "gpt-2",
    # ByteLevel with its own (GPT-2) regex, optionally after splitting digits one by one
    ("bytelevel",): "gpt-2",
    ("digits", "bytelevel"): "smollm",
}
"""Hugging Face pre-tokenizer pipelines and the llama.cpp pre-tokenizer that matches each."""


@dataclass(frozen=True)
class Vocab:
    """What the GGUF tokenizer keys need, in token-id order."""

    model: str  # "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None  # "llama" only
    pre: str | None = None  # "gpt2" only
    add_space_prefix: bool | None = None  # "llama" only

    def __len__(self) -> int:
        return len(self.tokens)


def load_vocab(model_dir: Path) -> Vocab:
    """The folder's tokenizer as a Vocab (tokenizer.json first, else tokenizer.model)."""
    path = model_dir / "tokenizer.json"
    if path.is_file():
        return vocab_from_tokenizer_json(read_json(path), path)
    if (model_dir / "tokenizer.model").is_file():
        return vocab_from_sentencepiece(model_dir / "tokenizer.model")
    raise InputError(f"{model_dir} has no tokenizer.json or tokenizer.model")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None


def vocab_from_tokenizer_json(data: dict, path: Path) -> Vocab:
    """Dispatch on the tokenizer.json model: byte-level BPE or SentencePiece-style BPE."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(
            f"{path}: tokenizer model {model.get('type')!r} is not supported "
            "(supported: byte-level BPE and SentencePiece-style BPE with byte fallback)"
        )
    if model.get("byte_fallback"):
        return _spm_style_vocab(data, path)
    return _byte_level_vocab(data, path)


def _tokens_by_id(data: dict, path: Path) -> tuple[list[str | None], dict[str, dict]]:
    """Token texts indexed by id (None for an id nobody uses) and the added tokens by text."""
    by_id: dict[int, str] = {tid: text for text, tid in data["model"]["vocab"].items()}
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    for text, entry in added.items():
        by_id[entry["id"]] = text
    if not by_id:
        raise InputError(f"{path}: the vocabulary is empty")
    return [by_id.get(i) for i in range(max(by_id) + 1)], added


def _added_type(entry: dict) -> int:
    """An added token is CONTROL when special (llama.cpp then never makes it from user text)."""
    return gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED


def _byte_level_vocab(data: dict, path: Path) -> Vocab:
    tokens, added = _tokens_by_id(data, path)
    types = []
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i] = f"[PAD{i}]"
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            types.append(_added_type(added[text]))
        else:
            types.append(gguf.TokenType.NORMAL)
    return Vocab("gpt2", tokens, types, pre=pre_tokenizer_name(data, path))


def pre_tokenizer_name(data: dict, path: Path) -> str:
    """llama.cpp's name for the tokenizer.json pre-tokenizer pipeline (see PRE_TOKENIZERS)."""
    key = _pre_tokenizer_key(data.get("pre_tokenizer"))
    if key in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[key]
    known = sorted(set(PRE_TOKENIZERS.values()))
    raise InputError(
        f"{path}: byte-level pre-tokenizer {key!r} has no known llama.cpp equivalent "
        f"(known: {', '.join(known)}); converting it would tokenize differently"
    )


def _pre_tokenizer_key(pre: dict | None) -> tuple[str, ...]:
    """A pre-tokenizer pipeline reduced to what decides how text is split."""
    steps = (pre.get("pretokenizers") or []) if pre and pre["type"] == "Sequence" else [pre]
    key: list[str] = []
    for step in steps:
        kind = (step or {}).get("type")
        if kind == "Split":
            key += ["split", step["pattern"].get("Regex") or step["pattern"].get("String")]
        elif kind == "ByteLevel":
            if step.get("use_regex", True):
                key.append("bytelevel")
        elif kind == "Digits" and step.get("individual_digits"):
            key.append("digits")
        else:
            key.append(str(kind))
    return tuple(key)


def _spm_style_vocab(data: dict, path: Path) -> Vocab:
    tokens, added = _tokens_by_id(data, path)
    unk = data["model"].get("unk_token")
    ranks = _first_merge_ranks(data["model"].get("merges") or [])
    lowest = -float(len(ranks) + 1)
    types, scores = [], []
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i], kind = f"[PAD{i}]", gguf.TokenType.UNUSED
        elif text in added and text != unk:
            kind = _added_type(added[text])
        elif text == unk:
            kind = gguf.TokenType.UNKNOWN
        elif _BYTE_TOKEN.fullmatch(text):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        types.append(kind)
        scores.append(-float(ranks[text]) if text in ranks else _base_score(text, lowest))
    return Vocab("llama", tokens, types, scores=scores, add_space_prefix=adds_space_prefix(data))


def _first_merge_ranks(merges: list) -> dict[str, int]:
    """For each piece a merge produces, the rank of the first (best) merge producing it."""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    return ranks


def _base_score(text: str, lowest: float) -> float:
    """Single characters are never a merge result, so their score is moot; a longer piece no
    merge makes gets the lowest score, so llama.cpp prefers every real merge to it."""
    return 0.0 if len(text) <= 1 else lowest


def adds_space_prefix(data: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (llama.cpp's add_space_prefix)."""
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers") or [normalizer]
    if any(s.get("type") == "Prepend" and s.get("prepend") == SPACE for s in steps):
        return True
    pre = data.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers") or [pre]:
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme")
            return scheme in ("first", "always") or (
                scheme is None and bool(step.get("add_prefix_space"))
            )
    return False


def vocab_from_sentencepiece(path: Path) -> Vocab:
    """A SentencePiece tokenizer.model: pieces, scores and types as the model stores them."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise InputError(
            f"{path} needs the sentencepiece package (pip install sentencepiece)"
        ) from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path} is not a readable SentencePiece model ({exc})") from None
    tokens, types, scores = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        types.append(_sentencepiece_type(sp, i))
    return Vocab("llama", tokens, types, scores=scores, add_space_prefix=True)


def _sentencepiece_type(sp, i: int) -> int:
    if sp.IsUnknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.IsControl(i):
        return gguf.TokenType.CONTROL
    if sp.IsUnused(i):
        return gguf.TokenType.UNUSED
    if sp.IsByte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def pad_vocab(vocab: Vocab, size: int) -> Vocab:
    """Placeholder tokens up to `size` ids, for embedding rows the tokenizer files do not name.

    transformers 5 gives qwen2 models an `<|endoftext|>` that tokenizer.json lacks, so such a
    model's embedding has one row more than tokenizer.json has tokens.
    """
    extra = range(len(vocab), size)
    return _append(vocab, [f"[PAD{i}]" for i in extra], gguf.TokenType.UNUSED)


def add_control_tokens(vocab: Vocab, texts: list[str]) -> Vocab:
    """Control tokens at the end of the vocabulary; user text can never produce them."""
    taken = set(vocab.tokens)
    clash = [t for t in texts if t in taken]
    if clash:
        raise InputError(f"token {clash[0]!r} is already in the vocabulary")
    return _append(vocab, texts, gguf.TokenType.CONTROL)


def _append(vocab: Vocab, texts: list[str], kind: int) -> Vocab:
    scores = None if vocab.scores is None else [*vocab.scores, *([0.0] * len(texts))]
    return replace(
        vocab,
        tokens=[*vocab.tokens, *texts],
        types=[*vocab.types, *([kind] * len(texts))],
        scores=scores,
    )


_SPECIAL_FLAGS = {gguf.Keys.Tokenizer.ADD_BOS: "bos", gguf.Keys.Tokenizer.ADD_EOS: "eos"}
"""The add-token switches by the name gguf-py's SpecialVocab gives them."""


def write_vocab(
    writer: gguf.GGUFWriter, vocab: Vocab, model_dir: Path, flags: dict | None = None
) -> None:
    """The tokenizer.ggml.* keys: tokens, types, scores or merges, special ids, chat template,
    and the add-BOS/EOS/space-prefix switches as the folder's files give them, except those in
    flags (key -> bool, or None to leave the key out)."""
    flags = dict(flags or {})
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre or "default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    prefix = flags.pop(gguf.Keys.Tokenizer.ADD_PREFIX, vocab.add_space_prefix)
    if prefix is not None:
        writer.add_add_space_prefix(bool(prefix))
    special = gguf.SpecialVocab(model_dir, load_merges=vocab.model == "gpt2", n_vocab=len(vocab))
    if vocab.model == "gpt2" and not special.merges:
        raise InputError(f"{model_dir}: the byte-level BPE tokenizer has no merges")
    for key, value in flags.items():
        if value is None:
            special.add_special_token.pop(_SPECIAL_FLAGS[key], None)
        else:
            special.add_special_token[_SPECIAL_FLAGS[key]] = bool(value)
    special.add_to_gguf(writer, quiet=True)
