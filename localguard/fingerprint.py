"""Model fingerprints: a probe, a head or a judge cache records the model it was made for, and
a file made for another model is refused instead of silently scoring the wrong features."""

from __future__ import annotations

import hashlib
from pathlib import Path

from localguard.errors import InputError


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of config.json, the sorted names and shapes of the weight tensors, and each
    weight file's size and first and last MiB.

    Reads a few MiB per file, so it stays fast on multi-gigabyte models, yet two models that
    differ only in their weights (another seed, a fused fine-tune) get different prints.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise InputError(f"{config}: missing; not a model folder")
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise InputError(f"{model_dir}: no model*.safetensors weight files")
    digest = hashlib.sha256(config.read_bytes())
    shapes = []
    for path in files:
        with safe_open(str(path), framework="numpy") as handle:
            names = handle.keys()
            shapes += [(name, handle.get_slice(name).get_shape()) for name in names]
        digest.update(_weight_sample(path))
    for name, shape in sorted(shapes):
        digest.update(f"\n{name}:{list(shape)}".encode())
    return digest.hexdigest()


def _weight_sample(path: Path, span: int = 1 << 20) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(span)
        fh.seek(max(size - span, 0))
        return f"{size}:".encode() + head + fh.read(span)


def check_fingerprint(what: str, metadata: dict, model_dir: Path) -> None:
    """Refuse a file (a probe, a head) whose recorded model fingerprint is not this model's."""
    where = f"{what} {metadata.get('path', '(unsaved)')}"
    manifest = metadata.get("manifest") or {}
    expected = manifest.get("model_fingerprint")
    if not expected:
        raise InputError(f"{where} records no model fingerprint; retrain it")
    actual = model_fingerprint(model_dir)
    if actual != expected:
        trained_for = manifest.get("model_path", "an unknown model")
        raise InputError(
            f"{where} was trained for another model ({trained_for}, fingerprint "
            f"{expected[:12]}), not {model_dir} (fingerprint {actual[:12]})"
        )
