"""GGUF -> Hugging Face import, proven by round trips: each tiny model of every architecture is
exported with localguard's converter and imported back, and must come back with its config, its
weights, its tokenizer (the same ids as the original tokenizer and as llama.cpp on the file) and
its logits. Quantized files must import as their dequantized weights.

Measured on the tiny models: F32 weights come back exactly (Gemma's norms to 1.2e-7, the
exporter's + 1 undone in float32); the import's MLX logits match llama.cpp on the F32 file as
the exporter's parity does (test_convert.py). Against a Q8_0 or Q4_1 file llama.cpp multiplies
by 8-bit-quantized activations, so last-token logits differ by 0.02..0.07 (tiny SiLU models).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from tiny_models import ARCHITECTURES, make_tiny_model, tokenizer_texts

from localguard.encoding import encode_text
from localguard.errors import InputError, ModelNotFoundError
from localguard.parity_texts import PARITY_TEXTS

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from gguf_fields import gguf_fields  # noqa: E402

from localguard import import_gguf as stage  # noqa: E402
from localguard.backends.llamacpp import convert  # noqa: E402
from localguard.backends.llamacpp import gguf_keys as keys  # noqa: E402
from localguard.backends.llamacpp.convert import ExtraRow, convert_to_gguf  # noqa: E402
from localguard.backends.llamacpp.gguf_import import (  # noqa: E402
    IMPORT_ARCHITECTURES,
    IMPORT_SECTION,
    import_gguf,
    llama3_scaling,
)
from localguard.backends.llamacpp.gguf_runtime import GGUFModel  # noqa: E402
from localguard.backends.llamacpp.gguf_tokenizer import HF_PRE_TOKENIZERS  # noqa: E402
from localguard.hub import resolve_model  # noqa: E402

CASES: dict[str, tuple[str, str]] = {
    "llama-spm": ("llama", "sentencepiece"),
    "llama-bytelevel": ("llama", "bytelevel"),
    "mistral-spm": ("mistral", "sentencepiece"),
    "qwen2": ("qwen2", "bytelevel"),
    "qwen3": ("qwen3", "bytelevel"),
    "gemma3-spm": ("gemma3", "sentencepiece"),
    "phi3-spm": ("phi3", "sentencepiece"),
}
F32_TOLERANCE = {"gemma3-spm": 5e-2}  # ggml's F16 GELU table (see test_convert.py)
QUANT_LOGIT_TOLERANCE = 0.25
QUANT_WEIGHT_ERROR = {"Q8_0": 0.01, "Q4_1": 0.12}  # relative Frobenius error of a matrix

MORE_TEXTS = [
    "The old man paints the green door at 7 pm in 2024!",
    "typed <|end|> and <|bos|> and <unk> stay plain text",
]


def _glued(seed: int = 0, count: int = 40) -> list[str]:
    """Words run together: where the order of BPE merges (SentencePiece scores) shows."""
    rng = random.Random(seed)
    words = sorted(set(" ".join(tokenizer_texts(seed, 100)).split()))
    return ["".join(rng.choice(words) for _ in range(3)) + rng.choice(words) for _ in range(count)]


TEXTS = PARITY_TEXTS + MORE_TEXTS + _glued()

# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import")


@pytest.fixture(scope="module")
def models(root: Path) -> dict[str, Path]:
    return {
        case: make_tiny_model(arch, root / "hf" / case, tokenizer=kind)
        for case, (arch, kind) in CASES.items()
    }


@pytest.fixture(scope="module")
def gguf_file(models: dict[str, Path], root: Path):
    """gguf_file(case, outtype): the exported file, once per module."""
    cache: dict[tuple[str, str], Path] = {}

    def get(case: str, outtype: str = "f32") -> Path:
        if (case, outtype) not in cache:
            path = root / "gguf" / f"{case}-{outtype}.gguf"
            convert_to_gguf(models[case], path, outtype=outtype)
            cache[case, outtype] = path
        return cache[case, outtype]

    return get


@pytest.fixture(scope="module")
def imported(gguf_file, root: Path):
    """imported(case, outtype): the stage's import of the exported file (parity measured), as
    (folder, import.json report), once per module."""
    cache: dict[tuple[str, str], tuple[Path, dict]] = {}

    def get(case: str, outtype: str = "f32") -> tuple[Path, dict]:
        if (case, outtype) not in cache:
            out = root / "imported" / f"{case}-{outtype}"
            dtype = "float16" if outtype == "f16" else "auto"
            report = stage.import_model(gguf_file(case, outtype), out, dtype=dtype)
            cache[case, outtype] = out, report
        return cache[case, outtype]

    return get


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    for path in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(path), framework="numpy") as fh:
            for name in fh.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                out[name] = fh.get_tensor(name).astype(np.float32)
    return out


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# --- tables -------------------------------------------------------------------------------


def test_every_architecture_and_tokenizer_is_covered() -> None:
    assert {arch for arch, _ in CASES.values()} == set(ARCHITECTURES)
    assert {kind for _, kind in CASES.values()} == {"bytelevel", "sentencepiece"}
    assert set(IMPORT_ARCHITECTURES) == set(convert.ARCHITECTURES)
    assert {"smollm", "qwen2", "llama-bpe", "gpt-2"} <= set(HF_PRE_TOKENIZERS)


# --- round trips --------------------------------------------------------------------------

_SAME_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
]


@pytest.mark.parametrize("case", CASES)
def test_config_round_trip(case: str, models: dict[str, Path], gguf_file, imported) -> None:
    want = _config(models[case])
    folder, report = imported(case)
    got = _config(folder)
    assert report["hparam_mismatches"] == []
    assert {k: got[k] for k in _SAME_KEYS} == {k: want[k] for k in _SAME_KEYS}
    assert got["model_type"] == {"mistral": "llama"}.get(want["model_type"], want["model_type"])
    assert got["rms_norm_eps"] == want["rms_norm_eps"]
    assert got["rope_theta"] == want["rope_theta"]
    if want["model_type"] != "phi3":  # only where the source had one (its key length)
        assert got.get("head_dim") == want.get("head_dim")
    assert got.get("rope_scaling") == want.get("rope_scaling")  # llama: Llama 3 scaling
    if want["model_type"] == "gemma3_text":
        for key in ("sliding_window", "rope_local_base_freq", "query_pre_attn_scalar"):
            assert got[key] == want[key], key
        assert got["layer_types"] == want["layer_types"]
    provenance = got[IMPORT_SECTION]
    reader = gguf.GGUFReader(str(gguf_file(case)))
    general = {k: f.contents() for k, f in reader.fields.items() if k.startswith("general.")}
    assert provenance["general"] == general and general["general.architecture"]
    types = {k: [t.name for t in reader.fields[k].types] for k in general}
    assert provenance["general_types"] == types
    flags = {k: reader.fields[k].contents() for k in keys.TOKENIZER_FLAGS if k in reader.fields}
    assert provenance["tokenizer"]["flags"] == flags and flags
    assert provenance["sha256"] == report["sha256"]
    assert set(provenance["tensor_types"]) == {"F32"}


@pytest.mark.parametrize("case", CASES)
def test_f32_weights_come_back_exactly(case: str, models: dict[str, Path], imported) -> None:
    want, got = _weights(models[case]), _weights(imported(case)[0])
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_f16_weights_come_back_to_fp16_rounding(case: str, models, imported) -> None:
    folder, report = imported(case, "f16")
    assert report["dtype"] == "float16"
    want, got = _weights(models[case]), _weights(folder)
    for name, value in want.items():
        rounded = value.astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(got[name], rounded, rtol=2**-10, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_tokenizer_matches_the_original_and_llama_cpp(
    case: str, models: dict[str, Path], gguf_file, imported
) -> None:
    folder, report = imported(case)
    tok = report["parity"]["tokenization"]
    assert tok["equal"] == tok["total"] == len(PARITY_TEXTS), tok["differ"]
    original, new = _hf_tokenizer(models[case]), _hf_tokenizer(folder)
    with GGUFModel(gguf_file(case), n_ctx=256) as llm:
        for text in TEXTS:
            ids = encode_text(new, text)
            assert ids == encode_text(original, text), text
            assert ids == llm.tokenize(text, special=False, add_bos=False), text
            assert new.decode(ids) == original.decode(encode_text(original, text)), text
        chat = [{"role": "user", "content": "Tell me about the river."}]
        rendered = new.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert rendered == original.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        assert new(rendered, add_special_tokens=False)["input_ids"] == llm.tokenize(
            rendered, special=True
        )


@pytest.mark.parametrize("case", CASES)
def test_logits_match_the_original(case: str, models: dict[str, Path], imported) -> None:
    """mlx-lm on the import computes what it computes on the original folder, and what
    llama.cpp computes on the file (the stage's parity)."""
    folder, report = imported(case)
    logits = report["parity"]["logits"]
    assert logits["max_abs_diff"] < F32_TOLERANCE.get(case, 1e-4), logits
    assert logits["argmax_agreement"] == 1.0
    original, tokenizer = mlx_lm.load(str(models[case]))
    model, _ = mlx_lm.load(str(folder))
    ids = mx.array([encode_text(tokenizer, " ".join(tokenizer_texts(3, 4)))])
    diff = mx.abs(original(ids) - model(ids)).max().item()
    assert diff < 1e-5, diff


def _byte_level_model(pre: str, src: Path, dst: Path) -> Path:
    """A copy of a tiny model with a byte-level tokenizer whose pre-tokenizer llama.cpp calls
    `pre` (digits split one by one for smollm, merges ignored for whole words for llama-bpe)."""
    import shutil

    from safetensors.numpy import load_file, save_file
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from localguard.backends.llamacpp.gguf_vocab import LLAMA3_REGEX, QWEN2_REGEX

    regex = {"llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}.get(pre)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex is None)
    steps = [pre_tokenizers.Split(Regex(regex), behavior="isolated")] if regex else []
    if pre == "smollm":
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, byte_level]) if steps else byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        special_tokens=["<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(tokenizer_texts(1) + TEXTS, trainer=trainer)
    shutil.copytree(src, dst)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        (dst / name).unlink()
    tok.save(str(dst / "tokenizer.json"))
    n_vocab = tok.get_vocab_size()
    weights = load_file(str(dst / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"]
    extra = np.random.default_rng(0).normal(scale=0.02, size=(n_vocab, emb.shape[1]))
    weights["model.embed_tokens.weight"] = np.concatenate([emb, extra.astype(emb.dtype)])[:n_vocab]
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "mlx"})
    config = {k: v for k, v in _config(dst).items() if not k.endswith("_token_id")}
    (dst / "config.json").write_text(
        json.dumps({**config, "vocab_size": n_vocab, "eos_token_id": 0})
    )
    return dst


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe", "gpt-2", "qwen2"])
def test_byte_level_pre_tokenizers(pre: str, models: dict[str, Path], root: Path) -> None:
    """Each llama.cpp pre-tokenizer name comes back as the pipeline that tokenizes like it,
    through the class transformers builds for the folder (a GPT2Tokenizer would drop the
    digit split: "of them:\n\n1." would be "\n", "\n", "1" instead of "\n\n1")."""
    folder = _byte_level_model(pre, models["llama-bytelevel"], root / "pre" / pre)
    path = root / "pre" / f"{pre}.gguf"
    convert_to_gguf(folder, path, outtype="f32")
    out = root / "pre" / f"{pre}-import"
    report = stage.import_model(path, out)
    assert report["pre_tokenizer"] == pre
    tok = report["parity"]["tokenization"]
    assert tok["equal"] == tok["total"], tok["differ"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )
    new = _hf_tokenizer(out)
    with GGUFModel(path, n_ctx=256) as llm:
        for text in TEXTS:
            assert encode_text(new, text) == llm.tokenize(text), text


# --- quantized files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(gguf_file, root: Path):
    from localguard.backends.llamacpp.quantize import quantize

    def get(case: str, type_name: str) -> tuple[Path, dict]:
        path = root / "quant" / f"{case}-{type_name}.gguf"
        quantize(gguf_file(case), path, type_name)
        out = root / "quant" / f"{case}-{type_name}"
        return out, stage.import_model(path, out)

    return get


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_1"])
@pytest.mark.parametrize("case", ["llama-bytelevel", "mistral-spm"])
def test_quantized_file_imports_as_its_dequantized_weights(
    case: str, type_name: str, models: dict[str, Path], quantized
) -> None:
    folder, report = quantized(case, type_name)
    assert report["tensor_types"].get(type_name, 0) > 0
    assert report["dtype"] == "float16"
    tok = report["parity"]["tokenization"]
    assert tok["equal"] == tok["total"], tok["differ"]
    assert report["parity"]["logits"]["max_abs_diff"] < QUANT_LOGIT_TOLERANCE
    want, got = _weights(models[case]), _weights(folder)
    for name, value in want.items():
        if value.ndim == 2:  # q/k rows in the right order again, up to quantization error
            error = np.linalg.norm(got[name] - value) / np.linalg.norm(value)
            assert error < QUANT_WEIGHT_ERROR[type_name], (name, error)


MODEL_CARD = """---
license: mit
language:
- en
- fr
base_model: example-org/Base-Model-1B
tags:
- tiny
---
# A tiny model
"""


@pytest.mark.parametrize("case", ["llama-bytelevel", "mistral-spm"])
def test_an_export_of_an_import_writes_the_source_keys_back(
    case: str, models: dict[str, Path], root: Path
) -> None:
    """A hub folder with a model card and add_prefix_space -> GGUF -> import -> GGUF again: the
    second file has the first one's provenance and tokenizer switches with their types, and (a
    byte-level vocabulary coming back unchanged) every other key too. A SentencePiece one comes
    back with other scores (the same merges), so there only the switches and provenance count."""
    import shutil

    folder = root / "card" / case
    shutil.copytree(models[case], folder)
    (folder / "README.md").write_text(MODEL_CARD)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**tok_config, "add_prefix_space": False})
    )
    first = root / "card" / f"{case}.gguf"
    convert_to_gguf(folder, first, outtype="f32")
    out = root / "card" / f"{case}-import"
    stage.import_model(first, out, measure=False)
    again = root / "card" / f"{case}-again.gguf"
    convert_to_gguf(out, again, outtype="f32")
    want, got = gguf_fields(first), gguf_fields(again)
    assert want["general.license"] == (["STRING"], "mit")
    assert want["general.languages"] == (["ARRAY", "STRING"], ["en", "fr"])
    assert want["general.base_model.count"] == (["UINT32"], 1)
    assert want["general.name"][1].lower().split() == case.split("-")  # llama.cpp: the folder
    if case == "llama-bytelevel":  # llama.cpp's llama converter: tokenizer_config.json's
        assert want[gguf.Keys.Tokenizer.ADD_PREFIX] == (["BOOL"], False)
        assert got == want
    else:  # SentencePiece: tokenizer.json's normalizer decides the space prefix
        assert want[gguf.Keys.Tokenizer.ADD_PREFIX] == (["BOOL"], True)
        same = [k for k in want if k.startswith("general.") or k in keys.TOKENIZER_FLAGS]
        assert {k: got.get(k) for k in same} == {k: want[k] for k in same}
        assert set(got) == set(want)


def test_export_with_a_safety_head_imports_without_it(models: dict[str, Path], root: Path):
    folder = models["mistral-spm"]  # untied: the head rows are in the output matrix
    hidden = _config(folder)["hidden_size"]
    rows = [ExtraRow("query", np.ones(hidden, np.float32), 0.5)]
    path = root / "head.gguf"
    convert_to_gguf(folder, path, rows, outtype="f32")
    out = root / "head-import"
    out.mkdir()
    summary = import_gguf(path, out)
    assert summary["head_rows_dropped"] == 1
    assert summary["n_vocab"] == _config(folder)["vocab_size"]
    want, got = _weights(folder), _weights(out)
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        np.testing.assert_array_equal(got[name], want[name])


def test_auto_dtype(gguf_file, root: Path) -> None:
    for case, outtype, dtype in [
        ("qwen3", "f32", "float32"),
        ("qwen3", "f16", "float16"),
        ("gemma3-spm", "f16", "bfloat16"),
    ]:
        out = root / "dtype" / f"{case}-{outtype}"
        out.mkdir(parents=True)
        assert import_gguf(gguf_file(case, outtype), out)["dtype"] == dtype
        assert _config(out)["torch_dtype"] == dtype


@pytest.mark.parametrize(
    "scaling",
    [
        (8.0, 1.0, 4.0, 8192),  # Llama 3.1
        (32.0, 1.0, 4.0, 8192),  # Llama 3.2
        (4.0, 2.0, 8.0, 4096),
    ],
)
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(scaling) -> None:
    factor, low, high, old = scaling
    config = {"head_dim": 128, "rope_theta": 500000.0, "hidden_size": 4096}
    rope = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": old,
    }
    tensor = convert.llama3_rope_factors({**config, "rope_scaling": rope})
    found = llama3_scaling(tensor, config, "test")
    again = convert.llama3_rope_factors({**config, "rope_scaling": found})
    np.testing.assert_allclose(again, tensor, rtol=1e-5)
    if (low, high) == (1.0, 4.0):
        assert found == rope


def test_linear_rope_scaling_round_trip(models: dict[str, Path], root: Path) -> None:
    import shutil

    folder = root / "linear"
    shutil.copytree(models["qwen2"], folder)
    config = _config(folder)
    config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (folder / "config.json").write_text(json.dumps(config))
    convert_to_gguf(folder, root / "linear.gguf", outtype="f32")
    out = root / "linear-import"
    out.mkdir()
    summary = import_gguf(root / "linear.gguf", out)
    assert summary["hparam_mismatches"] == []
    assert _config(out)["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 4.0}


# --- the cache behind resolve_model -------------------------------------------------------


def test_resolve_model_imports_a_gguf_once(gguf_file, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LOCALGUARD_HOME", str(tmp_path / "home"))
    calls = []
    real = stage.import_model

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "import_model", counting)
    path = gguf_file("qwen3")
    first = resolve_model(str(path))
    lines = [line for line in capsys.readouterr().err.splitlines() if "importing" in line]
    assert len(lines) == 1 and path.name in lines[0]
    assert first.parent.name == stage._sha256(path)
    assert first == tmp_path / "home" / "imports" / first.parent.name / "model"
    assert (first / "config.json").is_file() and (first / stage.REPORT_FILE).is_file()
    second = resolve_model(path)
    assert second == first and len(calls) == 1
    assert "importing" not in capsys.readouterr().err


def test_a_tokenization_difference_is_reported_and_warned(gguf_file, monkeypatch, tmp_path) -> None:
    differ = [{"text": "a  2", "import": [1], "llama_cpp": [2]}]
    measured = {
        "tokenization": {"equal": 11, "total": 12, "differ": differ},
        "logits": {"max_abs_diff": 0.5, "argmax_equal": 3, "top5_overlap": 1.0, "prompts": []},
    }
    monkeypatch.setattr(stage, "measure_parity", lambda *args: measured)
    lines = []
    report = stage.import_model(gguf_file("qwen3"), tmp_path / "out", log=lines.append)
    assert report["parity"] == measured
    assert json.loads((tmp_path / "out" / stage.REPORT_FILE).read_text())["parity"] == measured
    assert len(lines) == 1 and "differs from llama.cpp's on 1 of 12" in lines[0]


def test_missing_gguf_is_model_not_found(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nothing.gguf"))


# --- refusals -----------------------------------------------------------------------------


def _tiny_gguf(path: Path, arch: str, embedding: np.ndarray) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tensor("token_embd.weight", embedding)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_is_one_line(tmp_path: Path) -> None:
    path = _tiny_gguf(tmp_path / "neox.gguf", "gptneox", np.zeros((8, 4), np.float32))
    with pytest.raises(InputError, match=r"architecture 'gptneox' cannot be imported \(supported"):
        stage.import_model(path, tmp_path / "out", measure=False)
    assert not (tmp_path / "out").exists()


def test_unsupported_tensor_type_is_one_line(tmp_path: Path) -> None:
    path = _tiny_gguf(tmp_path / "i32.gguf", "llama", np.zeros((8, 4), np.int32))
    with pytest.raises(InputError, match="token_embd.weight has type I32") as err:
        stage.import_model(path, tmp_path / "out", measure=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_file_is_one_line(damage: str, gguf_file, tmp_path: Path) -> None:
    data = gguf_file("qwen2").read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"XXXX" + data[4:])
    with pytest.raises(InputError, match="bad.gguf") as err:
        stage.import_model(path, tmp_path / "out", measure=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_existing_folder_needs_force(gguf_file, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="--force"):
        stage.import_model(gguf_file("qwen3"), tmp_path / "out", measure=False)
    report = stage.import_model(gguf_file("qwen3"), tmp_path / "out", force=True, measure=False)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert report["parity"] == {"skipped": "not asked"}


def test_cli_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from localguard.cli import cli

    missing = tmp_path / "missing.gguf"
    result = CliRunner().invoke(cli, ["import", str(missing), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {missing}: no such GGUF file"]
