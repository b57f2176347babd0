"""`localguard doctor`: what this machine offers localguard, in one screen."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from localguard import __version__, blas
from localguard.home import home
from localguard.hub import hub_offline
from localguard.pypi_models import models_dir
from localguard.pypi_models import status as models_status

PACKAGES = (
    "mlx",
    "mlx-lm",
    "llama-cpp-python",
    "gguf",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "numpy",
    "click",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages localguard leans on ("missing" when absent)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def collect(measure: bool = True) -> dict[str, dict[str, str]]:
    """Every fact doctor reports, grouped by heading."""
    from huggingface_hub import constants

    from localguard.backends.llamacpp.runtime import runtime_info as llama_info
    from localguard.backends.mlx.runtime import matmul_gflops
    from localguard.backends.mlx.runtime import runtime_info as mlx_info

    system = {
        "localguard": __version__,
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": sys.version.split()[0],
        "blas": blas.describe(),
    }
    runtime = mlx_info()
    if measure and "mlx device" in runtime:
        runtime["matmul 1024 f32"] = f"{matmul_gflops():.1f} GFLOP/s"
    runtime.update(llama_info())
    storage = {
        "localguard home": str(home()),
        "hub cache": str(constants.HF_HUB_CACHE),
        "hub offline": "yes (HF_HUB_OFFLINE)" if hub_offline() else "no",
        "models": str(models_dir()),
        **{f"model {ref}": where for ref, where in models_status().items()},
    }
    return {
        "system": system,
        "runtime": runtime,
        "storage": storage,
        "packages": package_versions(),
    }


def format_report(report: dict[str, dict[str, str]]) -> str:
    """Headed, aligned key/value lines."""
    width = max(len(k) for group in report.values() for k in group)
    lines = []
    for heading, group in report.items():
        lines.append(f"[{heading}]")
        lines += [f"  {key:<{width}}  {value}" for key, value in group.items()]
    return "\n".join(lines)
