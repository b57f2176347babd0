"""What an export carries from its source besides the weights: the provenance (general.*) and
the tokenizer switches as llama.cpp's converter wrote or would write them, through the fused
path of a tiny model. On the real SmolLM2-135M (every key of the file llama.cpp's converter
made) test_smollm2_stages checks the export its stage chain writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_cases import random_adapter
from tiny_models import make_tiny_model

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from gguf_fields import gguf_fields  # noqa: E402

from localguard.backends.llamacpp import gguf_keys as keys  # noqa: E402
from localguard.export import ExportOptions, export  # noqa: E402

CARD = "---\nlicense: mit\nbase_model: some-org/Base-1B\nlanguage:\n- en\n---\n# tiny\n"


def _provenance(fields: dict) -> dict:
    return {
        k: v
        for k, v in fields.items()
        if k.startswith(keys.GENERAL_PREFIX) and k not in keys.FILE_KEYS
    }


def test_a_fused_export_carries_its_base_models_card(tmp_path: Path) -> None:
    """The adapter is fused into a temporary copy; the files are still named and licensed by
    the base folder's card, the quantized one like the F16 one."""
    model = make_tiny_model("qwen3", tmp_path / "my-model", tokenizer="bytelevel")
    (model / "README.md").write_text(CARD)
    adapter = random_adapter(model, tmp_path / "adapter")
    report = export(
        ExportOptions(model=model, out=tmp_path / "gguf", adapter=adapter, quant=["Q8_0"])
    )
    assert report["fused"]["layers"] > 0
    files = [tmp_path / "gguf" / f["file"] for f in report["files"]]
    first = _provenance(gguf_fields(files[0]))
    assert first["general.license"] == (["STRING"], "mit")
    assert first["general.languages"] == (["ARRAY", "STRING"], ["en"])
    assert first["general.base_model.count"] == (["UINT32"], 1)
    assert first["general.name"][1].lower().split() == ["my", "model"]  # not the fused copy's
    assert report["converter"]["provenance"]["general.license"] == "mit"
    for path in files[1:]:
        assert _provenance(gguf_fields(path)) == first
