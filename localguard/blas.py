"""A fast BLAS for MLX on Linux.

The mlx-cpu wheel links the reference BLAS: a 1024x1024 float32 matmul runs at a few GFLOP/s.
OpenBLAS exports the same cblas symbols, so preloading it makes MLX's CPU matmuls 20-50x faster.
LD_PRELOAD only acts at process start, so the entry points re-execute themselves once with the
library preloaded. LOCALGUARD_FAST_BLAS=0 turns this off; LOCALGUARD_BLAS=/path/to/lib chooses
the library. On Debian and Ubuntu the library is `apt-get install libopenblas0-pthread`.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REEXEC_MARK = "LOCALGUARD_BLAS_REEXEC"
SEARCH_PATTERNS = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",  # Debian, Ubuntu
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",  # Fedora (pthread build)
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",  # Arch
)
FAST_BLAS_NAMES = ("openblas", "mkl_rt", "libblis")
# numpy's and scipy's wheels bundle an OpenBLAS whose symbols are renamed, so it never serves MLX.
PRIVATE_BLAS_NAMES = ("scipy_openblas",)


def enabled() -> bool:
    """Whether localguard should arrange a fast BLAS at all (Linux, not switched off)."""
    return sys.platform.startswith("linux") and os.environ.get("LOCALGUARD_FAST_BLAS", "1") != "0"


def find_fast_blas() -> str | None:
    """The path of an optimized BLAS to preload, or None when there is none on this machine."""
    chosen = os.environ.get("LOCALGUARD_BLAS")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for pattern in SEARCH_PATTERNS:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    return None


def _serves_mlx(name: str) -> bool:
    return any(n in name for n in FAST_BLAS_NAMES) and not any(
        n in name for n in PRIVATE_BLAS_NAMES
    )


def loaded_blas() -> str | None:
    """The optimized BLAS library mapped into this process for MLX, if any (Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6 and _serves_mlx(Path(fields[-1]).name):
            return fields[-1]
    return None


def _loads_cleanly(env: dict[str, str], lib: str) -> bool:
    """The library must really load, and a crash (a build for another CPU) must not be ours."""
    real = os.path.realpath(lib)
    check = f"import sys; sys.exit({real!r} not in open('/proc/self/maps').read())"
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-c", check], env=env, timeout=30, capture_output=True
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def preload_env(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """A copy of env with the fast BLAS preloaded, or None when that is impossible or not needed."""
    env = dict(os.environ if env is None else env)
    lib = find_fast_blas() if enabled() else None
    if lib is None or lib in env.get("LD_PRELOAD", "").split(":"):
        return None
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[REEXEC_MARK] = "1"
    return env if _loads_cleanly(env, lib) else None


def reexec_with_fast_blas(before_exec: Callable[[], object] | None = None) -> None:
    """Replace this process by the same command with the fast BLAS preloaded (once).

    before_exec runs just before the switch (pytest uses it to release its output capture).
    """
    if os.environ.get(REEXEC_MARK) or loaded_blas():
        return
    env = preload_env()
    if env is None:
        return
    if before_exec is not None:
        before_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe() -> str:
    """One line for `localguard doctor`: which BLAS this process uses, and how to get a fast one."""
    if not sys.platform.startswith("linux"):
        return "Accelerate (macOS)" if sys.platform == "darwin" else "platform default"
    lib = loaded_blas()
    if lib:
        return f"OpenBLAS preloaded ({lib})" if "openblas" in lib else f"optimized ({lib})"
    if not enabled():
        return "reference BLAS (slow; LOCALGUARD_FAST_BLAS=0)"
    return "reference BLAS (slow; install OpenBLAS: apt-get install libopenblas0-pthread)"
