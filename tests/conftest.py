"""Test-session set-up: fast BLAS for MLX, no network."""

from __future__ import annotations

import os

import pytest

from localguard import blas

os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    """Re-run pytest once with OpenBLAS preloaded, as the `localguard` command does for itself.

    Global output capture is released first so the new process writes to the real terminal.
    """
    capture = config.pluginmanager.getplugin("capturemanager")
    blas.reexec_with_fast_blas(capture.stop_global_capturing if capture else None)
