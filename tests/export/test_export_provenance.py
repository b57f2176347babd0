"""What an export carries from its source besides the weights: the provenance (general.*) and
the tokenizer switches as llama.cpp's converter wrote or would write them, through the fused
path of a tiny model, and on the real SmolLM2-135M import every tokenizer and hyperparameter
key of the original Q4_1 file (llama.cpp's converter made it), tokenizing exactly as it does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_cases import random_adapter
from tiny_models import make_tiny_model

from localguard.parity_texts import PARITY_TEXTS

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from localguard.backends.llamacpp import gguf_keys as keys  # noqa: E402
from localguard.backends.llamacpp.gguf_runtime import GGUFModel  # noqa: E402
from localguard.export import ExportOptions, export  # noqa: E402

CARD = "---\nlicense: mit\nbase_model: some-org/Base-1B\nlanguage:\n- en\n---\n# tiny\n"


def _fields(path: Path) -> dict[str, tuple[list[str], object]]:
    """Every metadata key of a GGUF file with its value types and value."""
    reader = gguf.GGUFReader(str(path))
    return {
        k: ([t.name for t in f.types], f.contents())
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.")
    }


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
    first = _provenance(_fields(files[0]))
    assert first["general.license"] == (["STRING"], "mit")
    assert first["general.languages"] == (["ARRAY", "STRING"], ["en"])
    assert first["general.base_model.count"] == (["UINT32"], 1)
    assert first["general.name"][1].lower().split() == ["my", "model"]  # not the fused copy's
    assert report["converter"]["provenance"]["general.license"] == "mit"
    for path in files[1:]:
        assert _provenance(_fields(path)) == first


def _smollm2_gguf() -> Path:
    from localguard.pypi_models import local_path

    path = local_path("smollm2:135m")
    if not path.is_file():
        pytest.skip(f"smollm2:135m is not fetched here ({path}); `make install` fetches it")
    return path


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory: pytest.TempPathFactory):
    """(the original Q4_1 file, the export report, its folder): smollm2:135m imported into the
    test home and exported to F16 and Q8_0 without a head (the 400 MB removed afterwards)."""
    from localguard.hub import resolve_model

    original = _smollm2_gguf()
    model = resolve_model("smollm2:135m", None, seed=0)
    out = tmp_path_factory.mktemp("smollm2") / "gguf"
    report = export(ExportOptions(model=model, out=out, quant=["Q8_0"]))
    yield original, report, out
    shutil.rmtree(out, ignore_errors=True)


def test_smollm2_export_has_the_original_keys(smollm2_export) -> None:
    """Every key of the original but the file type comes back with its type and value: the
    provenance (licence, name, organization, languages ...), the tokenizer switches
    (add_bos_token, add_space_prefix; no add_eos_token, which the original lacks), the whole
    vocabulary and every hyperparameter; the export adds only localguard's own keys."""
    original, report, out = smollm2_export
    want = _fields(original)
    assert want["general.license"] == (["STRING"], "apache-2.0")
    for entry in report["files"]:
        got = _fields(out / entry["file"])
        own = [k for k in got if k.startswith(keys.KEY_PREFIX)]
        assert set(got) - set(own) == set(want), entry["file"]
        differ = [k for k in want if got[k] != want[k]]
        assert differ == [gguf.Keys.General.FILE_TYPE], (entry["file"], differ)


def test_smollm2_export_tokenizes_as_the_original(smollm2_export) -> None:
    """llama.cpp on the exported files and on the original Q4_1 gives the same ids on the parity
    texts, with special-token parsing off and on; the export's own parity (MLX against each file,
    chats included) agrees on every text."""
    original, report, out = smollm2_export
    with GGUFModel(original, n_ctx=64) as llm:
        want = [
            (llm.tokenize(t, special=False), llm.tokenize(t, special=True)) for t in PARITY_TEXTS
        ]
    for entry in report["files"]:
        assert entry["tokenization"]["equal"] == entry["tokenization"]["total"], entry["file"]
        with GGUFModel(out / entry["file"], n_ctx=64) as llm:
            got = [
                (llm.tokenize(t, special=False), llm.tokenize(t, special=True))
                for t in PARITY_TEXTS
            ]
        assert got == want, entry["file"]
    assert json.loads((out / "export.json").read_text())["files"] == report["files"]
