"""Where localguard keeps what it builds and caches (LOCALGUARD_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The localguard cache folder: $LOCALGUARD_HOME, else ~/.cache/localguard."""
    env = os.environ.get("LOCALGUARD_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "localguard"
