"""Test-session set-up: fast BLAS for MLX, no network, a private localguard home."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from localguard import blas
from localguard.pypi_models import models_dir

os.environ["HF_HUB_OFFLINE"] = "1"
_test_home: list[str] = []  # the folder this session made, removed at its end


def pytest_configure(config: pytest.Config) -> None:
    """Re-run pytest once with OpenBLAS preloaded, as the `localguard` command does for itself,
    then point LOCALGUARD_HOME at a fresh folder so builds never touch the user's cache (the
    real models fetched by the install stay readable through LOCALGUARD_MODELS).

    Global output capture is released before the switch so the new process writes to the
    real terminal.
    """
    capture = config.pluginmanager.getplugin("capturemanager")
    blas.reexec_with_fast_blas(capture.stop_global_capturing if capture else None)
    os.environ.setdefault("LOCALGUARD_MODELS", str(models_dir()))  # fetched by the install
    _test_home.append(tempfile.mkdtemp(prefix="localguard-test-home-"))
    os.environ["LOCALGUARD_HOME"] = _test_home[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _test_home:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def starter_model() -> Path:
    """The test-size starter world, built once per test session in LOCALGUARD_HOME."""
    from localguard.starter.build import build

    return build("test", 0)


@pytest.fixture(scope="session")
def stream_head(starter_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stream-mode head (with its adapter) on the test world, trained for 4 steps: enough for
    tests that need a working head, not for its quality. Tests read it and never change it."""
    from localguard.head import HeadOptions, train_head

    out = tmp_path_factory.mktemp("stream") / "head"
    data = starter_model.parent / "data" / "safety_conversations.jsonl"
    opts = HeadOptions(
        model=starter_model,
        data=data,
        out=out,
        iters=4,
        batch_size=2,
        steps_per_save=2,
        max_seq_length=96,
    )
    train_head(opts)
    return out
