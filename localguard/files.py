"""Small file helpers shared by the stages: nothing is ever half-written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden sibling name for writing a file before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically: a temporary name in the same folder first, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def clean_json(value):
    """NaN has no JSON spelling: write null instead of an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling folder to write into; on success it replaces out_dir in one rename
    (an older out_dir is swapped out, then removed), on failure it disappears."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_kind_json(path: Path, kind: str, version: int, what: str) -> dict:
    """A localguard JSON file whose "kind" and "format" must match; defects are one-line
    InputErrors that name the file (what: "risk probe", "safety head", ...)."""
    from localguard.errors import InputError

    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; not a {what} folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("kind") != kind:
        raise InputError(f"{path}: not a localguard {what} (kind must be {kind!r})")
    if info.get("format") != version:
        raise InputError(f"{path}: format {info.get('format')!r} is not {version}")
    return info


def describe(options) -> dict:
    """A stage's options dataclass as JSON-ready data (paths as strings)."""
    from dataclasses import asdict

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
