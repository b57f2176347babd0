"""Fuse a LoRA or DoRA adapter into a full-precision copy of its base, with mlx-lm's own fuse.

mlx-lm's LoRALinear / DoRALinear .fuse() adds the low-rank update in the base weight's dtype;
localguard first widens each adapted layer's weight to float32 (dequantizing a quantized base),
so the update is not rounded to bf16 before the GGUF writer rounds the sum once. Layers without
an adapter are dequantized as mlx-lm does (mlx_lm.utils.dequantize_model). The fused folder is
a Hugging Face folder the GGUF converter reads: weights, the base's original config.json
without its quantization keys, and the base's original tokenizer files, copied byte for byte
(re-saving a tokenizer with transformers 5 rewrites them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from localguard.backends.mlx.loading import is_quantized, load_network, load_tokenizer
from localguard.errors import InputError

__all__ = ["fuse_adapters", "fuse_to_folder", "is_quantized", "load", "save_fused"]

_QUANTIZATION_KEYS = ("quantization", "quantization_config")


def load(model_dir: Path, adapter_dir: Path | None = None):
    """(model, tokenizer, config) through localguard's loading, with the adapter applied (not
    fused)."""
    model, config = load_network(model_dir, adapter_dir)
    return model, load_tokenizer(model_dir, config.get("eos_token_id")), config


def _dequantized(layer: nn.Module) -> nn.Module:
    """A float32 nn.Linear with the same values as layer (quantized or not)."""
    if isinstance(layer, nn.QuantizedLinear):
        weight = mx.dequantize(
            layer.weight,
            layer.scales,
            layer.biases,
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
    elif isinstance(layer, nn.Linear):
        weight = layer.weight
    else:
        raise InputError(f"cannot fuse an adapter on a {type(layer).__name__} layer")
    out_dims, in_dims = weight.shape
    linear = nn.Linear(in_dims, out_dims, bias="bias" in layer)
    linear.weight = weight.astype(mx.float32)
    if "bias" in layer:
        linear.bias = layer.bias
    return linear


def fuse_adapters(model: nn.Module) -> list[str]:
    """Fuse every adapted layer in place (full precision); returns their names. Then every
    remaining quantized layer is dequantized, so the model holds no quantized weights."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

    adapted = [(name, m) for name, m in model.named_modules() if hasattr(m, "fuse")]
    fused = []
    for name, module in adapted:
        if "linear" in module:  # LoRALinear / DoRALinear: widen the base weight first
            # item assignment keeps DoRA's trained magnitude (set_linear would recompute it)
            module["linear"] = _dequantized(module["linear"])
        fused.append((name, module.fuse(dequantize=True)))
    if fused:
        model.update_modules(tree_unflatten(fused))
    dequantize_model(model)
    mx.eval(model.parameters())
    return [name for name, _ in fused]


def _tokenizer_files(base: Path) -> list[Path]:
    """Everything in the base folder except weights and config.json: tokenizer files, chat
    template, generation config."""
    skip = {"config.json", "model.safetensors.index.json", "adapters.safetensors"}
    return [
        p
        for p in sorted(base.iterdir())
        if p.is_file() and p.name not in skip and p.suffix not in (".safetensors", ".gguf", ".bin")
    ]


def save_fused(model: nn.Module, base: Path, out: Path) -> Path:
    """Write the (fused, dequantized) model as a Hugging Face folder next to the base's
    original tokenizer files and config (quantization keys dropped)."""
    from mlx_lm.utils import save_model

    base, out = Path(base), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, donate_model=False)
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{base / 'config.json'} is not readable JSON ({exc})") from None
    for key in _QUANTIZATION_KEYS:
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for path in _tokenizer_files(base):
        shutil.copy2(path, out / path.name)
    return out


def fuse_to_folder(base: Path, adapter: Path, out: Path) -> Path:
    """base with adapter merged into its weights, as a model folder later stages load like any
    base model (an aligned model that is fine-tuned further). Written under a temporary name
    and then renamed, so a killed run never leaves a half-written model."""
    model, _, _ = load(Path(base), Path(adapter))
    fuse_adapters(model)
    out = Path(out)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    save_fused(model, base, work)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out
