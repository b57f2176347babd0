"""Tiny random models of every architecture localguard supports, in Hugging Face layout.

Tests (hidden states, probes, GGUF export parity) need real model folders that load with
``mlx_lm.load`` without downloading anything. The weights come from mlx-lm's own model class for
each model_type, so parameter names are exactly the ones mlx-lm and Hugging Face use. The configs
keep the features a converter must get right: rope theta and scaling, explicit head_dim, tied and
untied embeddings, qkv bias, q/k norm, Gemma's sliding-window pattern, Phi-3's fused qkv.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from localguard.starter.tokenizer import (
    BOS_TOKEN,
    CHAT_SPECIAL_TOKENS,
    EOS_TOKEN,
    PAD_TOKEN,
    special_tokens_map,
    tokenizer_config,
    train_tokenizer,
)

ARCHITECTURES: list[str] = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]

TOKENIZER_VOCAB = 384
SPM_VOCAB = 512  # 256 of these are the <0xXX> byte-fallback tokens
TOKENIZER_KINDS = ("bytelevel", "sentencepiece")
HIDDEN = 64
LAYERS = 2
GEMMA3_LAYERS = 6  # llama.cpp fixes Gemma 3's pattern at 5 sliding layers + 1 global layer
NORM_NOISE = 0.1  # norm weights are perturbed so a converter that drops or shifts them shows

_COMMON = {
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "max_position_embeddings": 2048,
    "torch_dtype": "float32",
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "use_cache": True,
}

_CONFIGS: dict[str, dict] = {
    # Llama 3.2 style: tied embeddings, GQA, llama3 rope scaling.
    "llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
    },
    # Mistral 7B v0.3 style: untied, GQA, plain rope.
    "mistral": {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    # Qwen2.5 style: qkv bias, tied.
    "qwen2": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": LAYERS,
        "tie_word_embeddings": True,
    },
    # Qwen3 style: q/k norm, head_dim * heads != hidden_size, tied.
    "qwen3": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": True,
    },
    # Gemma 3 1B style: one kv head, norm weights stored as (scale - 1), sliding window, tied.
    "gemma3": {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "num_hidden_layers": GEMMA3_LAYERS,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "query_pre_attn_scalar": 32,
        "sliding_window": 16,
        "sliding_window_pattern": 6,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": True,
    },
    # Phi-3 mini style: fused qkv and gate_up projections, untied.
    "phi3": {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    },
}

_SUBJECTS = ["the cat", "a robot", "my friend", "the old man", "a small bird", "the teacher"]
_VERBS = ["sees", "likes", "builds", "finds", "paints", "reads", "moves", "counts"]
_OBJECTS = ["a red box", "the river", "two apples", "a long letter", "the green door", "a map"]
_ENDINGS = [".", "!", "?", " today.", " again.", " at 7 pm.", " in 2024."]


def tokenizer_texts(seed: int = 0, count: int = 400) -> list[str]:
    """Short made-up sentences, enough for a few hundred BPE merges."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        texts.append(" ".join(parts).capitalize() + rng.choice(_ENDINGS))
    return texts


def model_config(arch: str, vocab_size: int, special_ids: dict[str, int]) -> dict:
    """The config.json contents for one architecture."""
    if arch not in _CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    config = {**_COMMON, **_CONFIGS[arch], "vocab_size": vocab_size}
    config.update(
        bos_token_id=special_ids[BOS_TOKEN],
        eos_token_id=special_ids[EOS_TOKEN],
        pad_token_id=special_ids[PAD_TOKEN],
    )
    return config


def _tokenizer_ids(folder: Path) -> tuple[int, dict[str, int]]:
    """Vocabulary size (with added tokens) and the ids of the special tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
    return tok.get_vocab_size(with_added_tokens=True), ids


def _loaded_vocab_size(folder: Path) -> int:
    """Token ids as transformers hands them out for this folder's config.json.

    transformers 5 picks the tokenizer class from the config's model_type, and Qwen2Tokenizer
    adds an ``<|endoftext|>`` unknown token that tokenizer.json does not have; the embedding
    must cover that id too.
    """
    from transformers import AutoTokenizer

    return max(AutoTokenizer.from_pretrained(str(folder)).get_vocab().values()) + 1


def _random_model(config: dict, seed: int):
    """mlx-lm's model for the config with random weights; norm weights get noise too."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    mx.random.seed(seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if config.get("tie_word_embeddings") and "lm_head" in model:
        model.pop("lm_head")  # gemma3_text always builds one and drops it when tied
    norms = [
        (name, value + NORM_NOISE * mx.random.normal(value.shape))
        for name, value in tree_flatten(model.parameters())
        if value.ndim == 1 and "norm" in name
    ]
    model.load_weights(norms, strict=False)
    mx.eval(model.parameters())
    return model


def make_tiny_model(arch: str, out: Path, seed: int = 0, tokenizer: str = "bytelevel") -> Path:
    """Write a tiny random `arch` model (config, weights, tokenizer) to `out` and return it.

    tokenizer "bytelevel" is the starter's byte-level BPE (Qwen2 pre-tokenizer); "sentencepiece"
    is a Llama/Mistral/Gemma-style "▁" BPE with byte fallback (see train_spm_tokenizer), with a
    space prefix except for gemma3, whose tokenizer adds none.
    """
    from mlx_lm.utils import save_config, save_model

    out = Path(out)
    if arch not in _CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; known: {', '.join(TOKENIZER_KINDS)}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if tokenizer == "sentencepiece":
            prefix = arch != "gemma3"
            train_spm_tokenizer(tokenizer_texts(seed), SPM_VOCAB, tmp, add_prefix_space=prefix)
        else:
            train_tokenizer(tokenizer_texts(seed), TOKENIZER_VOCAB, tmp)
        vocab_size, special_ids = _tokenizer_ids(tmp)
        config = model_config(arch, vocab_size, special_ids)
        save_config(dict(config), tmp / "config.json")
        config["vocab_size"] = max(vocab_size, _loaded_vocab_size(tmp))
        save_model(tmp, _random_model(config, seed))
        save_config(dict(config), tmp / "config.json")
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- SentencePiece-style tokenizer ----------------------------------------------------------

SPM_UNK = "<unk>"
SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


def _spm_pieces(texts: list[str], vocab_size: int, add_prefix_space: bool) -> list[str]:
    """Pieces of a BPE trained on "▁"-spaced text, in merge order (no specials, no bytes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPM_UNK, byte_fallback=True))
    tok.normalizer = _spm_normalizer(add_prefix_space)
    tok.pre_tokenizer = pre_tokenizers.Split(SPM_SPACE, behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def _spm_normalizer(add_prefix_space: bool):
    from tokenizers import normalizers

    replace = normalizers.Replace(" ", SPM_SPACE)
    if not add_prefix_space:
        return replace
    return normalizers.Sequence([normalizers.Prepend(SPM_SPACE), replace])


def complete_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of every piece into two pieces, ordered by the merged piece's id.

    This is how Hugging Face turns a SentencePiece model into tokenizer.json merges, and what
    makes BPE ranks agree with SentencePiece's "merge the highest-scoring piece" rule that
    llama.cpp's "llama" tokenizer applies (scores are -id).
    """
    merges = []
    for piece in sorted(vocab, key=vocab.__getitem__):
        pairs = [
            (piece[:i], piece[i:])
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab
        ]
        merges += sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]]))
    return merges


def build_spm_tokenizer(texts: list[str], vocab_size: int, add_prefix_space: bool = True):
    """A Llama-2/Mistral/Gemma-style tokenizer.json tokenizer: "▁" BPE with byte fallback.

    Layout as in those models: special tokens first (the chat ones, then <unk>), the 256
    <0xXX> byte tokens, then the pieces. Normalizer Prepend("▁") + Replace(" ", "▁") when
    add_prefix_space (Llama, Mistral), Replace only when not (Gemma); no pre-tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    specials = [*CHAT_SPECIAL_TOKENS, SPM_UNK]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    budget = vocab_size - len(specials) - len(bytes_)
    pieces = _spm_pieces(list(texts), budget, add_prefix_space)
    vocab = {t: i for i, t in enumerate(specials + bytes_)}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=complete_merges(vocab),
            unk_token=SPM_UNK,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tok.normalizer = _spm_normalizer(add_prefix_space)
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def train_spm_tokenizer(
    texts: list[str], vocab_size: int, out_dir: Path, add_prefix_space: bool = True
) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (SPM style)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_spm_tokenizer(texts, vocab_size, add_prefix_space)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {**tokenizer_config(), "unk_token": SPM_UNK}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_tokens_map(), indent=2) + "\n"
    )


def conversation_rows(n: int, seed: int = 0) -> list[dict]:
    """Harmful and benign chats of the tiny tokenizer's vocabulary, with onsets."""
    rng = random.Random(seed)
    things = ["the cat", "a robot", "my friend", "the teacher", "a small bird", "the river"]
    rows = []
    for i in range(n):
        thing = rng.choice(things)
        kind = i % 4
        if kind == 0:
            rows.append(
                {
                    "prompt": f"Tell me about {thing}.",
                    "response": f"{thing} reads a map.",
                    "query_label": 0,
                    "response_label": 0,
                }
            )
        elif kind == 1:
            rows.append(
                {
                    "prompt": f"How do I hurt {thing}?",
                    "response": "I can't help with that.",
                    "query_label": 1,
                    "response_label": 0,
                }
            )
        elif kind == 2:
            rows.append(
                {
                    "prompt": f"How do I hurt {thing}?",
                    "response": f"Sure, find {thing}.",
                    "query_label": 1,
                    "response_label": 1,
                    "onset": 0,
                }
            )
        else:
            prefix = "I can't help. Just kidding. "
            rows.append(
                {
                    "prompt": f"Please hurt {thing}.",
                    "response": prefix + "Sure, go.",
                    "query_label": 1,
                    "response_label": 1,
                    "onset": len(prefix),
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
