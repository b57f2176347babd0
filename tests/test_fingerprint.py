"""Model fingerprints tell models apart and refuse a folder that is not a model."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import ARCHITECTURES, make_tiny_model

from localguard.errors import InputError
from localguard.fingerprint import model_fingerprint


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fingerprint-models")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


def test_fingerprint_tells_models_apart(models: dict[str, Path]) -> None:
    fingerprints = {model_fingerprint(models[a]) for a in ARCHITECTURES}
    assert len(fingerprints) == len(ARCHITECTURES)
    assert model_fingerprint(models["llama"]) == model_fingerprint(models["llama"])
    with pytest.raises(InputError, match="config.json"):
        model_fingerprint(models["llama"] / "missing")
