"""The export stage (localguard.export.stage): the files it writes and what they hold, the
fused and LoRA-only paths, interruptions, and the stage run from the CLI and a recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from export_cases import (
    F16_TOLERANCE,
    PROMPT,
    gguf_tensors,
    mlx_with_head,
    random_adapter,
    random_head,
    stock_logits,
)

from localguard.errors import InputError

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from localguard.backends.llamacpp import gguf_keys as keys  # noqa: E402
from localguard.backends.llamacpp.convert import convert_to_gguf  # noqa: E402
from localguard.backends.llamacpp.extra_buffers import open_llama  # noqa: E402
from localguard.backends.llamacpp.gguf_runtime import (  # noqa: E402
    GGUFModel,
    patch_metadata,
    read_head,
)
from localguard.encoding import encode_text  # noqa: E402
from localguard.export import ExportOptions, export, format_report  # noqa: E402

REPORT_SECTIONS = [
    "kind",
    "localguard",
    "options",
    "model",
    "adapter",
    "head",
    "guard",
    "calibration",
    "parity",
    "files",
]
MEASURED = [
    "tokenization",
    "max_logit_diff",
    "relative_logit_diff",
    "argmax_agreement",
    "top5_agreement",
    "bias",
    "bias_shift",
    "head_max_diff",
    "verdict_agreement",
    "calibration_positions",
]


def test_report_sections_in_order(exported) -> None:
    """export.json: the header, the files, then what the full path adds, then the totals; each
    file entry: what the file is, its tensors, the measurements, the targets."""
    report, out = exported("qwen3")
    assert list(report) == REPORT_SECTIONS + ["fused", "converter", "targets_met", "seconds"]
    assert list(json.loads((out / "export.json").read_text())) == list(report)
    tensors = ["tensor_types", "vocab_tensors", "fallback_tensors"]
    for entry in report["files"]:
        assert list(entry) == ["file", "type", "bytes", *tensors, *MEASURED, "targets"]
    assert [f["type"] for f in report["files"]] == ["F16", "Q8_0", "Q4_K_M"]
    assert report["targets_met"] == all(
        check["met"] for f in report["files"] for check in f["targets"].values()
    )


def test_quantized_files_keep_the_vocabulary_at_q8_and_report_fallbacks(exported) -> None:
    """Q4_K_M on rows of 64 (not a multiple of 256): llama.cpp falls back, and says so in the
    report; output / embedding stay Q8_0, so the head rows move about as little as in Q8_0."""
    report, out = exported("qwen3")
    by_type = {f["type"]: f for f in report["files"]}
    assert by_type["Q4_K_M"]["fallback_tensors"]  # hidden 64 < 256
    assert not by_type["Q8_0"]["fallback_tensors"]
    for name in ("Q8_0", "Q4_K_M"):
        assert by_type[name]["vocab_tensors"] == {"token_embd.weight": "Q8_0"}
        assert gguf_tensors(out / f"model-{name}.gguf")["token_embd.weight"][1] == "Q8_0"
    assert by_type["Q8_0"]["verdict_agreement"]["beyond_ties"] >= 0.95
    table = format_report(report)
    assert "model-Q4_K_M.gguf" in table and "verdicts" in table
    fallbacks = len(by_type["Q4_K_M"]["fallback_tensors"])
    assert f"model-Q4_K_M.gguf: {fallbacks} of " in table
    assert "model-Q8_0.gguf:" not in table


def test_quantize_reports_fallbacks_without_a_line_each(exported, tmp_path, capfd) -> None:
    """llama.cpp would print one warning per tensor that falls back (hundreds on a real model);
    quantize keeps its log quiet and reports the tensors instead."""
    from localguard.backends.llamacpp.quantize import quantize

    _, out = exported("qwen3")
    capfd.readouterr()
    found = quantize(out / "model-F16.gguf", tmp_path / "q.gguf", "Q4_K_M")
    assert found["fallback_tensors"]
    assert "falling back" not in capfd.readouterr().err


# --- the head in the file -----------------------------------------------------------------------


def test_metadata_round_trip(case_inputs, exported) -> None:
    model_dir, head_dir = case_inputs("mistral-spm")
    report, out = exported("mistral-spm")
    _, _, head = mlx_with_head(model_dir, head_dir)
    for entry in report["files"]:
        path = out / entry["file"]
        spec = read_head(path)
        assert spec.names == ["query", "response"]
        np.testing.assert_allclose(spec.thresholds, head.thresholds, rtol=1e-6)
        np.testing.assert_allclose(spec.scale, [keys.HEAD_ROW_SCALE] * 2)
        np.testing.assert_allclose(spec.bias_shift, entry["bias_shift"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(spec.bias, head.bias + spec.bias_shift, rtol=1e-5, atol=1e-6)
        assert spec.extra[keys.GUARD_TAU] == spec.tau == 2
        assert spec.extra[keys.GUARD_REFUSAL_PREFIX] == spec.refusal_prefix
        assert spec.refusal_prefix.startswith("Sorry")
        fields = gguf.GGUFReader(str(path)).fields
        tokens = fields["tokenizer.ggml.tokens"].contents()
        assert tokens[spec.token_ids[0]] == "<|localguard_query|>"
        types = fields["tokenizer.ggml.token_type"].contents()
        assert [types[i] for i in spec.token_ids] == [gguf.TokenType.CONTROL] * 2
    copy = out.parent / "patched.gguf"
    shutil.copy(out / "model-Q8_0.gguf", copy)
    patch_metadata(copy, {keys.HEAD_BIAS: [1.5, -0.25]})
    np.testing.assert_allclose(read_head(copy).bias, [1.5, -0.25])
    with pytest.raises(InputError, match="has 2 values, not 3"):
        patch_metadata(copy, {keys.HEAD_BIAS: [1.0, 2.0, 3.0]})


def test_head_rows_scored_and_never_sampled(case_inputs, exported) -> None:
    """The runtime reads the head at every position, masks the rows before sampling, and a
    typed control-token string stays text; stock llama.cpp chats with the file."""
    model_dir, head_dir = case_inputs("qwen3")
    _, out = exported("qwen3")
    model, tokenizer, head = mlx_with_head(model_dir, head_dir)
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
    stock = open_llama(out / "model-Q8_0.gguf", n_ctx=256, n_threads=1, verbose=False)
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
    adapter = random_adapter(quantized, tmp_path / "dora", dora=True)
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

    opts = ExportOptions(
        model=quantized, adapter=adapter, out=tmp_path / "out", quant=[], calibration=calibration
    )
    report = export(opts)
    assert report["fused"] == {"layers": report["fused"]["layers"], "dequantized": True}
    assert report["files"][0]["max_logit_diff"] < F16_TOLERANCE
    got = stock_logits(tmp_path / "out" / "model-F16.gguf", ids)
    assert np.abs(got - want).max() < F16_TOLERANCE


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
    adapter = random_adapter(model_dir, tmp_path / "adapter")
    head_dir = random_head(model_dir, tmp_path / "head", adapter)
    base = tmp_path / "base-Q8_0.gguf"
    convert_to_gguf(model_dir, tmp_path / "base.gguf", outtype="f16")
    from localguard.backends.llamacpp.quantize import quantize

    quantize(tmp_path / "base.gguf", base, "Q8_0")
    out = tmp_path / "out"
    opts = ExportOptions(
        model=model_dir,
        head=head_dir,
        out=out,
        lora_only=True,
        base_gguf=base,
        calibration=calibration,
    )
    report = export(opts)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "lora.gguf"]
    assert list(report) == REPORT_SECTIONS + ["lora", "targets_met", "seconds"]
    assert list(report["lora"])[-1] == "base" and report["lora"]["base"] == str(base)
    config = json.loads((model_dir / "config.json").read_text())
    n = config["vocab_size"]
    assert report["lora"]["head_token_ids"] == {"query": n - 2, "response": n - 1}
    entry = report["files"][0]
    assert list(entry) == ["file", "type", "bytes", "on", *MEASURED, "targets"]
    assert entry["tokenization"]["equal"] == entry["tokenization"]["total"]
    assert entry["verdict_agreement"]["beyond_ties"] >= 0.95

    model, tokenizer, head = mlx_with_head(model_dir, head_dir)
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
    dora = random_adapter(untied, tmp_path / "dora", dora=True)
    with pytest.raises(InputError, match="DoRA"):
        export(ExportOptions(model=untied, adapter=dora, out=tmp_path / "b", lora_only=True))
    with pytest.raises(InputError, match="needs an adapter"):
        export(ExportOptions(model=untied, out=tmp_path / "c", lora_only=True))
    bare_head = random_head(untied, tmp_path / "head", random_adapter(untied, tmp_path / "ad"))
    with pytest.raises(InputError, match="unused token rows"):  # every row is a real token
        export(ExportOptions(model=untied, head=bare_head, out=tmp_path / "d", lora_only=True))
    assert not any((tmp_path / d / "lora.gguf").exists() for d in "abcd")


# --- interruptions ------------------------------------------------------------------------------


def test_interrupted_export_leaves_nothing_under_a_final_name(
    case_inputs, calibration: Path, tmp_path: Path, monkeypatch
) -> None:
    import localguard.export.stage as stage

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
    opts = ExportOptions(
        model=model, head=head, out=out, quant=["Q8_0"], calibration=calibration, calibration_size=4
    )
    with pytest.raises(KeyboardInterrupt):
        export(opts)
    assert sorted(p.name for p in out.iterdir()) == ["model-F16.gguf"]  # finished before
    assert calls[1].name.startswith(".model-Q8_0.gguf")  # measured under a temporary name

    monkeypatch.setattr(stage, "measure", real)

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("localguard.backends.llamacpp.convert.write_gguf", explode)
    opts = ExportOptions(
        model=model,
        head=head,
        out=tmp_path / "two",
        quant=[],
        calibration=calibration,
        calibration_size=4,
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(opts)
    assert list((tmp_path / "two").iterdir()) == []


# --- the stage from the CLI and from a recipe ---------------------------------------------------


def test_cli_export_and_errors(case_inputs, tmp_path: Path) -> None:
    from localguard.cli import cli

    model, _ = case_inputs("phi3-spm")
    out = tmp_path / "out"
    args = ["--model", str(model), "--out", str(out), "--quant", "Q8_0", "--calibration-size", "4"]
    done = CliRunner().invoke(cli, ["export", *args])
    assert done.exit_code == 0, done.output
    assert "model-F16.gguf" in done.output and "model-Q8_0.gguf" in done.output
    report = json.loads((out / "export.json").read_text())
    assert report["head"] is None and report["files"][1]["type"] == "Q8_0"

    args = ["--model", str(model), "--out", str(out), "--quant", "Q9_X"]
    done = CliRunner().invoke(cli, ["export", *args])
    assert done.exit_code == 2 and "Q9_X" in done.output and "Q4_K_M" in done.output
    other = tmp_path / "neox"
    shutil.copytree(model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    args = ["--model", str(other), "--out", str(tmp_path / "x"), "--quant", ""]
    done = CliRunner().invoke(cli, ["export", *args])
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
