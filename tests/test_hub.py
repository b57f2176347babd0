"""Model references: local folders, hub ids, and the offline error."""

from __future__ import annotations

import pytest

from localguard.errors import ModelNotFoundError
from localguard.hub import looks_like_hub_id, resolve_model


def test_local_folder_resolves(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(tmp_path)


def test_path_that_is_not_a_hub_id(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a folder nor a hub id"):
        resolve_model(str(tmp_path / "nowhere" / "deep" / "model"))


def test_offline_missing_hub_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the hub cache and HF_HUB_OFFLINE=1"):
        resolve_model("localguard-tests/no-such-model")


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("Qwen/Qwen2.5-0.5B", True),
        ("./model", False),
        ("a/b/c", False),
        ("plain", False),
        ("/abs/x", False),
    ],
)
def test_hub_id_shape(ref, ok):
    assert looks_like_hub_id(ref) is ok


@pytest.mark.parametrize(("kwargs", "seed"), [({}, 0), ({"seed": 3}, 3)])
def test_a_starter_reference_builds_the_world_of_its_seed(monkeypatch, tmp_path, kwargs, seed):
    built = []

    def build(size, seed=0):
        built.append((size, seed))
        return tmp_path / f"{size}-seed{seed}" / "model"

    monkeypatch.setattr("localguard.starter.build.build", build)
    folder = resolve_model("starter:test", "ignored-revision", **kwargs)
    assert built == [("test", seed)] and folder == tmp_path / f"test-seed{seed}" / "model"


def test_seed_means_nothing_for_a_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path), seed=7) == tmp_path.resolve()


def test_a_gguf_file_is_imported_through_the_cache(monkeypatch, tmp_path):
    """A .gguf path goes to the import cache (import_gguf.cached_import); a missing one is a
    clear error; a folder whose name ends in .gguf is still a folder."""
    seen = []

    def cached_import(path):
        seen.append(path)
        return tmp_path / "imported"

    monkeypatch.setattr("localguard.import_gguf.cached_import", cached_import)
    model = tmp_path / "model.Q4_K_M.GGUF"
    model.write_bytes(b"GGUF")
    assert resolve_model(str(model)) == tmp_path / "imported" and seen == [model]
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(tmp_path / "missing.gguf")
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(folder) == folder.resolve() and len(seen) == 1
