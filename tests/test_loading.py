"""MLX loading (backends/mlx/loading.py): the tokenizer follows tokenizer.json exactly, as the
GGUF export and llama.cpp do, whatever class tokenizer_config.json names; 16-bit weights run in
float32 on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_model, tokenizer_texts

from localguard.encoding import encode_chat, encode_text
from localguard.errors import InputError

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from localguard.backends.mlx import loading  # noqa: E402

SPLIT_TEXTS = [
    "\n\n1.",
    "a  2",
    "x\t\ty",
    "a\r\nb",
    "of them:\n\n1.",
    "x\t\t3",
    "a\r\n4",
    "Step 1:\t 22  apples",
]
"""Whitespace runs before digits: a plain byte-level pre-tokenizer keeps " 2" together and
splits "\\n\\n" before a digit, SmolLM's (digits first) does neither."""
TRAINING_TEXTS = [
    f"{a}{ws}{n}{end}"
    for a in ("of them:", "a", "x", "Step", "list")
    for ws in ("\n\n", "  ", "\t\t", "\r\n", " ", "\n")
    for n in ("1", "2", "10", "y", "b")
    for end in (".", "", " ok")
] * 3


def _smollm_tokenizer():
    """A byte-level BPE with SmolLM's pre-tokenizer (digits one by one, then GPT-2's regex),
    with merges for the whitespace runs ("\\n\\n", two spaces, two tabs, CRLF)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from localguard.starter.tokenizer import CHAT_SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(tokenizer_texts(3) + TRAINING_TEXTS, trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def smollm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama whose tokenizer.json splits digits (SmolLM's pre-tokenizer) and whose
    tokenizer_config.json names GPT2Tokenizer, as SmolLM2's hub folders do."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("loading")
    folder = make_tiny_model("llama", root / "smollm")
    tok = _smollm_tokenizer()
    n_vocab = tok.get_vocab_size()
    tok.save(str(folder / "tokenizer.json"))
    config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**tok_config, "tokenizer_class": "GPT2Tokenizer"}))
    weights = load_file(str(folder / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"]
    rows = np.random.default_rng(0).normal(scale=0.02, size=(n_vocab, emb.shape[1]))
    weights["model.embed_tokens.weight"] = rows.astype(emb.dtype)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "mlx"})
    config = json.loads((folder / "config.json").read_text())
    ids = {t: tok.token_to_id(t) for t in ("<|bos|>", "<|end|>", "<|pad|>")}
    config.update(
        vocab_size=n_vocab,
        bos_token_id=ids["<|bos|>"],
        eos_token_id=ids["<|end|>"],
        pad_token_id=ids["<|pad|>"],
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").unlink()
    return folder


def _file_ids(folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return tok.encode(text, add_special_tokens=False).ids


def test_transformers_alone_splits_otherwise(smollm_folder: Path) -> None:
    """The defect this module fixes: with the class the config names, transformers drops the
    digit split, so some of the texts tokenize differently from tokenizer.json."""
    from mlx_lm.utils import load_tokenizer

    plain = load_tokenizer(smollm_folder)
    want = json.loads((smollm_folder / "tokenizer.json").read_text())
    assert "pre_tokenizer" in loading.pipeline_differences(plain._tokenizer, want)
    differ = [t for t in SPLIT_TEXTS if encode_text(plain, t) != _file_ids(smollm_folder, t)]
    assert {"\n\n1.", "a  2", "of them:\n\n1.", "x\t\t3", "a\r\n4"} <= set(differ)


def test_tokenizer_follows_tokenizer_json(smollm_folder: Path) -> None:
    """Every text tokenizes as tokenizers' own reading of tokenizer.json, and decodes back;
    the config's special tokens and chat template survive the rebuild."""
    tokenizer = loading.load_tokenizer(smollm_folder)
    want = json.loads((smollm_folder / "tokenizer.json").read_text())
    assert loading.pipeline_differences(tokenizer._tokenizer, want) == []
    for text in SPLIT_TEXTS + tokenizer_texts(5, 20):
        ids = encode_text(tokenizer, text)
        assert ids == _file_ids(smollm_folder, text), text
        assert tokenizer.decode(ids) == text
    assert "\n\n" in [tokenizer.decode([i]) for i in encode_text(tokenizer, "of them:\n\n1.")]
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert tokenizer.eos_token == "<|end|>" and end in tokenizer.eos_token_ids
    assert tokenizer.bos_token == "<|bos|>" and tokenizer.pad_token == "<|pad|>"
    chat = encode_chat(tokenizer, [{"role": "user", "content": "a  2"}], True)
    assert chat[0] == tokenizer.bos_token_id and chat[-1] == _file_ids(smollm_folder, "\n")[0]
    detok = tokenizer.detokenizer
    detok.reset()
    for i in encode_text(tokenizer, "of them:\n\n1."):
        detok.add_token(i)
    detok.finalize()
    assert detok.text == "of them:\n\n1."


def test_llama_cpp_tokenizes_the_export_alike(smollm_folder: Path, tmp_path: Path) -> None:
    """The GGUF of the folder (llama.cpp's smollm pre-tokenizer) gives the same ids as MLX."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from localguard.backends.llamacpp.convert import convert_to_gguf

    info = convert_to_gguf(smollm_folder, tmp_path / "m.gguf", outtype="f32")
    assert info["pre_tokenizer"] == "smollm"
    model, tokenizer = loading.load_model(smollm_folder)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, verbose=False)
    try:
        for text in SPLIT_TEXTS:
            got = llm.tokenize(text.encode(), add_bos=False, special=False)
            assert got == encode_text(tokenizer, text) == _file_ids(smollm_folder, text), text
    finally:
        llm.close()


def test_an_unfixable_tokenizer_is_refused(smollm_folder: Path, monkeypatch) -> None:
    """Where even the rebuild differs from tokenizer.json: one line naming both pipelines."""
    from mlx_lm.utils import load_tokenizer
    from transformers import PreTrainedTokenizerFast

    plain = load_tokenizer(smollm_folder)._tokenizer
    monkeypatch.setattr(PreTrainedTokenizerFast, "from_pretrained", lambda *_a, **_k: plain)
    with pytest.raises(InputError) as err:
        loading.load_tokenizer(smollm_folder)
    message = str(err.value)
    assert "\n" not in message
    assert "ByteLevel" in message and "Sequence[Digits, ByteLevel]" in message


def test_a_matching_tokenizer_is_kept(tmp_path: Path) -> None:
    """A folder transformers already reads as its tokenizer.json keeps transformers' object."""
    from mlx_lm.utils import load_tokenizer

    folder = make_tiny_model("llama", tmp_path / "m")
    want = json.loads((folder / "tokenizer.json").read_text())
    assert loading.pipeline_differences(load_tokenizer(folder)._tokenizer, want) == []
    tokenizer = loading.load_tokenizer(folder)
    assert type(tokenizer._tokenizer) is type(load_tokenizer(folder)._tokenizer)


def test_float16_loads_as_float32_on_the_cpu(tmp_path: Path) -> None:
    """16-bit weights are widened on the CPU (and only there); the logits are those of the
    16-bit weights computed in float32."""
    from mlx.utils import tree_flatten
    from safetensors.numpy import load_file, save_file

    folder = make_tiny_model("qwen3", tmp_path / "m32")
    half = tmp_path / "m16"
    shutil.copytree(folder, half)
    weights = load_file(str(folder / "model.safetensors"))
    weights = {k: v.astype(np.float16) for k, v in weights.items()}
    save_file(weights, str(half / "model.safetensors"), metadata={"format": "mlx"})
    model, tokenizer = loading.load_model(half)
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    if mx.default_device().type == mx.DeviceType.cpu:
        assert dtypes == {mx.float32}
    else:
        assert dtypes == {mx.float16}
    from mlx_lm.utils import load_model as mlx_load_model

    raw, _ = mlx_load_model(half)
    raw.set_dtype(mx.float32)
    ids = mx.array([encode_text(tokenizer, "The cat sees a map.")])
    np.testing.assert_allclose(np.array(model(ids)), np.array(raw(ids)), atol=1e-5)
