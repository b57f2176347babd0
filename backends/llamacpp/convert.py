"""localguard's own Hugging Face folder -> GGUF converter (numpy and gguf-py; no torch).

mlx_lm.fuse --export-gguf writes files that current llama.cpp rejects, and llama.cpp's own
converter needs torch, so localguard converts a curated set of architectures itself, each proven
by a parity test against mlx-lm on a tiny random model (tests/test_convert.py):

    llama (also Mistral, SmolLM; Llama 3.x rope scaling as a rope_freqs tensor), qwen2 (qkv bias),
    qwen3 (q/k norm), gemma3 text (norm weights + 1, fixed sliding-window pattern), phi3 (fused
    qkv and gate_up).

Safety-head rows ride along as extra rows of the output matrix (of the shared token embedding
when tied), each with its own control token, so llama.cpp computes the head's logits at every
step for free. llama.cpp has no output bias: the biases travel as `localguard.head.*` metadata.

Provenance travels as llama.cpp's converter writes it: a folder that `localguard import` made
gets its source file's general.* keys (licence, name, organization, base models, languages ...)
and tokenizer switches back as they were; any other folder gets what gguf-py's Metadata (the
converter's own code) reads from its README.md front matter, config.json and folder name.

The output is written under a temporary name and renamed at the end: a failure leaves no file.
Tensors are converted one at a time while writing, so memory stays near one tensor's size.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from localguard.backends.llamacpp.gguf_keys import (
    FILE_KEYS,
    GENERAL_PREFIX,
    HEAD_BIAS,
    HEAD_CLS_TOKEN,
    HEAD_NAMES,
    HEAD_TOKEN_IDS,
    TOKENIZER_FLAGS,
)
from localguard.backends.llamacpp.gguf_vocab import (
    Vocab,
    add_control_tokens,
    load_vocab,
    pad_vocab,
    read_json,
    write_vocab,
)
from localguard.errors import InputError
from localguard.files import temporary_name

OUTTYPES = ("f16", "f32")
IMPORT_SECTION = "localguard_import"
"""The config.json key where an imported model keeps where it came from (gguf_import.py writes
it; provenance and tokenizer_flags read it)."""
HEAD_TOKEN = "<|localguard_{}|>"
GEMMA3_SWA_PATTERN = 6  # llama.cpp fixes Gemma 3 at 5 sliding-window layers + 1 global layer

Progress = Callable[[int, int, str], None]
"""progress(tensors_done, tensors_total, gguf_tensor_name), called after each tensor."""


@dataclass(frozen=True)
class ExtraRow:
    """One extra output row: logit = hidden . weight (+ bias, added by the reader). A fed row
    is a token's input embedding as well (a CLS head's token, written as HEAD_CLS_TOKEN), no
    head output; the others sit at zero in an untied model's input embedding."""

    name: str
    weight: np.ndarray  # (hidden_size,)
    bias: float = 0.0
    fed: bool = False

    @property
    def token(self) -> str:
        return HEAD_TOKEN.format(self.name)


# --- reading safetensors ------------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes lie in a safetensors file."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files: the index's shards, else model*.safetensors, else any *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{index} is not a readable safetensors index ({exc})") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(model_dir.glob("model*.safetensors")) or sorted(
            model_dir.glob("*.safetensors")
        )
    if not files:
        raise InputError(f"{model_dir} has no *.safetensors weights")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{model_dir} lacks the weight file {missing[0]} named by its index")
    return files


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and check a safetensors header; a damaged file is one clear InputError."""

    def bad(reason: str) -> InputError:
        return InputError(f"{path.name} is not a valid safetensors file: {reason} ({path})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad("shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise bad(f"header of {n} bytes in a file of {size} bytes (truncated?)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    return _tensor_refs(path, header, 8 + n, size, bad)


def _tensor_refs(path: Path, header: dict, base: int, size: int, bad) -> dict[str, TensorRef]:
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"entry {name!r} is malformed") from None
        if dtype not in _DTYPES:
            raise bad(f"tensor {name} has dtype {dtype}; supported: {', '.join(_DTYPES)}")
        if end - begin != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize:
            raise bad(f"tensor {name} has {end - begin} bytes for shape {list(shape)}")
        if base + end > size:
            raise bad(f"tensor {name} ends past the end of the file (truncated?)")
        refs[name] = TensorRef(path, dtype, shape, base + begin, base + end)
    return refs


def index_tensors(model_dir: Path) -> dict[str, TensorRef]:
    refs: dict[str, TensorRef] = {}
    for path in safetensors_files(model_dir):
        refs.update(read_safetensors_header(path))
    return refs


def load_tensor(ref: TensorRef) -> np.ndarray:
    """The tensor as float32 (bf16 widened exactly)."""
    try:
        with open(ref.path, "rb") as fh:
            fh.seek(ref.start)
            raw = fh.read(ref.end - ref.start)
    except OSError as exc:
        raise InputError(f"cannot read {ref.path} ({exc})") from None
    if len(raw) != ref.end - ref.start:
        raise InputError(f"{ref.path.name} is truncated ({ref.path})")
    data = np.frombuffer(raw, dtype=_DTYPES[ref.dtype]).reshape(ref.shape)
    if ref.dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32)


# --- architectures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """How one Hugging Face model_type becomes one llama.cpp architecture."""

    gguf_arch: gguf.MODEL_ARCH
    hparams: Callable[[gguf.GGUFWriter, dict], None]
    fix_tensor: Callable[[str, np.ndarray, dict], np.ndarray]
    rope_types: tuple[str, ...]


def _keep(name: str, data: np.ndarray, config: dict) -> np.ndarray:
    return data


def _llama_fix(name: str, data: np.ndarray, config: dict) -> np.ndarray:
    """llama.cpp's llama rotates interleaved pairs; HF rotates halves: reorder q and k rows."""
    if ".self_attn.q_proj." in name:
        return permute_rows_for_rope(data, config["num_attention_heads"])
    if ".self_attn.k_proj." in name:
        return permute_rows_for_rope(data, _kv_heads(config))
    return data


def permute_rows_for_rope(data: np.ndarray, n_heads: int) -> np.ndarray:
    """Per head, rows [x0.., y0..] (rotate-half layout) -> [x0, y0, x1, y1, ..] (interleaved)."""
    shape = data.shape
    return (
        data.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def _gemma3_fix(name: str, data: np.ndarray, config: dict) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + weight); llama.cpp multiplies by the weight."""
    return data + 1.0 if name.endswith("norm.weight") else data


def _kv_heads(config: dict) -> int:
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope_settings(config: dict, layer_kind: str = "full_attention") -> tuple[float, dict | None]:
    """(rope theta, scaling dict or None), from transformers 4 keys or 5's rope_parameters."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        params = params.get(layer_kind, params)
        theta, scaling = params.get("rope_theta"), params
    elif layer_kind == "sliding_attention":  # Gemma 3: local layers have their own base, no scaling
        theta, scaling = config.get("rope_local_base_freq", 10000.0), None
    else:
        theta, scaling = config.get("rope_theta"), config.get("rope_scaling")
    if scaling and _rope_type(scaling) == "default":
        scaling = None
    return float(theta if theta is not None else 10000.0), scaling


def _rope_dims(config: dict) -> int:
    params = config.get("rope_parameters") or {}
    factor = config.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0
    return int(_head_dim(config) * float(factor))


def _original_context(config: dict, scaling: dict) -> int:
    """Phi-3's pre-extension context (top level in transformers 4, in the rope dict in 5)."""
    value = config.get("original_max_position_embeddings")
    value = value or scaling.get("original_max_position_embeddings")
    if not value:
        raise InputError("Phi-3 longrope needs original_max_position_embeddings")
    return int(value)


def _rope_type(scaling: dict) -> str:
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


@dataclass(frozen=True)
class HParam:
    """One GGUF hyperparameter and the config.json value behind it. The exporter writes
    value(config) under key (None: the key is left out, llama.cpp's default applies); the
    importer (gguf_import.py) reads the key back into config_key (None: derived there from other
    keys)."""

    key: str  # a gguf.Keys template with {arch}
    config_key: str | None
    kind: type  # int (UINT32) or float (FLOAT32)
    value: Callable[[dict], int | float | None]


COMMON_HPARAMS: tuple[HParam, ...] = (
    HParam(
        gguf.Keys.LLM.CONTEXT_LENGTH,
        "max_position_embeddings",
        int,
        lambda c: c["max_position_embeddings"],
    ),
    HParam(gguf.Keys.LLM.EMBEDDING_LENGTH, "hidden_size", int, lambda c: c["hidden_size"]),
    HParam(gguf.Keys.LLM.BLOCK_COUNT, "num_hidden_layers", int, lambda c: c["num_hidden_layers"]),
    HParam(
        gguf.Keys.LLM.FEED_FORWARD_LENGTH,
        "intermediate_size",
        int,
        lambda c: c["intermediate_size"],
    ),
    HParam(
        gguf.Keys.Attention.HEAD_COUNT,
        "num_attention_heads",
        int,
        lambda c: c["num_attention_heads"],
    ),
    HParam(gguf.Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads", int, lambda c: _kv_heads(c)),
    HParam(
        gguf.Keys.Attention.LAYERNORM_RMS_EPS,
        "rms_norm_eps",
        float,
        lambda c: c.get("rms_norm_eps", 1e-6),
    ),
    # written for an explicit head_dim only, as llama.cpp's converter does (default: hidden/heads)
    HParam(gguf.Keys.Attention.KEY_LENGTH, "head_dim", int, lambda c: c.get("head_dim")),
    HParam(gguf.Keys.Attention.VALUE_LENGTH, None, int, lambda c: c.get("head_dim")),
    HParam(gguf.Keys.Rope.DIMENSION_COUNT, None, int, lambda c: _rope_dims(c)),
    HParam(gguf.Keys.Rope.FREQ_BASE, "rope_theta", float, lambda c: rope_settings(c)[0]),
)
"""The keys every supported architecture reads, in the order they are written."""


def _common_hparams(w: gguf.GGUFWriter, config: dict) -> None:
    """The keys every supported architecture reads (COMMON_HPARAMS), then linear rope scaling."""
    for param in COMMON_HPARAMS:
        value = param.value(config)
        if value is None:
            continue
        add = w.add_uint32 if param.kind is int else w.add_float32
        add(param.key.format(arch=w.arch), param.kind(value))
    _, scaling = rope_settings(config)
    if scaling and _rope_type(scaling) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))


def _gemma3_hparams(w: gguf.GGUFWriter, config: dict) -> None:
    check_gemma3(config)
    _common_hparams(w, config)
    w.add_rope_freq_base_swa(rope_settings(config, "sliding_attention")[0])
    w.add_sliding_window(int(config["sliding_window"]))
    if config.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))


def check_gemma3(config: dict) -> None:
    """Refuse what llama.cpp's gemma3 fixes differently: layer pattern, attention scale."""
    n = int(config["num_hidden_layers"])
    wanted = [
        "full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
        for i in range(n)
    ]
    layer_types = config.get("layer_types")
    pattern = config.get("sliding_window_pattern", GEMMA3_SWA_PATTERN)
    if (layer_types is not None and list(layer_types) != wanted) or (
        layer_types is None and pattern != GEMMA3_SWA_PATTERN
    ):
        raise InputError(
            "llama.cpp runs Gemma 3 with a fixed pattern of 5 sliding-window layers and 1 global "
            "layer; this config's layer pattern differs"
        )
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    # llama.cpp scales attention by n_embd / n_head for the 62-layer 27B, by head_dim otherwise
    expected = hidden // heads if n == 62 else _head_dim(config)
    if int(config.get("query_pre_attn_scalar", expected)) != expected:
        raise InputError(
            f"query_pre_attn_scalar {config['query_pre_attn_scalar']} differs from the "
            f"attention scale llama.cpp uses for this Gemma 3 ({expected})"
        )
    if config.get("attn_logit_softcapping"):
        raise InputError("Gemma 3 with attention logit soft-capping is not supported")


def _phi3_hparams(w: gguf.GGUFWriter, config: dict) -> None:
    config = _phi3_config(config)
    _common_hparams(w, config)
    _, scaling = rope_settings(config)
    original = config.get("original_max_position_embeddings")
    if scaling or original:
        w.add_rope_scaling_orig_ctx_len(_original_context(config, scaling or {}))
    if config.get("sliding_window"):
        w.add_sliding_window(int(config["sliding_window"]))
    if phi3_rope_factors(config) is not None:
        w.add_rope_scaling_attn_factors(phi3_attn_factor(config))


def _phi3_config(config: dict) -> dict:
    """Phi-3's head size is always hidden / heads (mlx-lm and llama.cpp ignore head_dim)."""
    return {**config, "head_dim": None}


def phi3_rope_factors(config: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Phi-3.5 "longrope" scaling as llama.cpp's (long, short) rope factor tensors.

    llama.cpp picks the long factors when the context is longer than the original one,
    mlx-lm always uses them; both multiply q and k by phi3_attn_factor.
    """
    _, scaling = rope_settings(config)
    if not scaling or _rope_type(scaling) not in ("longrope", "su"):
        return None
    if scaling.get("long_mscale") or scaling.get("short_mscale"):
        raise InputError("Phi-3 longrope with explicit mscale values is not supported")
    n = _rope_dims(_phi3_config(config)) // 2
    long, short = (np.asarray(scaling[k], np.float32) for k in ("long_factor", "short_factor"))
    if long.shape != (n,) or short.shape != (n,):
        raise InputError(f"Phi-3 longrope needs {n} long and short factors")
    return long, short


def phi3_attn_factor(config: dict) -> float:
    """sqrt(1 + log(s) / log(original context)) for an extension by s, as HF and mlx-lm scale."""
    original = _original_context(config, rope_settings(config)[1] or {})
    scale = config["max_position_embeddings"] / original
    return math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0


ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch(gguf.MODEL_ARCH.LLAMA, _common_hparams, _llama_fix, ("linear", "llama3")),
    "mistral": Arch(gguf.MODEL_ARCH.LLAMA, _common_hparams, _llama_fix, ("linear", "llama3")),
    "qwen2": Arch(gguf.MODEL_ARCH.QWEN2, _common_hparams, _keep, ("linear",)),
    "qwen3": Arch(gguf.MODEL_ARCH.QWEN3, _common_hparams, _keep, ("linear",)),
    "gemma3_text": Arch(gguf.MODEL_ARCH.GEMMA3, _gemma3_hparams, _gemma3_fix, ("linear",)),
    "phi3": Arch(gguf.MODEL_ARCH.PHI3, _phi3_hparams, _keep, ("longrope", "su")),
}
"""Supported Hugging Face model_type values (config.json) and their llama.cpp mapping."""


def architecture(config: dict) -> Arch:
    """The Arch for a config, or an error that lists what is supported."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise InputError(
            f"model_type {model_type!r} is not supported by localguard's GGUF converter "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    arch = ARCHITECTURES[model_type]
    _, scaling = rope_settings(config)
    if scaling and _rope_type(scaling) not in arch.rope_types:
        raise InputError(
            f"{model_type} with rope scaling {_rope_type(scaling)!r} is not supported "
            f"(supported: none{''.join(', ' + t for t in arch.rope_types)})"
        )
    return arch


def llama3_rope_factors(config: dict) -> np.ndarray | None:
    """Llama 3.x rope scaling as llama.cpp's rope_freqs tensor: one divisor per frequency."""
    theta, scaling = rope_settings(config)
    if not scaling or _rope_type(scaling) != "llama3":
        return None
    dim = _head_dim(config)
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    divisor = np.where(wavelen < old_context / high, 1.0, divisor)
    divisor = np.where(wavelen > old_context / low, factor, divisor)
    return divisor.astype(np.float32)


# --- tensor plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its name, final shape and dtype, and how to compute its data."""

    name: str
    shape: tuple[int, ...]
    dtype: type
    make: Callable[[], np.ndarray]


_SKIPPED = re.compile(r"rotary_emb\.inv_freq$")  # recomputed by llama.cpp


def plan_tensors(
    arch: Arch,
    config: dict,
    refs: dict[str, TensorRef],
    n_rows: int,
    extra_rows: list[ExtraRow],
    outtype: str,
) -> list[PlannedTensor]:
    """Every GGUF tensor in order, with the vocabulary rows padded to n_rows and extra rows."""
    names = gguf.get_tensor_name_map(arch.gguf_arch, int(config["num_hidden_layers"]))
    tied = "lm_head.weight" not in refs or bool(config.get("tie_word_embeddings"))
    plan = []
    for hf_name, ref in refs.items():
        if _SKIPPED.search(hf_name) or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise InputError(f"tensor {hf_name} ({ref.path.name}) has no llama.cpp equivalent")
        if hf_name in ("lm_head.weight", "model.embed_tokens.weight"):
            logits = hf_name == "lm_head.weight" or tied
            rows = [r.weight if logits or r.fed else None for r in extra_rows]
            plan.append(_vocab_matrix(name, ref, n_rows, rows, outtype))
        else:
            plan.append(_plain(name, hf_name, ref, arch, config, outtype))
    return plan + rope_tensors(config)


def rope_tensors(config: dict) -> list[PlannedTensor]:
    """The F32 rope tensors llama.cpp takes for Llama 3.x and Phi-3.5 rope scaling."""
    arrays = {}
    factors = llama3_rope_factors(config)
    if factors is not None:
        arrays[gguf.MODEL_TENSOR.ROPE_FREQS] = factors
    if config.get("model_type") == "phi3" and (pair := phi3_rope_factors(config)) is not None:
        arrays[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] = pair[0]
        arrays[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] = pair[1]
    return [
        PlannedTensor(gguf.TENSOR_NAMES[kind] + ".weight", data.shape, np.float32, lambda d=data: d)
        for kind, data in arrays.items()
    ]


def _out_dtype(ndim: int, outtype: str) -> type:
    """Matrices in the requested type; norms, biases and 1-d tensors stay F32 (as llama.cpp's)."""
    return np.float16 if outtype == "f16" and ndim >= 2 else np.float32


def _plain(
    name: str, hf_name: str, ref: TensorRef, arch: Arch, config: dict, outtype: str
) -> PlannedTensor:
    dtype = _out_dtype(len(ref.shape), outtype)

    def make() -> np.ndarray:
        return arch.fix_tensor(hf_name, load_tensor(ref), config).astype(dtype)

    return PlannedTensor(name, ref.shape, dtype, make)


def _vocab_matrix(
    name: str,
    ref: TensorRef,
    n_rows: int,
    extra_rows: list[np.ndarray | None],
    outtype: str,
) -> PlannedTensor:
    """Embedding or output matrix: pad to n_rows, then one row per extra row (None: zeros)."""
    rows, hidden = ref.shape
    dtype = _out_dtype(2, outtype)
    if rows > n_rows:
        raise InputError(f"{name} has {rows} rows but the embedding has {n_rows}")

    def make() -> np.ndarray:
        data = load_tensor(ref)
        pad = np.zeros((n_rows - rows, hidden), np.float32)
        extra = np.zeros((len(extra_rows), hidden), np.float32)
        for i, row in enumerate(extra_rows):
            if row is not None:
                extra[i] = row
        return np.concatenate([data, pad, extra]).astype(dtype)

    return PlannedTensor(name, (n_rows + len(extra_rows), hidden), dtype, make)


# --- checks -------------------------------------------------------------------------------


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise InputError(f"{model_dir} has no config.json (expected a Hugging Face model folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None
    if config.get("quantization") or config.get("quantization_config"):
        raise InputError(f"{model_dir} holds quantized weights; convert a full-precision model")
    required = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
    missing = [k for k in required if k not in config]
    if missing and config.get("model_type") in ARCHITECTURES:
        raise InputError(f"{path} lacks {', '.join(missing)}")
    config.setdefault("max_position_embeddings", 2048)
    return config


def check_extra_rows(extra_rows: list[ExtraRow], hidden: int, config: dict) -> None:
    """Names usable in a token, unique, weights of the hidden size and finite."""
    seen = set()
    for row in extra_rows:
        if not re.fullmatch(r"[a-z0-9_]+", row.name) or row.name in seen:
            raise InputError(f"extra row name {row.name!r} must be unique [a-z0-9_]+")
        seen.add(row.name)
        weight = np.asarray(row.weight)
        if weight.shape != (hidden,) or not np.all(np.isfinite(weight)):
            raise InputError(f"extra row {row.name!r} needs {hidden} finite weights")
        if not math.isfinite(row.bias):
            raise InputError(f"extra row {row.name!r} has a non-finite bias")
    if sum(row.fed for row in extra_rows) > 1:
        raise InputError("at most one extra row can be a fed token (a CLS head's)")
    if extra_rows and config.get("final_logit_softcapping"):
        raise InputError("final logit soft-capping would bend the extra rows' logits")


def _vocab_rows(refs: dict[str, TensorRef], vocab: Vocab, model_dir: Path) -> int:
    """Embedding rows; the tokenizer may name fewer ids (then padded), never more."""
    ref = refs.get("model.embed_tokens.weight")
    if ref is None:
        raise InputError(f"{model_dir} weights have no model.embed_tokens.weight")
    rows = ref.shape[0]
    if len(vocab) > rows:
        raise InputError(
            f"{model_dir}: the tokenizer has {len(vocab)} tokens but the embedding {rows} rows"
        )
    return rows


# --- writing ------------------------------------------------------------------------------


_PHI3_NAME = re.compile(r"phi-?3", re.IGNORECASE)
_PHI3_TOKENS = ("<unk>", "<s>", "</s>", "<|endoftext|>")


def _safe_name(name: str, vocab: Vocab) -> bool:
    """False for a general.name that would crash llama.cpp: with "phi3"/"phi-3" in it,
    llama.cpp looks up Phi-3's own special tokens by text."""
    return not _PHI3_NAME.search(name) or set(_PHI3_TOKENS) <= set(vocab.tokens)


def provenance(
    config: dict, card_dir: Path, vocab: Vocab, n_params: int
) -> dict[str, gguf.GGUFValue]:
    """The general.* keys to write (without gguf_keys.FILE_KEYS): an import's recorded ones,
    else what llama.cpp's converter writes for card_dir; a name llama.cpp trips on is left out."""
    record = config.get(IMPORT_SECTION)
    if isinstance(record, dict) and isinstance(record.get("general"), dict):
        out = _recorded_general(record, card_dir / "config.json")
    else:
        out = _card_general(card_dir, n_params)
    name = out.get(gguf.Keys.General.NAME)
    if name is not None and not _safe_name(str(name.value), vocab):
        del out[gguf.Keys.General.NAME]
    return out


def _recorded_general(record: dict, where: Path) -> dict[str, gguf.GGUFValue]:
    """The source's general.* keys as the import recorded them, with their GGUF types (an import
    made before the types were recorded: typed as add_metadata types values)."""
    types = record.get("general_types") or {}
    out = {}
    for key, value in record["general"].items():
        if not key.startswith(GENERAL_PREFIX) or key in FILE_KEYS:
            continue
        try:
            names = types.get(key)
            if names:
                kind = gguf.GGUFValueType[names[0]]
                sub = gguf.GGUFValueType[names[1]] if kind == gguf.GGUFValueType.ARRAY else None
            else:
                kind, sub = _value_type(key, value)
        except (KeyError, TypeError, IndexError, InputError):
            raise InputError(f"{where}: {IMPORT_SECTION} has an unreadable {key}") from None
        out[key] = gguf.GGUFValue(value, kind, sub)
    return out


def _card_general(card_dir: Path, n_params: int) -> dict[str, gguf.GGUFValue]:
    """What llama.cpp's converter writes for a Hugging Face folder, through its own code
    (gguf-py's Metadata): the README.md front matter (licence, base models, languages, tags,
    datasets ...), config.json's model id, generation_config.json's sampling settings, names
    guessed from the folder's name, the size label from the parameter count; type "model"."""
    import yaml

    try:
        meta = gguf.Metadata.load(None, card_dir, None, n_params)
    except (yaml.YAMLError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{card_dir}: the model card is not readable ({reason})") from None
    if meta.name is None:
        meta.name = card_dir.resolve().name
    if meta.size_label is None and n_params > 0:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    scratch = gguf.GGUFWriter(None, "llama")  # only its general.* keys are used
    scratch.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(scratch)
    return {k: v for k, v in scratch.kv_data[0].items() if k not in FILE_KEYS}


def tokenizer_flags(config: dict, arch: Arch, vocab: Vocab, model_dir: Path) -> dict:
    """Tokenizer switches (gguf_keys.TOKENIZER_FLAGS) to write instead of what gguf-py's
    SpecialVocab derives, key -> bool or None (left out): an import's recorded switches, each
    as its source had it; elsewhere the add_prefix_space of tokenizer_config.json, which
    llama.cpp's llama converter writes (a SentencePiece vocabulary's comes from tokenizer.json)."""
    record = config.get(IMPORT_SECTION)
    tokenizer = record.get("tokenizer") if isinstance(record, dict) else None
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("flags"), dict):
        flags = tokenizer["flags"]
        return {k: (bool(flags[k]) if k in flags else None) for k in TOKENIZER_FLAGS}
    path = model_dir / "tokenizer_config.json"
    llama = arch.gguf_arch == gguf.MODEL_ARCH.LLAMA
    if vocab.add_space_prefix is None and llama and path.is_file():
        data = read_json(path)
        value = data.get("add_prefix_space") if isinstance(data, dict) else None
        if isinstance(value, bool):
            return {gguf.Keys.Tokenizer.ADD_PREFIX: value}
    return {}


def write_metadata(
    w: gguf.GGUFWriter,
    model_dir: Path,
    arch: Arch,
    config: dict,
    vocab: Vocab,
    extra_rows: list[ExtraRow],
    first_extra_id: int,
    outtype: str,
    general: dict[str, gguf.GGUFValue],
) -> None:
    """Provenance (general), file type, hyperparameters, vocabulary and the head's rows."""
    for key, value in general.items():
        w.add_key_value(key, value.value, value.type, value.sub_type)
    w.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32
    )
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(len(vocab))
    arch.hparams(w, config)
    write_vocab(w, vocab, model_dir, tokenizer_flags(config, arch, vocab, model_dir))
    outputs = [(first_extra_id + i, r) for i, r in enumerate(extra_rows) if not r.fed]
    if outputs:
        w.add_array(HEAD_NAMES, [r.name for _, r in outputs])
        ids = [i for i, _ in outputs]
        w.add_key_value(HEAD_TOKEN_IDS, ids, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32)
        w.add_key_value(
            HEAD_BIAS,
            [float(r.bias) for _, r in outputs],
            gguf.GGUFValueType.ARRAY,
            gguf.GGUFValueType.FLOAT32,
        )
    for i, row in enumerate(extra_rows):
        if row.fed:
            w.add_uint32(HEAD_CLS_TOKEN, first_extra_id + i)


_KINDS = {
    str: gguf.GGUFValueType.STRING,
    bool: gguf.GGUFValueType.BOOL,
    int: gguf.GGUFValueType.UINT32,
    float: gguf.GGUFValueType.FLOAT32,
}


def _value_type(key: str, value) -> tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]:
    """(type, element type or None) of a metadata value: str, bool, int (>= 0: UINT32, else
    INT32), float (FLOAT32), or a non-empty list of one of those (ARRAY)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    kind = {type(v) for v in items}
    if len(kind) != 1 or next(iter(kind)) not in _KINDS or not items:
        raise InputError(f"metadata {key}: unsupported value {value!r}")
    element = _KINDS[next(iter(kind))]
    if element == gguf.GGUFValueType.UINT32 and min(items) < 0:
        element = gguf.GGUFValueType.INT32
    if isinstance(value, (list, tuple)):
        return gguf.GGUFValueType.ARRAY, element
    return element, None


def add_metadata(w: gguf.GGUFWriter, metadata: dict) -> None:
    """Extra key/value pairs (localguard.*), typed by _value_type."""
    for key, value in metadata.items():
        kind, element = _value_type(key, value)
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, list(value), kind, element)
        else:
            w.add_key_value(key, value, kind)


def write_gguf(
    path: Path,
    w: gguf.GGUFWriter,
    plan: list[PlannedTensor],
    progress: Progress | None,
) -> None:
    """Header, metadata, tensor infos, then each tensor computed just before it is written."""
    for t in plan:
        nbytes = math.prod(t.shape) * np.dtype(t.dtype).itemsize
        w.add_tensor_info(t.name, t.shape, np.dtype(t.dtype), nbytes)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for done, t in enumerate(plan, 1):
        data = np.ascontiguousarray(t.make())
        if data.shape != tuple(t.shape) or data.dtype != t.dtype:
            raise RuntimeError(f"{t.name}: made {data.shape} {data.dtype}, planned {t.shape}")
        w.write_tensor_data(data)
        if progress is not None:
            progress(done, len(plan), t.name)


def convert_to_gguf(
    model_dir: Path,
    out_path: Path,
    extra_rows: list[ExtraRow] | None = None,
    *,
    outtype: str = "f16",
    progress: Progress | None = None,
    metadata: dict | None = None,
    card_dir: Path | None = None,
) -> dict:
    """Convert a Hugging Face model folder to one GGUF file that stock llama.cpp loads.

    metadata: extra key/value pairs (see add_metadata), e.g. the head's thresholds.
    card_dir: the folder whose model card and name describe the model (default model_dir; the
    export passes the base folder when it converts a fused copy of it).
    Returns a summary: architecture, outtype, vocabulary size, tensor count, tokenizer kind,
    the token id of each extra row (by name), and the general.* keys written (provenance).
    """
    model_dir, out_path = Path(model_dir).expanduser(), Path(out_path).expanduser()
    extra_rows = list(extra_rows or [])
    if outtype not in OUTTYPES:
        raise InputError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    config = read_config(model_dir)
    arch = architecture(config)
    check_extra_rows(extra_rows, int(config["hidden_size"]), config)
    refs = index_tensors(model_dir)
    vocab = load_vocab(model_dir)
    n_rows = _vocab_rows(refs, vocab, model_dir)
    vocab = add_control_tokens(pad_vocab(vocab, n_rows), [r.token for r in extra_rows])
    plan = plan_tensors(arch, config, refs, n_rows, extra_rows, outtype)
    n_params = sum(math.prod(t.shape) for t in plan)
    card = Path(card_dir).expanduser() if card_dir is not None else model_dir
    general = provenance(config, card, vocab, n_params)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    write_metadata(writer, model_dir, arch, config, vocab, extra_rows, n_rows, outtype, general)
    add_metadata(writer, dict(metadata or {}))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out_path)
    try:
        try:
            write_gguf(tmp, writer, plan, progress)
        finally:
            writer.close()
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {out_path} ({exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(out_path),
        "architecture": gguf.MODEL_ARCH_NAMES[arch.gguf_arch],
        "model_type": config["model_type"],
        "outtype": outtype,
        "n_vocab": len(vocab),
        "n_tensors": len(plan),
        "tokenizer": vocab.model,
        "pre_tokenizer": vocab.pre,
        "extra_token_ids": {r.name: n_rows + i for i, r in enumerate(extra_rows)},
        "provenance": {k: v.value for k, v in general.items()},
    }
