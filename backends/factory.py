"""The one place that turns a model reference into a GuardBackend, for chat, eval and the benches.

The backend modules are imported only when asked for, so a machine without one of the
frameworks can still use the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from localguard.backends.base import GuardBackend
from localguard.errors import InputError
from localguard.pypi_models import is_packaged, model_file

BACKENDS = ("llamacpp", "mlx")


def backend_for(ref: str | os.PathLike[str]) -> str:
    """How chat, eval and label serve a model reference: a .gguf file through llama.cpp (with
    the head baked into it), anything else (folder, hub id, starter:SIZE, smollm2:135m) as an
    MLX model."""
    return "llamacpp" if str(ref).lower().endswith(".gguf") else "mlx"


def gguf_path(ref: str | os.PathLike[str]) -> Path:
    """The GGUF file a reference names, which must exist."""
    path = Path(ref).expanduser()
    if not path.is_file():
        raise InputError(f"{ref}: no such GGUF file")
    return path


def open_guard_backend(
    model: str | os.PathLike[str],
    backend: str = "llamacpp",
    *,
    adapter: str | os.PathLike[str] | None = None,
    head: str | os.PathLike[str] | None = None,
    lora: str | os.PathLike[str] | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    cls_schedule: str | None = None,
    cls_period: int | None = None,
) -> GuardBackend:
    """A GGUF file (or a packaged model such as smollm2:135m) with its baked head (llamacpp,
    optionally + a LoRA GGUF), or a model folder, GGUF or hub id + head folder + adapter (mlx). A
    model without a head (no head given, or a GGUF exported without one) serves guard off only.
    cls_schedule and cls_period: a CLS head's re-checks (None: the [guard] defaults). The
    caller closes the backend."""
    chosen = {"cls_schedule": cls_schedule, "cls_period": cls_period}
    cls_options = {k: v for k, v in chosen.items() if v is not None}
    if backend == "llamacpp":
        if adapter or head:
            raise InputError("--adapter and --head are for --backend mlx; a GGUF carries its head")
        from localguard.backends.llamacpp.guarded import LlamaCppGuardBackend

        path = model_file(str(model)) if is_packaged(str(model)) else Path(model).expanduser()
        return LlamaCppGuardBackend.load(
            path, Path(lora) if lora else None, n_ctx, n_threads, **cls_options
        )
    if backend == "mlx":
        if lora:
            raise InputError("--lora is for --backend llamacpp; use --adapter with mlx")
        from localguard.backends.mlx.guarded import MLXGuardBackend
        from localguard.hub import resolve_model

        return MLXGuardBackend.load(
            resolve_model(model),
            Path(head) if head else None,
            Path(adapter) if adapter else None,
            **cls_options,
        )
    raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
