"""Quantize a GGUF file with llama.cpp's own quantizer (llama_cpp.llama_model_quantize).

Every file type the installed llama.cpp offers is accepted by name (Q8_0, Q4_K_M, IQ4_XS, ...).
The output matrix and the token embedding stay at Q8_0 by default: they hold the safety head's
rows, which then move by little more than the F16 file's. All metadata,
localguard's keys included, is copied by llama.cpp. The output is written under a temporary
name and renamed when llama.cpp has finished, so a failure leaves no file.

Tensors whose rows are not a multiple of the type's block (256 for K-quants) cannot take it;
llama.cpp then falls back to another type for them. quantize() reports those tensors.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localguard.backends.llamacpp.gguf_runtime import default_threads
from localguard.errors import InputError
from localguard.files import temporary_name

_FTYPE_PREFIXES = ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")
_NOT_FILE_TYPES = {"GUESSED", "MXFP4_MOE"}
_NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S")
_VOCAB_TENSORS = ("token_embd.weight", "output.weight")


def file_types() -> dict[str, int]:
    """Every llama.cpp file type by name (F32, F16, BF16, Q8_0, Q4_K_M, ...): its llama_ftype."""
    import llama_cpp

    out = {}
    for attr in dir(llama_cpp):
        for prefix in _FTYPE_PREFIXES:
            name = attr.removeprefix(prefix)
            if attr.startswith(prefix) and name not in _NOT_FILE_TYPES:
                out[name] = int(getattr(llama_cpp, attr))
    return out


def file_type(name: str) -> int:
    """The llama_ftype for a name (case-insensitive), or an error listing the known ones."""
    types = file_types()
    key = name.strip().upper()
    if key not in types:
        raise InputError(
            f"{name!r} is not a llama.cpp file type; known: {', '.join(sorted(types))}"
        )
    return types[key]


def ggml_type(name: str) -> int:
    """A ggml tensor type by name (Q8_0, F16, ...) for the output / embedding overrides."""
    import llama_cpp

    value = getattr(llama_cpp, f"GGML_TYPE_{name.strip().upper()}", None)
    if value is None:
        raise InputError(f"{name!r} is not a ggml tensor type")
    return int(value)


def block_size(type_name: str) -> int:
    """Row multiple a file type needs: 256 for K-quants and most i-quants, 32 for the legacy
    quants and IQ4_NL, 1 for float types."""
    name = type_name.upper()
    if name in ("F32", "F16", "BF16"):
        return 1
    if "_K" in name or (name.startswith("IQ") and name != "IQ4_NL") or name.startswith("TQ"):
        return 256
    return 32


def quantize(
    src: Path,
    dst: Path,
    type_name: str,
    *,
    vocab_type: str | None = "Q8_0",
    threads: int | None = None,
) -> dict:
    """Quantize src (an F16/F32 GGUF) into dst as type_name.

    vocab_type: the type of the output matrix and token embedding (None: llama.cpp's choice
    for the file type). Returns what was written: tensor types, tensors that fell back to
    another type, size and seconds.
    """
    import llama_cpp

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"{src}: no such GGUF file")
    ftype = file_type(type_name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or default_threads(src)
    if vocab_type is not None and block_size(type_name) > 1:
        params.output_tensor_type = ggml_type(vocab_type)
        params.token_embedding_type = ggml_type(vocab_type)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(dst)
    start = time.perf_counter()
    try:
        with _quiet_llama_log():
            code = llama_cpp.llama_model_quantize(
                str(src).encode(), str(tmp).encode(), ctypes.byref(params)
            )
        if code != 0 or not tmp.is_file():
            hint = (
                f" ({type_name} needs an importance matrix)"
                if type_name.upper() in _NEEDS_IMATRIX
                else ""
            )
            raise InputError(f"llama.cpp could not quantize {src.name} to {type_name}{hint}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return {
        "type": type_name.upper(),
        "path": str(dst),
        "bytes": dst.stat().st_size,
        "seconds": round(seconds, 3),
        **tensor_report(dst, type_name),
    }


@contextmanager
def _quiet_llama_log() -> Iterator[None]:
    """llama.cpp's log switched off while it quantizes. llama-cpp-python reads ggml's newer log
    levels with the older table (WARN as ERROR), so every tensor that falls back to another type
    printed a warning line: 180 for SmolLM2-135M. tensor_report lists those tensors instead, and
    a failure is the return code's InputError."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def tensor_report(path: Path, type_name: str) -> dict:
    """Tensor type counts, and the matrices whose rows do not fit the type's blocks (llama.cpp
    gave those another type)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    qk = block_size(type_name)
    fallback = [
        t.name
        for t in reader.tensors
        if len(t.shape) >= 2 and t.name not in _VOCAB_TENSORS and int(t.shape[0]) % qk
    ]
    vocab = {t.name: t.tensor_type.name for t in reader.tensors if t.name in _VOCAB_TENSORS}
    return {
        "tensor_types": dict(sorted(counts.items())),
        "vocab_tensors": vocab,
        "fallback_tensors": fallback,
    }
