"""The export's inputs (localguard.export.inputs): which adapter is fused, damaged files as
one-line errors, and where the calibration conversations come from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_cases import random_adapter, random_head

from localguard.errors import InputError, LocalguardError

mlx_lm = pytest.importorskip("mlx_lm")
pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from localguard.backends.llamacpp.gguf_runtime import GGUFModel, read_head  # noqa: E402
from localguard.export import ExportOptions, export  # noqa: E402
from localguard.export.inputs import calibration_conversations, resolve_inputs  # noqa: E402


def test_adapter_rules(case_inputs, tmp_path: Path) -> None:
    """A stream head's own adapter supersedes --adapter; a head trained without an adapter
    refuses one."""
    model, stream_head = case_inputs("qwen2")
    other = random_adapter(model, tmp_path / "other", seed=5)
    inputs = resolve_inputs(
        ExportOptions(model=model, out=tmp_path, adapter=other, head=stream_head)
    )
    assert inputs.adapter == stream_head and inputs.superseded == other
    bare = random_head(model, tmp_path / "bare")
    with pytest.raises(InputError, match="without an adapter"):
        resolve_inputs(ExportOptions(model=model, out=tmp_path, adapter=other, head=bare))
    assert resolve_inputs(ExportOptions(model=model, out=tmp_path, head=bare)).adapter is None


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
    message = _one_line_error(
        lambda: export(ExportOptions(model=model, out=tmp_path / "o", head=adapter))
    )
    assert "adapters.safetensors" in message

    gguf_bytes = (out / "model-Q8_0.gguf").read_bytes()
    damaged_files = (
        ("cut.gguf", gguf_bytes[: len(gguf_bytes) // 3]),
        ("junk.gguf", b"GGUF" + b"\xff" * 64),
        ("text.gguf", b"not a gguf file at all"),
    )
    for name, damaged in damaged_files:
        path = tmp_path / name
        path.write_bytes(damaged)
        message = _one_line_error(lambda path=path: GGUFModel(path))
        assert name in message
        _one_line_error(lambda path=path: read_head(path))
    assert not (tmp_path / "o" / "model-F16.gguf").exists()


def test_calibration_sources(case_inputs, calibration: Path, tmp_path: Path) -> None:
    """--calibration first, then a starter world's held-out set, then the head's own training
    data, then the built-in conversations."""
    from localguard.conversations import load_conversations
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
    # head data is read at the length the head was trained at, even past the export's own
    longest = max(len(c.tokens) for c in load_conversations(calibration, tokenizer, 4096))
    length, opts.max_seq_length = opts.max_seq_length, 4
    with pytest.raises(InputError, match="longer than the maximum length"):
        calibration_conversations(opts, tokenizer, head)
    head.metadata["manifest"]["options"] = {"max_seq_length": longest}
    convs, _ = calibration_conversations(opts, tokenizer, head)
    assert len(convs) == 5
    opts.max_seq_length = length

    starter = tmp_path / "world"
    shutil.copytree(model, starter / "model")
    (starter / "starter.json").write_text(json.dumps({"kind": "starter", "seed": 3}))
    opts.model = starter / "model"
    convs, source = calibration_conversations(opts, tokenizer, head)
    assert source == "starter held-out conversations (seed 3)" and len(convs) == 5
    assert {c.query for c in convs} <= {0, 1} and all(c.start > 0 for c in convs)
