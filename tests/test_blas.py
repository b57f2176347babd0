"""The fast BLAS is really in effect in the test process, and the switch to turn it off works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from localguard import blas

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the BLAS preload is a Linux measure"
)

MEASURE = "from localguard.backends.mlx.runtime import matmul_gflops; print(matmul_gflops(512, 3))"


def test_openblas_is_mapped_into_the_test_process():
    assert blas.find_fast_blas(), "no OpenBLAS on this machine: run `make sysdeps`"
    import mlx.core  # noqa: F401  (the BLAS must serve MLX, loaded after it)
    import numpy  # noqa: F401  (its wheel maps a private OpenBLAS that must not count)

    loaded = blas.loaded_blas()
    assert loaded is not None
    assert os.path.realpath(loaded) == os.path.realpath(blas.find_fast_blas())
    assert "OpenBLAS preloaded" in blas.describe()


def test_matmul_is_much_faster_than_with_the_reference_blas():
    """A ratio measured side by side, not an absolute time: the reference BLAS is 20x+ slower."""
    from localguard.backends.mlx.runtime import matmul_gflops

    fast = max(matmul_gflops(512, 3) for _ in range(2))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas.REEXEC_MARK)}
    env["LOCALGUARD_FAST_BLAS"] = "0"
    slow = float(
        subprocess.run(
            [sys.executable, "-c", MEASURE],
            env=env,
            text=True,
            capture_output=True,
            timeout=300,
            check=True,
        ).stdout
    )
    assert fast / slow > 4, f"fast {fast:.1f} vs reference {slow:.1f} GFLOP/s"


def test_switch_off_and_explicit_library(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALGUARD_FAST_BLAS", "0")
    assert blas.preload_env() is None
    monkeypatch.setenv("LOCALGUARD_FAST_BLAS", "1")
    monkeypatch.setenv("LOCALGUARD_BLAS", str(tmp_path / "missing.so"))
    assert blas.find_fast_blas() is None
    fake = tmp_path / "libopenblas.so.0"
    fake.write_bytes(b"not a library")
    monkeypatch.setenv("LOCALGUARD_BLAS", str(fake))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert blas.find_fast_blas() == str(fake)
    assert blas.preload_env() is None, "a library that does not load must never be preloaded"
