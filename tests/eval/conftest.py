"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data(starter_model: Path) -> Path:
    """The test starter world's data folder (held-out sets, attack mixes)."""
    return starter_model.parent / "data"
