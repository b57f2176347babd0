"""Reading a GGUF file's metadata as the tests compare it: every key with its types and value."""

from __future__ import annotations

from pathlib import Path

import gguf


def gguf_fields(path: Path) -> dict[str, tuple[list[str], object]]:
    """Every metadata key of a GGUF file (GGUF.* header fields aside): value types and value."""
    reader = gguf.GGUFReader(str(path))
    return {
        k: ([t.name for t in f.types], f.contents())
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.")
    }
