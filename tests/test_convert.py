"""localguard's GGUF converter, proven against mlx-lm on tiny random models of every architecture.

For each architecture the same Hugging Face folder is loaded by mlx-lm and, converted, by stock
llama.cpp; both must tokenize the same texts to the same ids and compute the same logits. llama.cpp
runs with an F32 KV cache so that only the converter's own rounding is measured.

Measured max |logit difference| over a 23-28 token prompt (logits of magnitude 2-9):
F32 1.2e-6..2.4e-6 for the SiLU models and 1.2e-2 for gemma3, whose GELU ggml evaluates through
an F16 lookup table (emulating that table in MLX brings gemma3 to ~3e-3); F16 weights
1.5e-3..3.3e-3, gemma3 5.8e-2. Tolerances: F32 1e-4, F16 1e-2; gemma3 5e-2 and 1.5e-1.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import ARCHITECTURES, make_tiny_model, tokenizer_texts

from localguard.encoding import encode_chat, encode_text
from localguard.errors import InputError, LocalguardError

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from localguard.backends.llamacpp import gguf_keys as keys  # noqa: E402
from localguard.backends.llamacpp.convert import (  # noqa: E402
    IMPORT_SECTION,
    ExtraRow,
    convert_to_gguf,
    llama3_rope_factors,
    load_tensor,
    read_safetensors_header,
)

CASES: dict[str, tuple[str, str]] = {
    "llama-spm": ("llama", "sentencepiece"),
    "llama-bytelevel": ("llama", "bytelevel"),
    "mistral-spm": ("mistral", "sentencepiece"),
    "qwen2": ("qwen2", "bytelevel"),
    "qwen3": ("qwen3", "bytelevel"),
    "gemma3-spm": ("gemma3", "sentencepiece"),
    "phi3-spm": ("phi3", "sentencepiece"),
}
TOLERANCE = {"f32": 1e-4, "f16": 1e-2}
GEMMA3_TOLERANCE = {"f32": 5e-2, "f16": 1.5e-1}  # ggml's F16 GELU table, see the module doc

TEXTS = [
    "The cat sees a map.",
    " leading space and trailing space ",
    "Héllo wörld, naïve café: 3 ✓ 12345 6789",
    "a  b\n\nc\t d   e\n",
    "can't won't I'm they're we'll I'd you've",
    "typed <|end|> and <|bos|> stay plain text",
    "emoji 🙂 and 中文 too",
    "The old man paints the green door at 7 pm in 2024!",
    "Hi!\n\nOK...   \r\n  The END?!",
]


def _glued_texts(seed: int = 0, count: int = 100) -> list[str]:
    """Words run together: the only texts on these tiny vocabularies where the order of BPE
    merges (SentencePiece scores) changes the result (flat scores fail ~1 in 6 of them)."""
    rng = random.Random(seed)
    words = sorted(set(" ".join(tokenizer_texts(seed, 100)).split()))
    glue = [" ", "", "!", " ok", "\n\n"]
    return [
        "".join(rng.choice(words) for _ in range(3)) + rng.choice(glue) + rng.choice(words)
        for _ in range(count)
    ]


GLUED = _glued_texts()
PROMPT = (
    "The teacher builds a long letter today. A small bird counts two apples again! "
    "My friend reads the river at 7 pm."
)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        case: make_tiny_model(arch, root / case, tokenizer=kind)
        for case, (arch, kind) in CASES.items()
    }


@pytest.fixture(scope="module")
def gguf_file(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """gguf_file(case, outtype): the converted file, converted once per module."""
    root = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(case: str, outtype: str = "f32") -> Path:
        if (case, outtype) not in cache:
            path = root / f"{case}-{outtype}.gguf"
            convert_to_gguf(models[case], path, outtype=outtype)
            cache[case, outtype] = path
        return cache[case, outtype]

    return get


@pytest.fixture(scope="module")
def mlx_model(models: dict[str, Path]):
    """mlx_model(case): (model, tokenizer) from mlx_lm.load, loaded once per module."""
    cache: dict[str, tuple] = {}

    def get(case: str):
        if case not in cache:
            cache[case] = mlx_lm.load(str(models[case]))
        return cache[case]

    return get


def _llama(path: Path):
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=128,
        n_batch=128,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _mlx_logits(model, ids: list[int]) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def _mlx_hidden(model, ids: list[int]) -> np.ndarray:
    """The final normalized hidden state, the vector the LM head (and extra rows) read."""
    lm = getattr(model, "language_model", model)
    return np.array(lm.model(mx.array([ids]))[0].astype(mx.float32))


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def _tolerance(case: str, outtype: str) -> float:
    return (GEMMA3_TOLERANCE if case.startswith("gemma3") else TOLERANCE)[outtype]


# --- parity -------------------------------------------------------------------------------


def test_every_architecture_is_covered() -> None:
    assert {arch for arch, _ in CASES.values()} == set(ARCHITECTURES)
    assert {kind for _, kind in CASES.values()} == {"bytelevel", "sentencepiece"}


@pytest.mark.parametrize("case", CASES)
def test_tokenization_matches_mlx_lm(case: str, gguf_file, mlx_model) -> None:
    _, tokenizer = mlx_model(case)
    llm = _llama(gguf_file(case))
    for text in TEXTS + GLUED:
        expected = encode_text(tokenizer, text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, text
    llm.close()


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("case", CASES)
def test_logits_match_mlx_lm(case: str, outtype: str, gguf_file, mlx_model) -> None:
    model, tokenizer = mlx_model(case)
    ids = encode_text(tokenizer, PROMPT)
    assert len(ids) > 16  # past gemma3's sliding window of 16
    llm = _llama(gguf_file(case, outtype))
    got, want = _llama_logits(llm, ids), _mlx_logits(model, ids)
    llm.close()
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    assert diff < _tolerance(case, outtype), f"{case} {outtype}: max logit diff {diff:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_tied_and_untied_output(case: str, models: dict[str, Path], gguf_file) -> None:
    config = json.loads((models[case] / "config.json").read_text())
    tensors = _tensors(gguf_file(case))
    assert ("output.weight" in tensors) == (not config["tie_word_embeddings"])
    assert tensors["token_embd.weight"][0] == (config["hidden_size"], config["vocab_size"])


@pytest.mark.parametrize("case", CASES)
def test_metadata_round_trip(case: str, models: dict[str, Path], gguf_file) -> None:
    arch, kind = CASES[case]
    config = json.loads((models[case] / "config.json").read_text())
    tok_config = json.loads((models[case] / "tokenizer_config.json").read_text())
    fields = _fields(gguf_file(case))
    name = fields["general.architecture"]
    assert name == {"mistral": "llama", "gemma3": "gemma3"}.get(arch, arch)
    assert fields[f"{name}.block_count"] == config["num_hidden_layers"]
    assert fields[f"{name}.embedding_length"] == config["hidden_size"]
    assert fields[f"{name}.attention.head_count"] == config["num_attention_heads"]
    assert fields[f"{name}.attention.head_count_kv"] == config["num_key_value_heads"]
    assert fields[f"{name}.context_length"] == config["max_position_embeddings"]
    assert fields["general.file_type"] == 0  # ALL_F32
    assert fields["tokenizer.ggml.model"] == ("gpt2" if kind == "bytelevel" else "llama")
    if kind == "bytelevel":
        assert fields["tokenizer.ggml.pre"] == "qwen2"
        assert len(fields["tokenizer.ggml.merges"]) > 100
    else:
        assert len(fields["tokenizer.ggml.scores"]) == config["vocab_size"]
        assert fields["tokenizer.ggml.add_space_prefix"] is (arch != "gemma3")
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert fields["tokenizer.ggml.bos_token_id"] == config["bos_token_id"]
    assert fields["tokenizer.ggml.eos_token_id"] == config["eos_token_id"]
    assert fields["tokenizer.ggml.padding_token_id"] == config["pad_token_id"]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tok_config["chat_template"]
    types = fields["tokenizer.ggml.token_type"]
    assert types[config["eos_token_id"]] == gguf.TokenType.CONTROL


# --- provenance -----------------------------------------------------------------------------


def test_provenance_from_the_model_card(models: dict[str, Path], tmp_path: Path) -> None:
    """A hub folder gets what llama.cpp's converter writes (gguf-py's Metadata): licence, base
    model and languages from the README.md front matter, the name from the folder, the size
    label from the parameter count, type "model"; a fused copy is described by card_dir."""
    folder = _copy(models["qwen3"], tmp_path)
    (folder / "README.md").write_text(
        "---\nlicense: apache-2.0\nbase_model: some-org/Some-Base-7B\nlanguage:\n- en\n---\n"
    )
    out = tmp_path / "card.gguf"
    info = convert_to_gguf(folder, out, outtype="f32")
    fields = _fields(out)
    assert fields["general.license"] == "apache-2.0"
    assert fields["general.languages"] == ["en"]
    assert fields["general.base_model.count"] == 1
    assert fields["general.base_model.0.repo_url"] == "https://huggingface.co/some-org/Some-Base-7B"
    assert fields["general.type"] == "model"
    assert fields["general.name"].lower() == "qwen3"
    assert fields["general.size_label"].endswith("K")  # a tiny model: thousands of parameters
    assert info["provenance"]["general.license"] == "apache-2.0"
    plain = _fields(convert_to_gguf(models["qwen2"], tmp_path / "plain.gguf")["path"])
    assert "general.license" not in plain and plain["general.name"].lower() == "qwen2"
    fused = tmp_path / ".fused-123"
    shutil.copytree(folder, fused)
    convert_to_gguf(fused, tmp_path / "fused.gguf", outtype="f32", card_dir=folder)
    assert _fields(tmp_path / "fused.gguf")["general.name"] == fields["general.name"]
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    with pytest.raises(InputError, match="model card is not readable") as err:
        convert_to_gguf(folder, tmp_path / "bad.gguf")
    assert "\n" not in str(err.value)


def test_head_dim_keys_only_for_an_explicit_head_dim(models: dict[str, Path], gguf_file) -> None:
    """As llama.cpp's converter: key/value length written where config.json has head_dim."""
    for case in ("llama-spm", "qwen2"):
        config = json.loads((models[case] / "config.json").read_text())
        fields = _fields(gguf_file(case))
        arch = fields["general.architecture"]
        assert fields.get(f"{arch}.attention.key_length") == config.get("head_dim")
        assert fields.get(f"{arch}.attention.value_length") == config.get("head_dim")


def test_add_prefix_space_as_the_llama_converter_writes_it(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """tokenizer_config.json's add_prefix_space becomes tokenizer.ggml.add_space_prefix for a
    byte-level llama (llama.cpp's LlamaModel), not for qwen2 (whose converter ignores it)."""
    key = gguf.Keys.Tokenizer.ADD_PREFIX
    for case, written in (("llama-bytelevel", True), ("qwen2", False)):
        folder = _copy(models[case], tmp_path)
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "add_prefix_space": False}))
        fields = _fields(convert_to_gguf(folder, tmp_path / f"{case}.gguf")["path"])
        assert (fields.get(key) is False) is written, case
        assert key not in _fields(convert_to_gguf(models[case], tmp_path / "p.gguf")["path"])


def test_an_imported_folder_writes_its_recorded_provenance(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """config.json's localguard_import section: general.* keys with their recorded types (typed
    from the values for an import that recorded none), this file's own file type and
    architecture, the recorded tokenizer switches (one the source lacked left out), and a
    Phi-3 name left out where llama.cpp would look for Phi-3's own tokens."""
    folder = _copy(models["qwen3"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    general = {
        "general.architecture": "llama",
        "general.file_type": 3,
        "general.name": "Source Model",
        "general.license": "apache-2.0",
        "general.base_model.count": 1,
        "general.base_model.0.name": "Base",
        "general.languages": ["en", "de"],
        "general.sampling.top_k": 40,
    }
    section = {
        "general": general,
        "general_types": {
            "general.sampling.top_k": ["INT32"],
            "general.languages": ["ARRAY", "STRING"],
        },
        "tokenizer": {"flags": {gguf.Keys.Tokenizer.ADD_BOS: True}},
    }
    (folder / "config.json").write_text(json.dumps({**config, IMPORT_SECTION: section}))
    out = tmp_path / "imported.gguf"
    convert_to_gguf(folder, out, outtype="f32")
    reader = gguf.GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    types = {k: [t.name for t in f.types] for k, f in reader.fields.items()}
    for key in ("general.name", "general.license", "general.base_model.0.name"):
        assert fields[key] == general[key]
    assert (fields["general.base_model.count"], types["general.base_model.count"]) == (
        1,
        ["UINT32"],
    )
    assert (fields["general.sampling.top_k"], types["general.sampling.top_k"]) == (40, ["INT32"])
    assert fields["general.languages"] == ["en", "de"]
    assert (fields["general.architecture"], fields["general.file_type"]) == ("qwen3", 0)
    assert "general.type" not in fields  # the source had none
    assert fields[gguf.Keys.Tokenizer.ADD_BOS] is True
    plain = _fields(convert_to_gguf(models["qwen3"], tmp_path / "plain.gguf")["path"])
    assert gguf.Keys.Tokenizer.ADD_EOS in plain  # SpecialVocab's, from tokenizer_config.json
    assert gguf.Keys.Tokenizer.ADD_EOS not in fields  # the source had none
    phi3 = _copy(models["phi3-spm"], tmp_path)
    config = json.loads((phi3 / "config.json").read_text())
    section = {"general": {"general.name": "Phi-3 Mini", "general.license": "mit"}}
    (phi3 / "config.json").write_text(json.dumps({**config, IMPORT_SECTION: section}))
    fields = _fields(convert_to_gguf(phi3, tmp_path / "phi3.gguf")["path"])
    assert "general.name" not in fields and fields["general.license"] == "mit"
    bad = {"general": {"general.tags": []}}
    (phi3 / "config.json").write_text(json.dumps({**config, IMPORT_SECTION: bad}))
    with pytest.raises(InputError, match="unreadable general.tags"):
        convert_to_gguf(phi3, tmp_path / "bad.gguf")


def test_f16_file_keeps_norms_in_f32(gguf_file) -> None:
    tensors = _tensors(gguf_file("qwen2", "f16"))
    assert _fields(gguf_file("qwen2", "f16"))["general.file_type"] == 1  # MOSTLY_F16
    assert tensors["blk.0.attn_q.weight"][1] == "F16"
    assert tensors["blk.0.attn_q.bias"][1] == "F32"
    assert tensors["blk.0.attn_norm.weight"][1] == "F32"


def test_qwen2_vocabulary_padded_to_the_embedding(models: dict[str, Path], gguf_file) -> None:
    """transformers 5 adds <|endoftext|> to qwen2 tokenizers: one embedding row more than
    tokenizer.json has tokens. The GGUF vocabulary covers it with an unused placeholder."""
    folder = models["qwen2"]
    in_json = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == in_json + 1
    fields = _fields(gguf_file("qwen2"))
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert fields["tokenizer.ggml.tokens"][-1] == f"[PAD{in_json}]"
    assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED


def test_llama3_rope_freqs_match_mlx_lm(models: dict[str, Path], gguf_file, mlx_model) -> None:
    config = json.loads((models["llama-spm"] / "config.json").read_text())
    rope = mlx_model("llama-spm")[0].model.layers[0].self_attn.rope
    dims, base = config["head_dim"], config["rope_theta"]
    unscaled = base ** (np.arange(0, dims, 2) / dims)
    expected = np.array(rope._freqs) / unscaled  # mlx-lm stores the scaled periods
    factors = llama3_rope_factors(config)
    np.testing.assert_allclose(factors, expected, rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == config["rope_scaling"]["factor"]
    tensors = _tensors(gguf_file("llama-spm"))
    assert tensors["rope_freqs.weight"] == ((dims // 2,), "F32")
    assert "rope_freqs.weight" not in _tensors(gguf_file("mistral-spm"))


def test_gemma3_local_rope_base(models: dict[str, Path], tmp_path: Path) -> None:
    """The sliding-window layers' rope base travels in the file (llama.cpp's default is 10000)."""
    folder = _copy(models["gemma3-spm"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_local_base_freq": 100.0}))
    convert_to_gguf(folder, tmp_path / "g.gguf", outtype="f32")
    assert _fields(tmp_path / "g.gguf")["gemma3.rope.freq_base_swa"] == 100.0
    model, tokenizer = mlx_lm.load(str(folder))
    ids = encode_text(tokenizer, PROMPT)
    llm = _llama(tmp_path / "g.gguf")
    diff = np.abs(_llama_logits(llm, ids) - _mlx_logits(model, ids)).max()
    llm.close()
    assert diff < GEMMA3_TOLERANCE["f32"], diff


def test_phi3_longrope(models: dict[str, Path], tmp_path: Path) -> None:
    """Phi-3.5's longrope: factor tensors and attention factor. llama.cpp takes the long factors
    when its context exceeds the original one (here 32 < 128), as mlx-lm always does."""
    folder = _copy(models["phi3-spm"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    rng = np.random.default_rng(0)
    scaling = {
        "type": "longrope",
        "long_factor": [float(x) for x in 1 + 3 * rng.random(8)],
        "short_factor": [float(x) for x in 1 + 0.1 * rng.random(8)],
    }
    config.update(original_max_position_embeddings=32, rope_scaling=scaling)
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "long.gguf"
    convert_to_gguf(folder, out, outtype="f32")
    tensors, fields = _tensors(out), _fields(out)
    assert tensors["rope_factors_long.weight"] == ((8,), "F32")
    assert tensors["rope_factors_short.weight"] == ((8,), "F32")
    assert fields["phi3.rope.scaling.attn_factor"] == pytest.approx(
        np.sqrt(1 + np.log(4096 / 32) / np.log(32))
    )
    model, tokenizer = mlx_lm.load(str(folder))
    ids = encode_text(tokenizer, PROMPT)
    llm = _llama(out)
    diff = np.abs(_llama_logits(llm, ids) - _mlx_logits(model, ids)).max()
    llm.close()
    assert diff < TOLERANCE["f32"], diff


def test_starter_model(starter_model: Path, tmp_path: Path) -> None:
    """The starter world (llama, Qwen2 pre-tokenizer): chats, control tokens and logits."""
    out = tmp_path / "starter.gguf"
    info = convert_to_gguf(starter_model, out, outtype="f32")
    assert (info["architecture"], info["pre_tokenizer"]) == ("llama", "qwen2")
    model, tokenizer = mlx_lm.load(str(starter_model))
    llm = _llama(out)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == encode_text(
            tokenizer, text
        )
    chat = [{"role": "user", "content": "What is 12 plus 7?"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = encode_chat(tokenizer, chat, add_generation_prompt=True)
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids
    diff = np.abs(_llama_logits(llm, ids) - _mlx_logits(model, ids)).max()
    llm.close()
    assert diff < TOLERANCE["f32"] * 10, diff  # hidden 256: more rounding than the tiny models


# --- extra rows (safety head) -------------------------------------------------------------


def _rows(hidden: int, seed: int = 0) -> list[ExtraRow]:
    """Two head rows whose logits are of the size of the LM head's (a few units)."""
    rng = np.random.default_rng(seed)
    weights = (rng.normal(size=(2, hidden)) / np.sqrt(hidden)).astype(np.float32)
    return [ExtraRow("query", weights[0], 0.5), ExtraRow("response", weights[1], -1.25)]


@pytest.mark.parametrize("case", ["qwen3", "mistral-spm", "gemma3-spm"])  # tied, untied, tied
def test_extra_rows(case: str, models: dict[str, Path], mlx_model, tmp_path: Path) -> None:
    model, tokenizer = mlx_model(case)
    config = json.loads((models[case] / "config.json").read_text())
    n_vocab, rows = config["vocab_size"], _rows(config["hidden_size"])
    out = tmp_path / "head.gguf"
    info = convert_to_gguf(models[case], out, extra_rows=rows, outtype="f32")
    assert info["extra_token_ids"] == {"query": n_vocab, "response": n_vocab + 1}

    fields = _fields(out)
    assert fields[keys.HEAD_NAMES] == ["query", "response"]
    assert fields[keys.HEAD_TOKEN_IDS] == [n_vocab, n_vocab + 1]
    assert fields[keys.HEAD_BIAS] == [0.5, -1.25]
    assert fields["tokenizer.ggml.tokens"][n_vocab:] == [r.token for r in rows]
    assert fields["tokenizer.ggml.token_type"][n_vocab:] == [gguf.TokenType.CONTROL] * 2

    ids = encode_text(tokenizer, PROMPT)
    llm = _llama(out)
    got = _llama_logits(llm, ids)
    weights = np.stack([r.weight for r in rows])
    tolerance = _tolerance(case, "f32")
    assert np.abs(got[:, :n_vocab] - _mlx_logits(model, ids)).max() < tolerance
    assert np.abs(got[:, n_vocab:] - _mlx_hidden(model, ids) @ weights.T).max() < tolerance

    # typed, the control token's text stays text; llama.cpp still generates ordinary tokens
    assert n_vocab not in llm.tokenize(rows[0].token.encode(), add_bos=False, special=False)
    assert llm.tokenize(rows[0].token.encode(), add_bos=False, special=True) == [n_vocab]
    masked = _generate_masked(llm, ids, [n_vocab, n_vocab + 1], steps=6)
    llm.close()
    assert len(masked) == 6 and all(t < n_vocab for t in masked)


def _generate_masked(llm, prompt: list[int], banned: list[int], steps: int) -> list[int]:
    """Greedy decoding with the extra rows masked, as the guard does."""

    def mask(_ids, scores):
        scores[banned] = -np.inf
        return scores

    out = []
    processors = llama_cpp.LogitsProcessorList([mask])
    for token in llm.generate(prompt, temp=0.0, logits_processor=processors, reset=True):
        out.append(token)
        if len(out) == steps:
            break
    return out


def test_extra_rows_are_checked(models: dict[str, Path], tmp_path: Path) -> None:
    folder, out = models["qwen3"], tmp_path / "x.gguf"
    with pytest.raises(InputError, match="64 finite weights"):
        convert_to_gguf(folder, out, extra_rows=[ExtraRow("query", np.zeros(3))])
    with pytest.raises(InputError, match="unique"):
        convert_to_gguf(folder, out, extra_rows=[ExtraRow("Bad Name", np.zeros(64))])
    assert not out.exists()


# --- failures -----------------------------------------------------------------------------


def test_failure_midway_leaves_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous file")

    def explode(done: int, total: int, name: str) -> None:
        if done == 3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_to_gguf(models["qwen3"], out, outtype="f32", progress=explode)
    assert out.read_bytes() == b"previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_progress_reports_every_tensor(models: dict[str, Path], tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    info = convert_to_gguf(
        models["phi3-spm"], tmp_path / "p.gguf", progress=lambda *a: seen.append(a)
    )
    assert [s[0] for s in seen] == list(range(1, info["n_tensors"] + 1))
    assert {s[2] for s in seen} == set(_tensors(tmp_path / "p.gguf"))


def test_half_precision_weights_are_read_exactly(tmp_path: Path) -> None:
    """Hub checkpoints are mostly bf16 (which numpy lacks) or f16; both widen to f32 exactly."""
    values = mx.random.normal((3, 5))
    path = tmp_path / "w.safetensors"
    mx.save_safetensors(
        str(path), {"b": values.astype(mx.bfloat16), "h": values.astype(mx.float16)}
    )
    refs = read_safetensors_header(path)
    assert (refs["b"].dtype, refs["h"].dtype, refs["b"].shape) == ("BF16", "F16", (3, 5))
    for name, dtype in (("b", mx.bfloat16), ("h", mx.float16)):
        expected = np.array(values.astype(dtype).astype(mx.float32))
        np.testing.assert_array_equal(load_tensor(refs[name]), expected)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_damaged_safetensors_is_one_clear_error(
    damage: str, models: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(models["llama-spm"], tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.write_bytes((100).to_bytes(8, "little") + b"{not json" + data[17:])
    out = tmp_path / "x.gguf"
    with pytest.raises(LocalguardError) as err:
        convert_to_gguf(folder, out)
    message = str(err.value)
    assert "model.safetensors" in message and "\n" not in message
    assert not out.exists()


def test_unsupported_architecture_lists_the_supported(models: dict[str, Path], tmp_path: Path):
    folder = _copy(models["qwen3"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    supported = "llama, mistral, qwen2, qwen3, gemma3_text, phi3"
    with pytest.raises(InputError, match=f"gpt_neox.*{supported}"):
        convert_to_gguf(folder, tmp_path / "x.gguf")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": yarn}))
    with pytest.raises(InputError, match="rope scaling 'yarn'"):
        convert_to_gguf(folder, tmp_path / "x.gguf")


# --- other tokenizers ---------------------------------------------------------------------


def _with_vocab(src: Path, dst: Path, n_vocab: int, **token_ids: int) -> Path:
    """A copy of a tiny model with its embedding resized to n_vocab, no tokenizer files, and
    the special token ids (bos_token_id=...) given; the others are dropped from config.json."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (dst / name).unlink()
    weights = load_file(str(dst / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"]
    rng = np.random.default_rng(0)
    extra = rng.normal(scale=0.02, size=(max(0, n_vocab - emb.shape[0]), emb.shape[1]))
    weights["model.embed_tokens.weight"] = np.concatenate([emb, extra.astype(emb.dtype)])[:n_vocab]
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "mlx"})
    config = json.loads((dst / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.endswith("_token_id")}
    (dst / "config.json").write_text(json.dumps({**config, **token_ids, "vocab_size": n_vocab}))
    (dst / "generation_config.json").unlink()
    return dst


def _byte_level_tokenizer(pre: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from localguard.backends.llamacpp.gguf_vocab import LLAMA3_REGEX, QWEN2_REGEX

    regex = {"llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}.get(pre)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex is None)
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated") if regex else None
    steps = {
        "llama-bpe": [split, byte_level],
        "qwen2": [split, byte_level],
        "gpt-2": [byte_level],
        "smollm": [pre_tokenizers.Digits(individual_digits=True), byte_level],
    }[pre]
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps) if len(steps) > 1 else steps[0]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        special_tokens=["<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(tokenizer_texts(1) + TEXTS + GLUED, trainer=trainer)
    return tok


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "gpt-2", "smollm"])
def test_byte_level_pre_tokenizers(pre: str, models: dict[str, Path], tmp_path: Path) -> None:
    tok = _byte_level_tokenizer(pre)
    n_vocab = tok.get_vocab_size()
    folder = _with_vocab(models["llama-bytelevel"], tmp_path / "m", n_vocab, eos_token_id=0)
    tok.save(str(folder / "tokenizer.json"))
    info = convert_to_gguf(folder, tmp_path / "m.gguf", outtype="f32")
    assert info["pre_tokenizer"] == pre
    tok.encode_special_tokens = True
    llm = _llama(tmp_path / "m.gguf")
    for text in TEXTS + GLUED:
        want = tok.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, text
    llm.close()


def test_unknown_pre_tokenizer_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    from tokenizers import pre_tokenizers

    tok = _byte_level_tokenizer("gpt-2")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    folder = _with_vocab(models["llama-bytelevel"], tmp_path / "m", tok.get_vocab_size())
    tok.save(str(folder / "tokenizer.json"))
    with pytest.raises(InputError, match="no known llama.cpp equivalent"):
        convert_to_gguf(folder, tmp_path / "m.gguf")


def test_sentencepiece_model_file(models: dict[str, Path], tmp_path: Path) -> None:
    """A folder with only tokenizer.model: pieces, scores and byte fallback as sentencepiece's."""
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tokenizer_texts(2)) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "sp"),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id()}
    folder = _with_vocab(models["llama-spm"], tmp_path / "m", sp.vocab_size(), **ids)
    shutil.copy(tmp_path / "sp.model", folder / "tokenizer.model")
    info = convert_to_gguf(folder, tmp_path / "m.gguf", outtype="f32")
    assert info["tokenizer"] == "llama"
    llm = _llama(tmp_path / "m.gguf")
    for text in TEXTS + GLUED:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == sp.encode(text), text
    llm.close()
