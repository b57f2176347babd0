"""The starter world: a tiny chat model and its data, generated and trained offline."""

from __future__ import annotations

STARTER_PREFIX = "starter:"


def starter_size(ref: str) -> str | None:
    """The SIZE of a "starter:SIZE" model reference, or None for any other reference."""
    return ref[len(STARTER_PREFIX) :] if ref.startswith(STARTER_PREFIX) else None
