"""The activation risk probe: metrics, fitting, calibration, files, features and training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import ARCHITECTURES, make_tiny_model

from localguard.errors import InputError
from localguard.fingerprint import model_fingerprint
from localguard.probe import (
    Probe,
    check_probe_matches,
    fit_probe,
    load_probe,
    save_probe,
)

# --- fitting ------------------------------------------------------------------------------


def _blobs(n: int = 200, d: int = 16, shift: float = 1.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.normal(size=(n, d)) + shift * labels[:, None]
    return features.astype(np.float32), labels


def test_fit_separates_blobs() -> None:
    features, labels = _blobs()
    probe, metrics = fit_probe(features, labels, seed=0)
    assert metrics["auroc"] > 0.95
    assert metrics["accuracy"] > 0.85
    assert metrics["f1"] > 0.85
    assert metrics["n_train"] + metrics["n_valid"] == 200
    assert metrics["n_valid"] == 40
    assert metrics["positive_rate"] == pytest.approx(0.5)
    assert probe.predict(features[labels == 1]).mean() > 0.8


def test_fit_random_labels_is_chance() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1000, 8))
    labels = rng.integers(0, 2, size=1000)
    _, metrics = fit_probe(features, labels, seed=0)
    assert abs(metrics["auroc"] - 0.5) < 0.1


def test_fit_is_deterministic_and_handles_wide_features() -> None:
    features, labels = _blobs(n=60, d=300, shift=0.4)
    a, metrics_a = fit_probe(features, labels, seed=5)
    b, metrics_b = fit_probe(features, labels, seed=5)
    assert np.array_equal(a.weight, b.weight) and metrics_a == metrics_b
    assert metrics_a["auroc"] > 0.9
    assert np.isfinite(a.weight).all()


def test_platt_calibration_is_monotone_in_open_interval() -> None:
    features, labels = _blobs()
    probe, _ = fit_probe(features, labels)
    assert probe.platt_a > 0
    direction = probe.weight / np.linalg.norm(probe.weight) * probe.std
    line = probe.mean + np.linspace(-3, 3, 41)[:, None] * direction
    risk = probe.predict(line)
    assert np.all((risk > 0) & (risk < 1))
    assert np.all(np.diff(risk) > 0)


def test_fit_rejects_too_few_examples() -> None:
    features = np.zeros((5, 3))
    with pytest.raises(InputError, match="at least 2 examples of each label, got 4 .* 1"):
        fit_probe(features, np.array([0, 0, 0, 0, 1]))


# --- files --------------------------------------------------------------------------------


def _fitted() -> Probe:
    features, labels = _blobs(n=60, d=8)
    probe, _ = fit_probe(features, labels, layers=[1, 2])
    return probe


def test_save_load_round_trip(tmp_path: Path) -> None:
    probe = _fitted()
    manifest = {"model_path": "/models/x", "model_fingerprint": "abc"}
    save_probe(probe, tmp_path / "probe", manifest)
    loaded = load_probe(tmp_path / "probe")
    for name in ("weight", "mean", "std"):
        assert np.array_equal(getattr(loaded, name), getattr(probe, name)), name
    assert loaded.bias == probe.bias
    assert (loaded.platt_a, loaded.platt_b) == (probe.platt_a, probe.platt_b)
    assert loaded.layers == [1, 2]
    assert loaded.metadata["manifest"] == manifest
    assert loaded.metadata["metrics"] == probe.metadata["metrics"]
    features, _ = _blobs(n=10, d=8, seed=3)
    assert np.array_equal(loaded.predict(features), probe.predict(features))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]  # no temp folders left


def test_save_replaces_older_probe_but_not_other_folders(tmp_path: Path) -> None:
    probe = _fitted()
    save_probe(probe, tmp_path / "probe", {})
    save_probe(probe, tmp_path / "probe", {"second": True})
    assert load_probe(tmp_path / "probe").metadata["manifest"] == {"second": True}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a probe folder"):
        save_probe(probe, other, {})
    assert (other / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "head.json").write_text("{not json"),
        lambda d: (d / "head.json").write_text(json.dumps({"kind": "risk_probe", "format": 1})),
        lambda d: (d / "head.json").write_text(json.dumps({"kind": "safety_head"})),
        lambda d: (d / "head.safetensors").write_bytes(b"garbage"),
        lambda d: (d / "head.safetensors").unlink(),
        lambda d: (d / "head.json").unlink(),
    ],
)
def test_damaged_probe_is_input_error(tmp_path: Path, damage) -> None:
    folder = save_probe(_fitted(), tmp_path / "probe", {})
    damage(folder)
    with pytest.raises(InputError) as info:
        load_probe(folder)
    assert "\n" not in str(info.value)
    assert str(folder) in str(info.value)


def test_wrong_feature_size_is_input_error() -> None:
    with pytest.raises(InputError, match="size 8"):
        _fitted().predict(np.zeros((2, 5)))


# --- models: features and training ----------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe-models")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


def _token_lists(n: int, seed: int, low: int = 10, high: int = 300) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(low, high, size=rng.integers(1, 24))] for _ in range(n)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prompt_features_every_architecture(models: dict[str, Path], arch: str) -> None:
    from mlx_lm.utils import load_model

    from localguard.backends.mlx import hidden

    model, config = load_model(models[arch])
    blocks = list(model.model.layers)
    tokens = _token_lists(7, seed=2)
    batched = hidden.prompt_features(model, tokens, batch_size=3)
    one_by_one = np.concatenate([hidden.prompt_features(model, [t]) for t in tokens])
    assert batched.shape == (7, config["hidden_size"]) and batched.dtype == np.float32
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4, rtol=0)
    assert all(
        a is b for a, b in zip(model.model.layers, blocks, strict=True)
    )  # originals restored


def test_layer_choice(models: dict[str, Path]) -> None:
    from mlx_lm.utils import load_model

    from localguard.backends.mlx import hidden

    assert hidden.default_layers(32) == list(range(10, 21))
    assert hidden.default_layers(6) == [2, 3]
    assert hidden.default_layers(2) == [0]
    model, _ = load_model(models["gemma3"])
    assert hidden.layer_count(model) == 6
    tokens = _token_lists(3, seed=4)
    last = hidden.prompt_features(model, tokens, layers=[-1])
    assert np.array_equal(last, hidden.prompt_features(model, tokens, layers=[5]))
    both = hidden.prompt_features(model, tokens, layers=[0, 5])
    first = hidden.prompt_features(model, tokens, layers=[0])
    np.testing.assert_allclose(both, (first + last) / 2, atol=1e-5)
    with pytest.raises(InputError, match="out of range"):
        hidden.prompt_features(model, tokens, layers=[6])
    with pytest.raises(InputError, match="no tokens"):
        hidden.prompt_features(model, [[5], []])


def test_blocks_restored_after_error(models: dict[str, Path]) -> None:
    import mlx.nn as nn
    from mlx_lm.utils import load_model

    from localguard.backends.mlx import hidden

    class Boom(nn.Module):
        use_sliding = False  # read by llama's model loop before the call

        def __call__(self, *args, **kwargs):
            raise RuntimeError("boom")

    model, _ = load_model(models["llama"])
    first, second = model.model.layers
    model.model.layers[1] = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        hidden.prompt_features(model, [[5, 6]], layers=[0])
    assert model.model.layers[0] is first
    model.model.layers[1] = second


TRIGGER = 7


def _trigger_dataset(n: int = 40, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Label-1 prompts contain the TRIGGER token id, label-0 prompts never do."""
    rng = np.random.default_rng(seed)
    prompts, labels = [], []
    for i in range(n):
        tokens = [int(t) for t in rng.integers(10, 300, size=rng.integers(4, 10))]
        if i % 2:
            tokens.insert(int(rng.integers(0, len(tokens))), TRIGGER)
        prompts.append(tokens)
        labels.append(i % 2)
    return prompts, labels


def test_train_probe_end_to_end(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    from localguard.backends.mlx.probe_train import train_probe

    prompts, labels = _trigger_dataset()
    out = tmp_path / "probe"
    metrics = train_probe(models["llama"], prompts, labels, out, seed=0, batch_size=4)
    assert (out / "head.json").is_file() and (out / "head.safetensors").is_file()
    assert "auroc" in metrics and metrics["auroc"] >= 0.75
    assert "probe features" in capsys.readouterr().err
    head = json.loads((out / "head.json").read_text())
    assert head["layers"] == [0] and head["metrics"]["auroc"] == metrics["auroc"]
    assert head["manifest"]["model_fingerprint"] == model_fingerprint(models["llama"])
    probe = load_probe(out)
    check_probe_matches(probe, models["llama"])
    with pytest.raises(InputError, match="was trained for another model"):
        check_probe_matches(probe, models["qwen3"])


def test_train_probe_with_chat_prompts(models: dict[str, Path], tmp_path: Path) -> None:
    """Text prompts go through the chat template with special-token parsing off."""
    from mlx_lm import load

    from localguard.backends.mlx.probe_train import train_probe
    from localguard.encoding import encode_chat

    _, tokenizer = load(str(models["qwen2"]))
    texts = [f"Tell me how to {w} the river." for w in ("see", "find", "paint", "count")]
    texts += [f"Help me {w} a red box! <|end|>" for w in ("build", "move", "read", "like")]
    prompts = [
        encode_chat(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True)
        for t in texts
    ]
    labels = [0] * 4 + [1] * 4
    metrics = train_probe(models["qwen2"], prompts, labels, tmp_path / "p", layers=[1])
    assert load_probe(tmp_path / "p").layers == [1]
    assert metrics["n_valid"] == 2


def test_train_probe_needs_two_of_each_label(models: dict[str, Path], tmp_path: Path) -> None:
    from localguard.backends.mlx.probe_train import train_probe

    with pytest.raises(InputError, match="got 3 benign .0. and 1 harmful"):
        train_probe(models["llama"], [[5], [6], [7], [8]], [0, 0, 0, 1], tmp_path / "p")
    assert not (tmp_path / "p").exists()
