"""An mlx-lm LoRA adapter as a GGUF LoRA that llama.cpp applies on top of a base GGUF.

mlx-lm computes y = W x + scale * lora_b^T lora_a^T x with lora_a (in, r) and lora_b (r, out).
llama.cpp computes y = W x + (alpha / r) * B A x from tensors NAME.lora_a (r, in) and
NAME.lora_b (out, r), NAME being the base tensor's GGUF name. So A = lora_a^T, B = lora_b^T and
alpha = scale * r; the rows of B get the same reordering as the base's q and k rows (llama's
rope layout, see convert.py).

The safety head rides along as an output-row delta: a base GGUF the user already has cannot
grow rows, so the head takes over K unused token rows of its output matrix (padding or
reserved tokens): delta = E D with E one-hot on those rows and D = head rows - base rows, a
rank-K LoRA on output.weight. A tied base has no output matrix of its own (a delta on the
token embedding would change the input too): that is refused. DoRA cannot be written as a
llama.cpp LoRA and is refused as well.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from localguard.backends.llamacpp.convert import (
    add_metadata,
    architecture,
    load_tensor,
    read_config,
    read_safetensors_header,
)
from localguard.backends.llamacpp.gguf_runtime import open_gguf
from localguard.errors import InputError
from localguard.files import temporary_name

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b)$")


@dataclass(frozen=True)
class HeadDelta:
    """The head as a change of K existing output rows: row token_ids[k] becomes weight[k]."""

    names: list[str]
    token_ids: list[int]
    weight: np.ndarray  # (K, hidden): the head's rows, as stored (scaled)
    base_rows: np.ndarray  # (K, hidden): what the base GGUF holds at those rows now
    n_rows: int  # rows of the base's output matrix


def read_adapter(adapter_dir: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(adapter_config, {module path: (lora_a, lora_b)}) of an mlx-lm LoRA adapter folder."""
    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{adapter_dir} has no {ADAPTER_CONFIG} (not an mlx-lm adapter)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{adapter_dir / ADAPTER_CONFIG} is not readable JSON ({exc})") from None
    kind = config.get("fine_tune_type", "lora")
    if kind == "dora":
        raise InputError(
            f"{adapter_dir} is a DoRA adapter; llama.cpp LoRA files cannot express DoRA's "
            "magnitude vector: export a fused GGUF instead (without --lora-only)"
        )
    if kind != "lora":
        raise InputError(f"{adapter_dir}: fine_tune_type {kind!r} is not a LoRA adapter")
    refs = read_safetensors_header(adapter_dir / ADAPTER_FILE)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, ref in refs.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise InputError(f"{adapter_dir / ADAPTER_FILE}: tensor {key} is not a LoRA matrix")
        pairs.setdefault(match["module"], {})[match["part"]] = load_tensor(ref)
    out = {}
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"lora_a", "lora_b"}:
            raise InputError(f"{adapter_dir / ADAPTER_FILE}: {module} lacks lora_a or lora_b")
        a, b = parts["lora_a"], parts["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise InputError(f"{adapter_dir / ADAPTER_FILE}: {module} has mismatched shapes")
        out[module] = (a, b)
    if not out:
        raise InputError(f"{adapter_dir / ADAPTER_FILE} holds no LoRA matrices")
    return config, out


# --- the base GGUF -------------------------------------------------------------------------------


def base_info(path: Path) -> dict:
    """Architecture, vocabulary size, token types and output matrix shape of a base GGUF."""
    path = Path(path)
    reader = open_gguf(path)
    fields = reader.fields
    types = fields.get("tokenizer.ggml.token_type")
    tensors = {t.name: t for t in reader.tensors}
    output = tensors.get("output.weight")
    return {
        "architecture": fields["general.architecture"].contents()
        if "general.architecture" in fields
        else None,
        "token_types": list(types.contents()) if types is not None else [],
        "output_shape": tuple(int(d) for d in output.shape[::-1]) if output is not None else None,
        "has_output": output is not None,
    }


def output_rows(path: Path, ids: list[int]) -> np.ndarray:
    """Rows ids of a GGUF's output matrix, dequantized to float32: (len(ids), hidden)."""
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    tensor = next((t for t in reader.tensors if t.name == "output.weight"), None)
    if tensor is None:
        raise InputError(f"{path} has no output.weight (its output is tied to the embedding)")
    data = tensor.data  # (rows, bytes per row) for quantized types, (rows, hidden) for floats
    rows = np.asarray(data[ids])
    return dequantize(rows, tensor.tensor_type).astype(np.float32).reshape(len(ids), -1)


def unused_token_ids(token_types: list[int], count: int) -> list[int]:
    """The last `count` ids whose token type is UNUSED (padding, reserved tokens)."""
    unused = [i for i, t in enumerate(token_types) if t == gguf.TokenType.UNUSED]
    if len(unused) < count:
        raise InputError(
            f"the base vocabulary has {len(unused)} unused token rows; the head needs {count} "
            "to carry its outputs in a LoRA: export a full GGUF instead (without --lora-only)"
        )
    return unused[-count:]


# --- writing ----------------------------------------------------------------------------------


def write_lora_gguf(
    model_dir: Path,
    adapter_dir: Path,
    out_path: Path,
    *,
    head: HeadDelta | None = None,
    metadata: dict | None = None,
    outtype: str = "f16",
) -> dict:
    """Write the adapter (and the head's output-row delta) as a llama.cpp LoRA GGUF."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    arch = architecture(config)
    adapter_config, pairs = read_adapter(adapter_dir)
    params = adapter_config.get("lora_parameters") or {}
    scale = float(params.get("scale", 20.0))
    names = gguf.get_tensor_name_map(arch.gguf_arch, int(config["num_hidden_layers"]))
    dtype = np.float16 if outtype == "f16" else np.float32
    tensors: list[tuple[str, np.ndarray]] = []
    rank = 0
    for module, (a, b) in pairs.items():
        hf_name = f"{module}.weight"
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise InputError(f"adapter layer {module} has no llama.cpp equivalent")
        if name == "token_embd.weight":
            raise InputError("a LoRA on the token embedding is not supported by --lora-only")
        if name == "output.weight" and head is not None:
            raise InputError("the adapter changes the output layer, where the head's delta goes")
        rank = max(rank, a.shape[1])
        lora_a = np.ascontiguousarray(a.T)  # (r, in)
        lora_b = np.ascontiguousarray(arch.fix_tensor(hf_name, b.T, config))  # (out, r)
        tensors += [
            (f"{name}.lora_a", lora_a.astype(dtype)),
            (f"{name}.lora_b", lora_b.astype(dtype)),
        ]
    alpha = scale * rank
    if head is not None:
        tensors += _head_tensors(head, alpha)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(f"{Path(adapter_dir).resolve().name} (LoRA)")
    add_metadata(writer, dict(metadata or {}))
    for name, data in tensors:
        writer.add_tensor(name, data)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out_path)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except OSError as exc:
        raise InputError(f"cannot write {out_path} ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out_path),
        "architecture": gguf.MODEL_ARCH_NAMES[arch.gguf_arch],
        "alpha": alpha,
        "rank": rank,
        "scale": scale,
        "layers": len(pairs),
        "head_token_ids": dict(zip(head.names, head.token_ids, strict=True)) if head else {},
    }


def _head_tensors(head: HeadDelta, alpha: float) -> list[tuple[str, np.ndarray]]:
    """output.weight.lora_a = D (K, hidden) and lora_b = E (n_rows, K), E one-hot scaled by
    K / alpha, which undoes llama.cpp's alpha / rank factor for this rank-K pair exactly."""
    k = len(head.token_ids)
    delta = (np.asarray(head.weight, np.float64) - head.base_rows).astype(np.float32)
    one_hot = np.zeros((head.n_rows, k), np.float32)
    one_hot[head.token_ids, np.arange(k)] = k / alpha if alpha else 1.0
    return [("output.weight.lora_a", delta), ("output.weight.lora_b", one_hot)]
