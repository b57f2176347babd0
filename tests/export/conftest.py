"""Fixtures of the export tests: the tiny models with their heads, and their exports, made
once per test session and shared by every file in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_cases import CASES, random_adapter, random_head
from tiny_models import conversation_rows, make_tiny_model, write_jsonl


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def calibration(root: Path) -> Path:
    return write_jsonl(root / "calibration.jsonl", conversation_rows(16))


@pytest.fixture(scope="session")
def case_inputs(root: Path):
    """case -> (model, head folder with its own adapter), made once per session."""
    for module in ("mlx.core", "mlx_lm", "llama_cpp", "gguf"):
        pytest.importorskip(module)
    cache: dict[str, tuple[Path, Path]] = {}

    def get(case: str) -> tuple[Path, Path]:
        if case not in cache:
            arch, kind = CASES[case]
            model = make_tiny_model(arch, root / case / "model", tokenizer=kind)
            adapter = random_adapter(model, root / case / "adapter")
            cache[case] = model, random_head(model, root / case / "head", adapter)
        return cache[case]

    return get


@pytest.fixture(scope="session")
def exported(case_inputs, calibration: Path, root: Path):
    """case -> (export report, out folder): F16 + Q8_0 (+ Q4_K_M for qwen3), exported once."""
    from localguard.export import ExportOptions, export

    cache: dict[str, tuple[dict, Path]] = {}

    def get(case: str) -> tuple[dict, Path]:
        if case not in cache:
            model, head = case_inputs(case)
            out = root / case / "gguf"
            quant = ["Q8_0,Q4_K_M"] if case == "qwen3" else ["Q8_0"]
            opts = ExportOptions(
                model=model,
                out=out,
                head=head,
                quant=quant,
                calibration=calibration,
                calibration_size=16,
            )
            cache[case] = export(opts), out
        return cache[case]

    return get
