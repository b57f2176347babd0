"""Shared inputs of the export tests: one tiny random model per architecture (with its family's
tokenizer), random adapters and random safety heads laid out as training saves them, and
readers of what the exported files hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

CASES: dict[str, tuple[str, str]] = {
    "llama-spm": ("llama", "sentencepiece"),
    "mistral-spm": ("mistral", "sentencepiece"),
    "qwen2": ("qwen2", "bytelevel"),
    "qwen3": ("qwen3", "bytelevel"),
    "gemma3-spm": ("gemma3", "sentencepiece"),
    "phi3-spm": ("phi3", "sentencepiece"),
}
F16_TOLERANCE = 1e-2
GEMMA3_F16_TOLERANCE = 1.5e-1  # ggml's F16 GELU table (see tests/test_convert.py)
PROMPT = (
    "The teacher builds a long letter today. A small bird counts two apples again! "
    "My friend reads the river at 7 pm."
)


def random_adapter(model_dir: Path, out: Path, *, dora: bool = False, seed: int = 0) -> Path:
    """An mlx-lm adapter folder with non-zero lora_b (a fresh adapter would be a no-op)."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten

    from localguard.backends.mlx import lora_train as lt

    model, _ = mlx_lm.load(str(model_dir))
    spec = lt.LoraSpec(rank=4, scale=2.0, num_layers=-1, dora=dora)
    n = lt.add_adapters(model, spec, seed)
    mx.random.seed(seed + 1)
    update = [
        (k, 0.05 * mx.random.normal(v.shape))
        for k, v in tree_flatten(model.trainable_parameters())
        if k.endswith("lora_b")
    ]
    model.load_weights(update, strict=False)
    out.mkdir(parents=True, exist_ok=True)
    lt.save_adapters(model, spec.adapter_config(n), out)
    return out


def random_head(model_dir: Path, out: Path, adapter: Path | None = None, seed: int = 0) -> Path:
    """A head folder for model_dir; with adapter, laid out as a stream-mode head (the adapter's
    files inside, manifest "adapter")."""
    from localguard.fingerprint import model_fingerprint
    from localguard.safety_head import SafetyHead, config_hidden_size, save_head

    hidden = config_hidden_size(model_dir)
    rng = np.random.default_rng(seed)
    weight = (rng.normal(size=(2, hidden)) * 3 / np.sqrt(hidden)).astype(np.float32)
    head = SafetyHead(
        ["query", "response"],
        weight,
        np.array([0.25, -0.5], np.float32),
        np.array([0.0, 0.3]),
        {"mode": "stream" if adapter else "probe"},
    )
    manifest = {
        "model_path": str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir),
        "adapter": "adapters.safetensors" if adapter else None,
        "base_adapter": None,
    }
    save_head(head, out, manifest)
    if adapter is not None:
        for name in ("adapters.safetensors", "adapter_config.json"):
            shutil.copy(adapter / name, out / name)
    return out


def mlx_with_head(model: Path, head: Path):
    """mlx-lm's model with the head's own adapter, its tokenizer, and the head."""
    import mlx_lm

    from localguard.safety_head import load_head

    loaded, tokenizer = mlx_lm.load(str(model), adapter_path=str(head))
    return loaded, tokenizer, load_head(head)


def stock_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits at every position from stock llama-cpp-python (its high-level Llama class, as
    open_llama loads it)."""
    import llama_cpp

    from localguard.backends.llamacpp.extra_buffers import open_llama

    llm = open_llama(
        path,
        n_ctx=128,
        n_batch=128,
        n_threads=1,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def gguf_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor of a GGUF file: its shape and type name."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}
