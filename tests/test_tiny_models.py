"""Every tiny random architecture loads with mlx-lm and runs a forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import ARCHITECTURES, make_tiny_model

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_and_runs(models: dict[str, Path], arch: str) -> None:
    model, tokenizer = mlx_lm.load(str(models[arch]))
    config = json.loads((models[arch] / "config.json").read_text())
    ids = tokenizer.encode("The cat sees a map.")
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), config["vocab_size"])
    assert bool(mx.isfinite(logits).all())
    assert config["vocab_size"] == len(tokenizer.get_vocab())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hugging_face_layout(models: dict[str, Path], arch: str) -> None:
    folder = models[arch]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    tokens = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in tokens}
    assert config["bos_token_id"] == ids["<|bos|>"]
    assert config["eos_token_id"] == ids["<|end|>"]
    assert config["pad_token_id"] == ids["<|pad|>"]


def test_tied_and_untied_embeddings(models: dict[str, Path]) -> None:
    for arch in ARCHITECTURES:
        config = json.loads((models[arch] / "config.json").read_text())
        has_head = "lm_head.weight" in _names(models[arch])
        assert has_head == (not config["tie_word_embeddings"]), arch
    untied = {a for a in ARCHITECTURES if "lm_head.weight" in _names(models[a])}
    assert untied == {"mistral", "phi3"}


def _names(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="numpy") as f:
        return set(f.keys())


def test_architecture_features_present(models: dict[str, Path]) -> None:
    """The parts a GGUF converter must map are really in the weights."""
    assert "model.layers.0.self_attn.q_proj.bias" in _names(models["qwen2"])
    assert "model.layers.0.self_attn.q_norm.weight" in _names(models["qwen3"])
    assert "model.layers.0.self_attn.qkv_proj.weight" in _names(models["phi3"])
    assert "model.layers.0.mlp.gate_up_proj.weight" in _names(models["phi3"])
    assert "model.layers.0.pre_feedforward_layernorm.weight" in _names(models["gemma3"])


def test_generates(models: dict[str, Path]) -> None:
    model, tokenizer = mlx_lm.load(str(models["llama"]))
    text = mlx_lm.generate(model, tokenizer, "The cat", max_tokens=4)
    assert isinstance(text, str)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = make_tiny_model("qwen3", tmp_path / "a", seed=3)
    b = make_tiny_model("qwen3", tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_refuses_unknown_architecture_and_full_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        make_tiny_model("gpt9", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        make_tiny_model("llama", tmp_path / "full")
