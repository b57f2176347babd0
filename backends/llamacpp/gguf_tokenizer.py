"""A GGUF vocabulary as a Hugging Face tokenizer.json that tokenizes as llama.cpp does: the inverse
of gguf_vocab.py.

- "gpt2" (byte-level BPE): every token, the merges, and the pre-tokenizer pipeline that
  `tokenizer.ggml.pre` names, taken from gguf_vocab.PRE_TOKENIZERS read backwards, so a name
  is imported only where the exporter knows the pipeline that matches it. llama.cpp skips the
  merges for a word that is a whole token in its Llama 3 family ("ignore_merges"), and so does
  the rebuilt tokenizer.
- "llama" (SentencePiece style, "▁" pieces, byte fallback): llama.cpp merges the adjacent pair
  whose result has the highest score; a Hugging Face BPE merges the pair of lowest rank. Every
  split of every piece into two pieces, ranked by the merged piece's score (highest first), turns
  one rule into the other (transformers converts SentencePiece models the same way).

Every token is in the BPE vocabulary (llama.cpp looks any of them up by text), and the control,
unknown and user-defined ones are added tokens too: llama.cpp matches user-defined tokens in raw
text, control ones only with special-token parsing on, as Hugging Face treats non-special and
special added tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import gguf

from localguard.backends.llamacpp.gguf_vocab import PRE_TOKENIZERS, SPACE
from localguard.errors import InputError

HF_PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {}
"""llama.cpp pre-tokenizer name -> the Hugging Face pipeline (a PRE_TOKENIZERS key); the first
pipeline listed for a name wins."""
for _key, _name in PRE_TOKENIZERS.items():
    HF_PRE_TOKENIZERS.setdefault(_name, _key)

IGNORE_MERGES = frozenset({"llama-bpe"})
"""Pre-tokenizers for which llama.cpp takes a word that is a whole token as that token."""
ADDS_BOS = frozenset({"llama-bpe"})
"""Byte-level pre-tokenizers for which llama.cpp adds BOS when the file does not say."""

SPECIAL_KEYS = {
    "bos": gguf.Keys.Tokenizer.BOS_ID,
    "eos": gguf.Keys.Tokenizer.EOS_ID,
    "unk": gguf.Keys.Tokenizer.UNK_ID,
    "pad": gguf.Keys.Tokenizer.PAD_ID,
    "eot": gguf.Keys.Tokenizer.EOT_ID,
    "eom": gguf.Keys.Tokenizer.EOM_ID,
}
_ADDED_TYPES = (gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN, gguf.TokenType.USER_DEFINED)


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer.* keys of a GGUF file, in token-id order."""

    model: str  # "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    add_space_prefix: bool = True
    add_bos: bool = False
    add_eos: bool = False
    special: dict[str, int] = field(default_factory=dict)
    chat_template: str | None = None
    chat_templates: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def text(self, kind: str) -> str | None:
        """The text of a special token (bos, eos, unk, pad, eot, eom), None if the file has none."""
        tid = self.special.get(kind)
        return None if tid is None else self.tokens[tid]


def read_vocab(fields: dict, where: str) -> GGUFVocab:
    """The GGUFVocab of a file's metadata (key -> value); an unsupported tokenizer is an error."""
    model = fields.get(gguf.Keys.Tokenizer.MODEL)
    if model not in ("gpt2", "llama"):
        raise InputError(
            f"{where}: tokenizer model {model!r} cannot be imported (supported: gpt2 byte-level "
            "BPE, llama SentencePiece-style)"
        )
    tokens = [str(t) for t in fields.get(gguf.Keys.Tokenizer.LIST) or []]
    if not tokens:
        raise InputError(f"{where}: the file has no vocabulary (tokenizer.ggml.tokens)")
    types = [int(t) for t in fields.get(gguf.Keys.Tokenizer.TOKEN_TYPE) or []]
    types = types or [int(gguf.TokenType.NORMAL)] * len(tokens)
    scores = fields.get(gguf.Keys.Tokenizer.SCORES)
    if len(types) != len(tokens) or (scores is not None and len(scores) != len(tokens)):
        raise InputError(f"{where}: token types or scores do not match the {len(tokens)} tokens")
    pre = fields.get(gguf.Keys.Tokenizer.PRE)
    if model == "gpt2" and pre not in HF_PRE_TOKENIZERS:
        raise InputError(
            f"{where}: byte-level pre-tokenizer {pre!r} has no known Hugging Face equivalent "
            f"(known: {', '.join(sorted(HF_PRE_TOKENIZERS))}); importing it would tokenize "
            "differently"
        )
    merges = [str(m) for m in fields.get(gguf.Keys.Tokenizer.MERGES) or []]
    if model == "gpt2" and not merges:
        raise InputError(f"{where}: the byte-level BPE vocabulary has no merges")
    special = {}
    for kind, key in SPECIAL_KEYS.items():
        value = fields.get(key)
        if value is not None and 0 <= int(value) < len(tokens):
            special[kind] = int(value)
    if "unk" not in special and gguf.TokenType.UNKNOWN in types:
        special["unk"] = types.index(gguf.TokenType.UNKNOWN)
    add_bos = fields.get(gguf.Keys.Tokenizer.ADD_BOS)
    if add_bos is None:  # llama.cpp's default for the vocabulary type
        add_bos = model == "llama" or pre in ADDS_BOS
    named = {
        key.removeprefix(gguf.Keys.Tokenizer.CHAT_TEMPLATE + "."): str(value)
        for key, value in fields.items()
        if key.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE + ".")
    }
    template = fields.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    return GGUFVocab(
        model=model,
        tokens=tokens,
        types=types,
        scores=None if scores is None else [float(s) for s in scores],
        merges=merges,
        pre=None if pre is None else str(pre),
        add_space_prefix=bool(fields.get(gguf.Keys.Tokenizer.ADD_PREFIX, model == "llama")),
        add_bos=bool(add_bos),
        add_eos=bool(fields.get(gguf.Keys.Tokenizer.ADD_EOS, False)),
        special=special,
        chat_template=None if template is None else str(template),
        chat_templates=named,
    )


def resized(vocab: GGUFVocab, size: int) -> GGUFVocab:
    """The vocabulary cut or padded (with unused placeholders) to `size` ids, as the embedding
    has rows; special ids beyond it are dropped."""
    tokens, types = vocab.tokens[:size], vocab.types[:size]
    scores = None if vocab.scores is None else vocab.scores[:size]
    for i in range(len(tokens), size):
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
        if scores is not None:
            scores.append(0.0)
    special = {k: v for k, v in vocab.special.items() if v < size}
    return replace(vocab, tokens=tokens, types=types, scores=scores, special=special)


def _vocab_ids(tokens: list[str]) -> tuple[dict[str, int], int]:
    """text -> id for every token. A text that repeats keeps its last id (as llama.cpp's lookup
    does); the earlier ids get placeholders. Returns the map and how many were renamed."""
    vocab: dict[str, int] = {}
    renamed = 0
    for i, text in enumerate(tokens):
        if text in vocab:
            earlier = vocab.pop(text)
            vocab[f"[DUP{earlier}]"] = earlier
            renamed += 1
        vocab[text] = i
    return vocab, renamed


def spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of every piece into two pieces, by the merged piece's score (highest first),
    then its id, then the ids of the two halves."""
    ranked = []
    for piece, pid in vocab.items():
        pairs = [
            (piece[:i], piece[i:])
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab
        ]
        if pairs:
            pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
            ranked.append((-scores[pid], pid, pairs))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [pair for _, _, pairs in ranked for pair in pairs]


def _pre_tokenizer(name: str):
    """The Hugging Face pre-tokenizer for a llama.cpp name (see HF_PRE_TOKENIZERS)."""
    from tokenizers import Regex, pre_tokenizers

    key = HF_PRE_TOKENIZERS[name]
    steps, i = [], 0
    while i < len(key):
        if key[i] == "split":
            steps.append(pre_tokenizers.Split(Regex(key[i + 1]), behavior="isolated"))
            i += 2
            continue
        if key[i] == "digits":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        elif key[i] == "bytelevel":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            raise InputError(f"pre-tokenizer {name!r}: no Hugging Face step for {key[i]!r}")
        i += 1
    if "bytelevel" not in key:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def build_tokenizer(vocab: GGUFVocab):
    """A tokenizers.Tokenizer equivalent to llama.cpp's tokenizer for this vocabulary.

    Returns (tokenizer, number of token texts that repeat and were renamed)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    ids, renamed = _vocab_ids(vocab.tokens)
    try:
        if vocab.model == "gpt2":
            merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
            bpe = models.BPE(ids, merges, ignore_merges=vocab.pre in IGNORE_MERGES)
        else:
            scores = vocab.scores or [0.0] * len(vocab)
            bpe = models.BPE(
                ids,
                spm_merges(ids, scores),
                unk_token=vocab.text("unk"),
                fuse_unk=True,
                byte_fallback=True,
            )
    except Exception as exc:  # tokenizers raises a bare Exception for inconsistent merges
        raise InputError(f"the GGUF vocabulary is not a consistent BPE ({exc})") from None
    tok = Tokenizer(bpe)
    if vocab.model == "gpt2":
        tok.pre_tokenizer = _pre_tokenizer(str(vocab.pre))
        tok.decoder = decoders.ByteLevel()
    else:
        replace_space = normalizers.Replace(" ", SPACE)
        tok.normalizer = (
            normalizers.Sequence([normalizers.Prepend(SPACE), replace_space])
            if vocab.add_space_prefix
            else replace_space
        )
        steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if vocab.add_space_prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
        tok.decoder = decoders.Sequence(steps)
    special, plain = [], []
    for text, kind in zip(vocab.tokens, vocab.types, strict=True):
        if kind in _ADDED_TYPES:
            is_special = kind != gguf.TokenType.USER_DEFINED
            added = AddedToken(text, special=is_special, normalized=False)
            (special if is_special else plain).append(added)
    tok.add_special_tokens(special)
    tok.add_tokens(plain)
    tok.post_processor = _post_processor(vocab, processors)
    return tok, renamed


def _post_processor(vocab: GGUFVocab, processors):
    """BOS/EOS as the file asks for them (used only when a caller adds special tokens)."""
    bos = vocab.text("bos") if vocab.add_bos else None
    eos = vocab.text("eos") if vocab.add_eos else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False) if vocab.model == "gpt2" else None
    pre = [f"{bos}:0"] if bos else []
    post = [f"{eos}:0"] if eos else []
    single = " ".join([*pre, "$A:0", *post])
    pair = " ".join([*pre, "$A:0", *post, *[p.replace(":0", ":1") for p in pre], "$B:1", *post])
    specials = [(t, vocab.special[k]) for k, t in (("bos", bos), ("eos", eos)) if t]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def tokenizer_config(vocab: GGUFVocab, max_length: int) -> dict:
    """tokenizer_config.json: the class that takes tokenizer.json as it is, special tokens,
    BOS/EOS settings and the chat template(s)."""
    config: dict = {
        # transformers 5 builds a named class's own pipeline (GPT2Tokenizer: a plain
        # byte-level one); PreTrainedTokenizerFast follows tokenizer.json unchanged
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(max_length),
    }
    for kind in ("bos", "eos", "unk", "pad"):
        text = vocab.text(kind)
        if text is not None:
            config[f"{kind}_token"] = text
    if vocab.chat_templates:
        default = (
            [{"name": "default", "template": vocab.chat_template}] if vocab.chat_template else []
        )
        named = [{"name": n, "template": t} for n, t in vocab.chat_templates.items()]
        config["chat_template"] = default + named
    elif vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return config


def special_tokens_map(vocab: GGUFVocab) -> dict:
    """special_tokens_map.json, for older transformers."""
    return {
        f"{kind}_token": vocab.text(kind)
        for kind in ("bos", "eos", "unk", "pad")
        if vocab.text(kind) is not None
    }
