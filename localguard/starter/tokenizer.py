"""Byte-level BPE tokenizer for the starter model, trained with the `tokenizers` library.

The pre-tokenizer is exactly Qwen2's (regex split + byte-level without its own regex) and
there is no normalizer, so llama.cpp can load the GGUF export with its ``qwen2``
pre-tokenizer. The regex splits digits one by one, which helps the arithmetic skill.
Special tokens come first in the vocabulary (ids 0-5). No post-processor: the chat
template adds ``<|bos|>`` itself.

Training is deterministic: the same texts in the same order give byte-identical
``tokenizer.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from localguard.files import write_text

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
CHAT_SPECIAL_TOKENS = [EOS_TOKEN, BOS_TOKEN, PAD_TOKEN, "<|user|>", "<|assistant|>", "<|system|>"]
"""All special tokens, in vocabulary order; ``<|end|>`` ends a turn and is the eos token.

``<|end|>`` is id 0 on purpose: mlx-lm pads batches with id 0 and its default_loss counts one
padded position per row as a target, so whatever id 0 is gets trained after every reply. As
the end-of-turn token it is harmless (generation has stopped there); as ``<|bos|>`` it made
fine-tuned starter models write stray ``<|bos|>`` tokens into their answers."""

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MODEL_MAX_LENGTH = 2048


def qwen2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The Qwen2 pre-tokenizer, which llama.cpp recognises by name."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def _special_tokens() -> list[AddedToken]:
    return [AddedToken(t, special=True, normalized=False) for t in CHAT_SPECIAL_TOKENS]


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE model in memory."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = qwen2_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=_special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_special_tokens(_special_tokens())
    return tok


def tokenizer_config() -> dict:
    """tokenizer_config.json contents for transformers' PreTrainedTokenizerFast."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": CHAT_SPECIAL_TOKENS[3:],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }


def special_tokens_map() -> dict:
    return {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": CHAT_SPECIAL_TOKENS[3:],
    }


def _dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> None:
    """Train and write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(texts, vocab_size)
    write_text(out_dir / "tokenizer.json", tok.to_str(pretty=True) + "\n")
    write_text(out_dir / "tokenizer_config.json", _dump(tokenizer_config()))
    write_text(out_dir / "special_tokens_map.json", _dump(special_tokens_map()))
