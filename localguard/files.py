"""Small file helpers shared by the stages: nothing is ever half-written."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temporary name in the same folder first, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
