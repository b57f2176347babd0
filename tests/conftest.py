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

SHARED_DATA = Path(
    os.environ.get("LOCALGUARD_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
"""The public safety data sets (HarmBench, JBB, AdvBench, XSTest, Alpaca ...): never part of
the project, so tests that read them skip where the folder is absent."""


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


_SUMMARY_LINES: list[str] = []


@pytest.fixture(scope="session")
def summary_lines() -> list[str]:
    """Lines for the end of the session's report, past output capture: the real-model stage
    times, which show how much of CI's time budget that chain takes."""
    return _SUMMARY_LINES


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _SUMMARY_LINES:
        terminalreporter.write_line(line)


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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """SHARED_DATA, or a skip where this machine has no copy."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (LOCALGUARD_SHARED_DATA names another folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real test model as `make install` fetched it (llama.cpp's converter made it), or a
    skip where it was not fetched."""
    from localguard.pypi_models import local_path

    path = local_path("smollm2:135m")
    if not path.is_file():
        pytest.skip(f"smollm2:135m is not fetched here ({path}); `make install` fetches it")
    return path
