"""`localguard export`: fused, head-baked, quantized GGUF files checked against mlx-lm.

Each architecture gets a tiny random model (with its family's tokenizer), a random LoRA adapter
and a random safety head saved the way a stream-mode head is (its own adapter in its folder).
The exported files are loaded by stock llama-cpp-python and by localguard's GGUF runtime and
compared with mlx-lm running the base with the adapter: same tokens, same logits, same head
logits (the rows are stored at HEAD_ROW_SCALE; the bias lives in the metadata).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import conversation_rows, make_tiny_model, write_jsonl

from localguard.errors import InputError, LocalguardError

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from localguard.backends.llamacpp.convert import HEAD_KEYS, convert_to_gguf  # noqa: E402
from localguard.backends.llamacpp.gguf_runtime import (  # noqa: E402
    GUARD_REFUSAL_PREFIX,
    GUARD_TAU,
    GGUFModel,
    patch_metadata,
    read_head,
)
from localguard.encoding import encode_text  # noqa: E402
from localguard.export import (  # noqa: E402
    HEAD_ROW_SCALE,
    ExportOptions,
    export,
    format_report,
    quant_types,
)
from localguard.safety_head import SafetyHead, save_head  # noqa: E402

CASES: dict[str, tuple[str, str]] = {
    "llama-spm": ("llama", "sentencepiece"),
    "mistral-spm": ("mistral", "sentencepiece"),
    "qwen2": ("qwen2", "bytelevel"),
    "qwen3": ("qwen3", "bytelevel"),
    "gemma3-spm": ("gemma3", "sentencepiece"),
    "phi3-spm": ("phi3", "sentencepiece"),
}
F16_TOLERANCE = 1e-2
GEMMA3_F16_TOLERANCE = 1.5e-1  # ggml's F16 GELU table (see tests/test_convert.py)
PROMPT = (
    "The teacher builds a long letter today. A small bird counts two apples again! "
    "My friend reads the river at 7 pm."
)


# --- inputs -----------------------------------------------------------------------------------


def _random_adapter(model_dir: Path, out: Path, *, dora: bool = False, seed: int = 0) -> Path:
    """An mlx-lm adapter folder with non-zero lora_b (a fresh adapter would be a no-op)."""
    from mlx.utils import tree_flatten

    from localguard.backends.mlx import lora_train as lt

    model, _ = mlx_lm.load(str(model_dir))
    spec = lt.LoraSpec(rank=4, scale=2.0, num_layers=-1, dora=dora)
    n = lt.add_adapters(model, spec, seed)
    mx.random.seed(seed + 1)
    update = [
        (k, 0.05 * mx.random.normal(v.shape))
        for k, v in tree_flatten(model.trainable_parameters())
        if k.endswith("lora_b")
    ]
    model.load_weights(update, strict=False)
    out.mkdir(parents=True, exist_ok=True)
    lt.save_adapters(model, spec.adapter_config(n), out)
    return out


def _random_head(model_dir: Path, out: Path, adapter: Path | None = None, seed: int = 0) -> Path:
    """A head folder for model_dir; with adapter, laid out as a stream-mode head (the adapter's
    files inside, manifest "adapter")."""
    from localguard.probe import model_fingerprint
    from localguard.safety_head import config_hidden_size

    hidden = config_hidden_size(model_dir)
    rng = np.random.default_rng(seed)
    weight = (rng.normal(size=(2, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    head = SafetyHead(["query", "response"], weight, np.array([0.25, -0.5], np.float32),
                      np.array([0.0, 0.3]), {"mode": "stream" if adapter else "probe"})  # fmt: skip
    manifest = {
        "model_path": str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir),
        "adapter": "adapters.safetensors" if adapter else None,
        "base_adapter": None,
    }
    save_head(head, out, manifest)
    if adapter is not None:
        for name in ("adapters.safetensors", "adapter_config.json"):
            shutil.copy(adapter / name, out / name)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def calibration(root: Path) -> Path:
    return write_jsonl(root / "calibration.jsonl", conversation_rows(16))


@pytest.fixture(scope="module")
def case_inputs(root: Path):
    """case -> (model, head folder with its own adapter), made once per module."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(case: str) -> tuple[Path, Path]:
        if case not in cache:
            arch, kind = CASES[case]
            model = make_tiny_model(arch, root / case / "model", tokenizer=kind)
            adapter = _random_adapter(model, root / case / "adapter")
            cache[case] = model, _random_head(model, root / case / "head", adapter)
        return cache[case]

    return get


@pytest.fixture(scope="module")
def exported(case_inputs, calibration: Path, root: Path):
    """case -> (export report, out folder): F16 + Q8_0 (+ Q4_K_M for qwen3), exported once."""
    cache: dict[str, tuple[dict, Path]] = {}

    def get(case: str) -> tuple[dict, Path]:
        if case not in cache:
            model, head = case_inputs(case)
            out = root / case / "gguf"
            quant = ["Q8_0,Q4_K_M"] if case == "qwen3" else ["Q8_0"]
            opts = ExportOptions(model=model, out=out, head=head, quant=quant,
                                 calibration=calibration, calibration_size=16)  # fmt: skip
            cache[case] = export(opts), out
        return cache[case]

    return get


def _mlx(model: Path, head: Path):
    """mlx-lm's model with the head's own adapter, and the head."""
    from localguard.safety_head import load_head

    loaded, tokenizer = mlx_lm.load(str(model), adapter_path=str(head))
    return loaded, tokenizer, load_head(head)


def _stock_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits at every position from stock llama-cpp-python (its high-level Llama class)."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=1,
                          logits_all=True, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32, verbose=False)  # fmt: skip
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def _tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}


# --- every architecture -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_export_matches_mlx(case: str, case_inputs, exported) -> None:
    """Tokens, logits and head logits of the F16 file, read by stock llama.cpp, against mlx-lm
    running the base with the adapter; tied models carry the rows in the embedding."""
    model_dir, head_dir = case_inputs(case)
    report, out = exported(case)
    names = sorted(p.name for p in out.iterdir())
    expected = ["export.json", "model-F16.gguf", "model-Q8_0.gguf"]
    assert names == sorted(expected + (["model-Q4_K_M.gguf"] if case == "qwen3" else []))
    assert json.loads((out / "export.json").read_text())["files"] == report["files"]
    assert report["adapter"]["source"] == "head" and report["fused"]["layers"] > 0

    model, tokenizer, head = _mlx(model_dir, head_dir)
    config = json.loads((model_dir / "config.json").read_text())
    n_vocab = config["vocab_size"]
    ids = encode_text(tokenizer, PROMPT)
    f16 = out / "model-F16.gguf"
    got = _stock_logits(f16, ids)
    want = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    tolerance = GEMMA3_F16_TOLERANCE if case.startswith("gemma3") else F16_TOLERANCE
    assert got.shape == (len(ids), n_vocab + 2)
    assert np.abs(got[:, :n_vocab] - want).max() < tolerance

    spec = read_head(f16)
    assert spec.token_ids == [n_vocab, n_vocab + 1]
    hidden = np.array(model.model(mx.array([ids]))[0].astype(mx.float32))
    mlx_head = head.logits(hidden)
    assert np.abs(spec.logits(got) - mlx_head).max() < 2 * tolerance

    tensors = _tensors(f16)
    rows = "token_embd.weight" if config["tie_word_embeddings"] else "output.weight"
    assert ("output.weight" in tensors) == (not config["tie_word_embeddings"])
    assert tensors[rows][0] == (config["hidden_size"], n_vocab + 2)
    for entry in report["files"]:
        assert entry["tokenization"]["equal"] == entry["tokenization"]["total"]
        assert entry["verdict_agreement"]["units"] > 16
    f16_entry = report["files"][0]
    assert f16_entry["max_logit_diff"] < tolerance
    if not case.startswith("gemma3"):
        assert f16_entry["verdict_agreement"]["beyond_ties"] == 1.0


def test_quantized_files_keep_the_vocabulary_at_q8_and_report_fallbacks(exported) -> None:
    """Q4_K_M on rows of 64 (not a multiple of 256): llama.cpp falls back, and says so in the
    report; output / embedding stay Q8_0, so the head rows move about as little as in Q8_0."""
    report, out = exported("qwen3")
    by_type = {f["type"]: f for f in report["files"]}
    assert by_type["Q4_K_M"]["fallback_tensors"]  # hidden 64 < 256
    assert not by_type["Q8_0"]["fallback_tensors"]
    for name in ("Q8_0", "Q4_K_M"):
        assert by_type[name]["vocab_tensors"] == {"token_embd.weight": "Q8_0"}
        assert _tensors(out / f"model-{name}.gguf")["token_embd.weight"][1] == "Q8_0"
    assert by_type["Q8_0"]["verdict_agreement"]["beyond_ties"] >= 0.95
    table = format_report(report)
    assert "model-Q4_K_M.gguf" in table and "verdicts" in table


# --- the head in the file -----------------------------------------------------------------------


def test_metadata_round_trip(case_inputs, exported) -> None:
    model_dir, head_dir = case_inputs("mistral-spm")
    report, out = exported("mistral-spm")
    _, _, head = _mlx(model_dir, head_dir)
    for entry in report["files"]:
        path = out / entry["file"]
        spec = read_head(path)
        assert spec.names == ["query", "response"]
        np.testing.assert_allclose(spec.thresholds, head.thresholds, rtol=1e-6)
        np.testing.assert_allclose(spec.scale, [HEAD_ROW_SCALE] * 2)
        np.testing.assert_allclose(spec.bias_shift, entry["bias_shift"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(spec.bias, head.bias + spec.bias_shift, rtol=1e-5, atol=1e-6)
        assert spec.extra[GUARD_TAU] == spec.tau == 2
        assert spec.extra[GUARD_REFUSAL_PREFIX] == spec.refusal_prefix
        assert spec.refusal_prefix.startswith("Sorry")
        fields = gguf.GGUFReader(str(path)).fields
        tokens = fields["tokenizer.ggml.tokens"].contents()
        assert tokens[spec.token_ids[0]] == "<|localguard_query|>"
        types = fields["tokenizer.ggml.token_type"].contents()
        assert [types[i] for i in spec.token_ids] == [gguf.TokenType.CONTROL] * 2
    copy = out.parent / "patched.gguf"
    shutil.copy(out / "model-Q8_0.gguf", copy)
    patch_metadata(copy, {HEAD_KEYS["bias"]: [1.5, -0.25]})
    np.testing.assert_allclose(read_head(copy).bias, [1.5, -0.25])
    with pytest.raises(InputError, match="has 2 values, not 3"):
        patch_metadata(copy, {HEAD_KEYS["bias"]: [1.0, 2.0, 3.0]})


def test_head_rows_scored_and_never_sampled(case_inputs, exported) -> None:
    """The runtime reads the head at every position, masks the rows before sampling, and a
    typed control-token string stays text; stock llama.cpp chats with the file."""
    model_dir, head_dir = case_inputs("qwen3")
    _, out = exported("qwen3")
    model, tokenizer, head = _mlx(model_dir, head_dir)
    ids = encode_text(tokenizer, PROMPT)
    with GGUFModel(out / "model-F16.gguf", f32_cache=True) as llm:
        spec = llm.head
        logits = llm.eval(ids)
        hidden = np.array(model.model(mx.array([ids]))[0].astype(mx.float32))
        assert np.abs(spec.logits(logits) - head.logits(hidden)).max() < 0.05
        assert spec.flags(logits).shape == (len(ids), 2)
        typed = llm.tokenize("<|localguard_query|>", special=False)
        assert spec.token_ids[0] not in typed
        assert llm.tokenize("<|localguard_query|>", special=True) == [spec.token_ids[0]]
        eos = json.loads((model_dir / "config.json").read_text())["eos_token_id"]
        assert llm.is_eog(eos) and not llm.is_eog(spec.token_ids[0])
        masked = llm.masked(logits)
        assert np.isneginf(masked[:, spec.token_ids]).all()
        # boost the head rows so that, unmasked, they would win every step
        generated = []
        llm.reset()
        row = llm.feed(ids)[-1]
        for _ in range(8):
            boosted = row.copy()
            boosted[spec.token_ids] = boosted.max() + 10
            token = int(np.argmax(llm.masked(boosted)))
            generated.append(token)
            row = llm.feed([token])[-1]
        assert all(t not in spec.token_ids for t in generated)
        # rewinding the KV cache and feeding the same tokens again gives the same logits
        llm.rewind(len(ids))
        again = llm.feed(generated[:1])[-1]
        first = llm.eval(ids + generated[:1])[-1]
        np.testing.assert_allclose(again, first, atol=1e-5)
    stock = llama_cpp.Llama(model_path=str(out / "model-Q8_0.gguf"), n_ctx=256, n_threads=1,
                            verbose=False)  # fmt: skip
    reply = stock.create_chat_completion(
        [{"role": "user", "content": "Tell me about the cat."}], max_tokens=8, temperature=0.0
    )
    stock.close()
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")


# --- fusing -------------------------------------------------------------------------------------


def _quantized_copy(model_dir: Path, out: Path) -> Path:
    """model_dir as an mlx-lm 4-bit model (group size 32 fits hidden 64), tokenizer files as is."""
    from mlx_lm.utils import quantize_model, save_config, save_model

    model, _, config = mlx_lm.load(str(model_dir), return_config=True)
    model, config = quantize_model(model, config, group_size=32, bits=4)
    out.mkdir(parents=True)
    save_model(out, model)
    save_config(config, out / "config.json")
    for path in model_dir.iterdir():
        weights = path.suffix == ".safetensors" or path.name.endswith(".index.json")
        if path.is_file() and not weights and path.name != "config.json":
            shutil.copy(path, out / path.name)
    return out


def test_dora_on_a_quantized_base_fuses_to_full_precision(
    case_inputs, calibration: Path, tmp_path: Path
) -> None:
    """A DoRA adapter trained on a 4-bit base: dequantized, fused in float32, exported; the F16
    file matches mlx-lm running the quantized base with the adapter."""
    from localguard.backends.mlx import fuse

    base, _ = case_inputs("mistral-spm")
    quantized = _quantized_copy(base, tmp_path / "q4")
    adapter = _random_adapter(quantized, tmp_path / "dora", dora=True)
    model, tokenizer, _ = fuse.load(quantized, adapter)
    assert fuse.is_quantized(model)
    ids = encode_text(tokenizer, PROMPT)
    want = np.array(model(mx.array([ids]))[0].astype(mx.float32))

    fuse.fuse_adapters(model)
    assert not fuse.is_quantized(model)
    fused = fuse.save_fused(model, quantized, tmp_path / "fused")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (fused / name).read_bytes() == (quantized / name).read_bytes()
    assert "quantization" not in json.loads((fused / "config.json").read_text())
    refused, _ = mlx_lm.load(str(fused))
    np.testing.assert_allclose(np.array(refused(mx.array([ids]))[0]), want, atol=1e-4)

    report = export(ExportOptions(model=quantized, adapter=adapter, out=tmp_path / "out",
                                  quant=[], calibration=calibration))  # fmt: skip
    assert report["fused"] == {"layers": report["fused"]["layers"], "dequantized": True}
    assert report["files"][0]["max_logit_diff"] < F16_TOLERANCE
    got = _stock_logits(tmp_path / "out" / "model-F16.gguf", ids)
    assert np.abs(got - want).max() < F16_TOLERANCE


def test_adapter_rules(case_inputs, tmp_path: Path) -> None:
    """A stream head's own adapter supersedes --adapter; a head trained without an adapter
    refuses one."""
    from localguard.export import resolve_inputs

    model, stream_head = case_inputs("qwen2")
    other = _random_adapter(model, tmp_path / "other", seed=5)
    inputs = resolve_inputs(ExportOptions(model=model, out=tmp_path, adapter=other,
                                          head=stream_head))  # fmt: skip
    assert inputs.adapter == stream_head and inputs.superseded == other
    bare = _random_head(model, tmp_path / "bare")
    with pytest.raises(InputError, match="without an adapter"):
        resolve_inputs(ExportOptions(model=model, out=tmp_path, adapter=other, head=bare))
    assert resolve_inputs(ExportOptions(model=model, out=tmp_path, head=bare)).adapter is None


# --- --lora-only --------------------------------------------------------------------------------


def _with_unused_rows(model_dir: Path, out: Path, extra: int = 4) -> Path:
    """A copy whose embedding and output have `extra` rows more than the tokenizer has tokens:
    the GGUF vocabulary pads them as unused tokens, where a LoRA can carry the head."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(str(out / "model.safetensors"))
    rng = np.random.default_rng(0)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = rng.normal(scale=0.02, size=(extra, weights[key].shape[1]))
        weights[key] = np.concatenate([weights[key], rows.astype(weights[key].dtype)])
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "mlx"})
    config = json.loads((out / "config.json").read_text())
    config["vocab_size"] += extra
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_lora_only_with_the_head_as_an_output_row_delta(
    case_inputs, calibration: Path, tmp_path: Path
) -> None:
    source, _ = case_inputs("mistral-spm")
    model_dir = _with_unused_rows(source, tmp_path / "m")
    adapter = _random_adapter(model_dir, tmp_path / "adapter")
    head_dir = _random_head(model_dir, tmp_path / "head", adapter)
    base = tmp_path / "base-Q8_0.gguf"
    convert_to_gguf(model_dir, tmp_path / "base.gguf", outtype="f16")
    from localguard.backends.llamacpp.quantize import quantize

    quantize(tmp_path / "base.gguf", base, "Q8_0")
    out = tmp_path / "out"
    report = export(ExportOptions(model=model_dir, head=head_dir, out=out, lora_only=True,
                                  base_gguf=base, calibration=calibration))  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "lora.gguf"]
    config = json.loads((model_dir / "config.json").read_text())
    n = config["vocab_size"]
    assert report["lora"]["head_token_ids"] == {"query": n - 2, "response": n - 1}
    entry = report["files"][0]
    assert entry["tokenization"]["equal"] == entry["tokenization"]["total"]
    assert entry["verdict_agreement"]["beyond_ties"] >= 0.95

    model, tokenizer, head = _mlx(model_dir, head_dir)
    ids = encode_text(tokenizer, PROMPT)
    want = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    hidden = np.array(model.model(mx.array([ids]))[0].astype(mx.float32))
    with GGUFModel(base, lora=out / "lora.gguf", f32_cache=True) as llm:
        got = llm.eval(ids)
        spec = llm.head
        keep = np.setdiff1d(np.arange(n), spec.token_ids)
        assert np.abs(got[:, keep] - want[:, keep]).max() < 0.1  # a Q8_0 base
        assert np.abs(spec.logits(got) - head.logits(hidden)).max() < 0.2  # Q8_0 states
    with GGUFModel(base) as plain:
        assert plain.head is None


def test_lora_only_refusals(case_inputs, tmp_path: Path) -> None:
    tied, tied_head = case_inputs("qwen3")
    with pytest.raises(InputError, match="ties its output matrix"):
        export(ExportOptions(model=tied, head=tied_head, out=tmp_path / "a", lora_only=True))
    untied, _ = case_inputs("mistral-spm")
    dora = _random_adapter(untied, tmp_path / "dora", dora=True)
    with pytest.raises(InputError, match="DoRA"):
        export(ExportOptions(model=untied, adapter=dora, out=tmp_path / "b", lora_only=True))
    with pytest.raises(InputError, match="needs an adapter"):
        export(ExportOptions(model=untied, out=tmp_path / "c", lora_only=True))
    bare_head = _random_head(untied, tmp_path / "head", _random_adapter(untied, tmp_path / "ad"))
    with pytest.raises(InputError, match="unused token rows"):  # every row is a real token
        export(ExportOptions(model=untied, head=bare_head, out=tmp_path / "d", lora_only=True))
    assert not any((tmp_path / d / "lora.gguf").exists() for d in "abcd")


# --- damaged inputs and interruptions ---------------------------------------------------------


def _one_line_error(func) -> str:
    with pytest.raises(LocalguardError) as err:
        func()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_damaged_inputs_are_clear_errors(case_inputs, exported, tmp_path: Path) -> None:
    model, head = case_inputs("qwen2")
    _, out = exported("qwen2")
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    message = _one_line_error(lambda: export(ExportOptions(model=broken, out=tmp_path / "o")))
    assert "model.safetensors" in message and "truncated" in message

    adapter = tmp_path / "head"
    shutil.copytree(head, adapter)
    (adapter / "adapters.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    message = _one_line_error(lambda: export(ExportOptions(model=model, out=tmp_path / "o",
                                                           head=adapter)))  # fmt: skip
    assert "adapters.safetensors" in message

    gguf_bytes = (out / "model-Q8_0.gguf").read_bytes()
    for name, damaged in (("cut.gguf", gguf_bytes[: len(gguf_bytes) // 3]),
                          ("junk.gguf", b"GGUF" + b"\xff" * 64),
                          ("text.gguf", b"not a gguf file at all")):  # fmt: skip
        path = tmp_path / name
        path.write_bytes(damaged)
        message = _one_line_error(lambda path=path: GGUFModel(path))
        assert name in message
        _one_line_error(lambda path=path: read_head(path))
    assert not (tmp_path / "o" / "model-F16.gguf").exists()


def test_interrupted_export_leaves_nothing_under_a_final_name(
    case_inputs, calibration: Path, tmp_path: Path, monkeypatch
) -> None:
    import localguard.export as stage

    model, head = case_inputs("qwen2")
    real = stage.measure
    calls = []

    def interrupt_on_second_file(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stage, "measure", interrupt_on_second_file)
    out = tmp_path / "out"
    opts = ExportOptions(model=model, head=head, out=out, quant=["Q8_0"],
                         calibration=calibration, calibration_size=4)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        export(opts)
    assert sorted(p.name for p in out.iterdir()) == ["model-F16.gguf"]  # finished before
    assert calls[1].name.startswith(".model-Q8_0.gguf")  # measured under a temporary name

    monkeypatch.setattr(stage, "measure", real)

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("localguard.backends.llamacpp.convert.write_gguf", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(ExportOptions(model=model, head=head, out=tmp_path / "two", quant=[],
                             calibration=calibration, calibration_size=4))  # fmt: skip
    assert list((tmp_path / "two").iterdir()) == []


# --- options, CLI and recipe ------------------------------------------------------------------


def test_quant_types() -> None:
    assert quant_types(["Q8_0,q4_k_m", "F16", "Q8_0"]) == ["Q8_0", "Q4_K_M"]
    assert quant_types([]) == []
    with pytest.raises(InputError, match="not a llama.cpp file type; known: .*Q4_K_M"):
        quant_types(["Q4_K_N"])


def test_cli_export_and_errors(case_inputs, tmp_path: Path) -> None:
    from localguard.cli import cli

    model, _ = case_inputs("phi3-spm")
    out = tmp_path / "out"
    done = CliRunner().invoke(cli, ["export", "--model", str(model), "--out", str(out),
                                    "--quant", "Q8_0", "--calibration-size", "4"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "model-F16.gguf" in done.output and "model-Q8_0.gguf" in done.output
    report = json.loads((out / "export.json").read_text())
    assert report["head"] is None and report["files"][1]["type"] == "Q8_0"

    done = CliRunner().invoke(cli, ["export", "--model", str(model), "--out", str(out),
                                    "--quant", "Q9_X"])  # fmt: skip
    assert done.exit_code == 2 and "Q9_X" in done.output and "Q4_K_M" in done.output
    other = tmp_path / "neox"
    shutil.copytree(model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    done = CliRunner().invoke(cli, ["export", "--model", str(other), "--out", str(tmp_path / "x"),
                                    "--quant", ""])  # fmt: skip
    assert done.exit_code == 2
    assert "gpt_neox" in done.output and "llama, mistral, qwen2, qwen3, gemma3_text, phi3" in (
        done.output
    )


def test_recipe_runs_the_export_stage(case_inputs, calibration: Path, tmp_path: Path) -> None:
    from localguard.plan import build_plan
    from localguard.recipe import load_recipe
    from localguard.runner import run_plan

    model, _ = case_inputs("llama-spm")
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(
        f'[run]\nout = "{tmp_path / "run"}"\n[model]\npath = "{model}"\n'
        "[probe]\nenabled = false\n[finetune]\nenabled = false\n[head]\nenabled = false\n"
        f'[export]\nquant = ["Q8_0"]\ncalibration = "{calibration}"\ncalibration_size = 4\n'
        "[eval]\nenabled = false\n"
    )
    recipe = load_recipe(recipe_path)
    plan = build_plan(recipe)
    assert [s.name for s in plan] == ["export"]
    run_plan(recipe, plan)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    result = run["stages"][0]["result"]
    assert result["files"] == ["model-F16.gguf", "model-Q8_0.gguf"]
    run_plan(recipe, plan)  # finished with the same options: reused
    assert (tmp_path / "run" / "export" / "model-Q8_0.gguf").is_file()


def test_calibration_sources(case_inputs, calibration: Path, tmp_path: Path) -> None:
    """--calibration first, then a starter world's held-out set, then the head's own training
    data, then the built-in conversations."""
    from localguard.export import calibration_conversations
    from localguard.safety_head import load_head

    model, head_dir = case_inputs("qwen2")
    _, tokenizer = mlx_lm.load(str(model))
    head = load_head(head_dir)
    opts = ExportOptions(model=model, out=tmp_path, calibration=calibration, calibration_size=5)
    convs, source = calibration_conversations(opts, tokenizer, head)
    assert len(convs) == 5 and source == str(calibration)

    opts.calibration = None
    convs, source = calibration_conversations(opts, tokenizer, None)
    assert source == "built-in conversations" and len(convs) == 8
    head.metadata["manifest"] = {"data": {"path": str(calibration)}}
    convs, source = calibration_conversations(opts, tokenizer, head)
    assert source.endswith("(head data)") and len(convs) == 5

    starter = tmp_path / "world"
    shutil.copytree(model, starter / "model")
    (starter / "starter.json").write_text(json.dumps({"kind": "starter", "seed": 3}))
    opts.model = starter / "model"
    convs, source = calibration_conversations(opts, tokenizer, head)
    assert source == "starter held-out conversations (seed 3)" and len(convs) == 5
    assert {c.query for c in convs} <= {0, 1} and all(c.start > 0 for c in convs)
