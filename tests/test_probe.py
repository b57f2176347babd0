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
    L2_GRID,
    Probe,
    check_probe_matches,
    choose_l2,
    fit_probe,
    load_probe,
    save_probe,
    stratified_split,
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


def test_the_rows_of_one_prompt_stay_on_one_side_of_the_probe_split() -> None:
    """A prompt's copies (its refusal and harmful rows, its wrapped forms) are one example for
    the validation split: the probe is measured on prompts it never trained on. Each prompt
    has its own random features, copied three times, and a random label: nothing to learn, so a
    held-out AUROC near 0.5; split row by row, the copies let a weak penalty remember them."""
    rng = np.random.default_rng(0)
    n_prompts, copies = 60, 3
    labels = np.repeat(np.arange(n_prompts) % 2, copies)
    features = np.repeat(rng.normal(size=(n_prompts, 200)), copies, axis=0)
    groups = [f"jbb.csv:{i // copies}" for i in range(labels.size)]
    train, valid = stratified_split(labels, 0.2, seed=0, groups=groups)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in valid})
    assert valid.size == 12 * copies and set(labels[valid]) == {0, 1}
    _, leaky = fit_probe(features, labels, l2=0.01)
    _, grouped = fit_probe(features, labels, l2=0.01, groups=groups)
    assert leaky["auroc"] > 0.9 and grouped["auroc"] < 0.75
    with pytest.raises(InputError, match="got 1 of label 0 and 1 of label 1"):
        fit_probe(features[:6], labels[:6], groups=["a"] * 3 + ["b"] * 3)


def test_fit_rejects_too_few_examples() -> None:
    features = np.zeros((5, 3))
    with pytest.raises(InputError, match=r"at least 2 examples of each label \(.*\), got 4 .* 1"):
        fit_probe(features, np.array([0, 0, 0, 0, 1]))


def _contrast(n: int = 300, d: int = 40, seed: int = 0):
    """Like hidden states: a shared factor swamps every feature, and the label shifts one of
    them, so separating the classes takes a contrast a strong penalty will not fit."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = 3.0 * rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, d))
    features[:, 0] += 2 * labels - 1
    return features.astype(np.float32), labels


def test_auto_l2_fits_what_a_strong_penalty_underfits() -> None:
    features, labels = _contrast()
    _, strong = fit_probe(features, labels, l2=100.0)
    _, auto = fit_probe(features, labels, l2="auto")
    assert strong["l2"] == 100.0 and strong["l2_auto"] is False and "l2_cv" not in strong
    assert auto["l2_auto"] is True and auto["l2"] < 100.0
    assert auto["auroc"] > 0.97 and strong["auroc"] < 0.85
    cv = auto["l2_cv"]
    assert cv["l2"] == list(L2_GRID) and cv["folds"] == 5 and auto["l2"] == choose_l2(cv)
    assert len(cv["auroc"]) == len(cv["auroc_se"]) == len(L2_GRID)


def test_auto_l2_stays_strong_among_noise_features() -> None:
    """Three useful features among 1000 and 100 examples: a weak penalty fits the noise ones."""
    rng = np.random.default_rng(1)
    labels = np.arange(100) % 2
    features = rng.normal(size=(100, 1000))
    features[:, :3] += 2 * labels[:, None] - 1
    _, metrics = fit_probe(features, labels, l2="auto")
    assert metrics["l2"] == max(L2_GRID)


def test_auto_l2_never_sees_the_validation_split() -> None:
    """The choice of penalty and the fit use the training split alone: scrambling the
    validation rows changes the validation metrics but not the chosen penalty or its scores."""
    features, labels = _contrast(n=200)
    _, valid = stratified_split(labels, 0.2, seed=0)
    scrambled = features.copy()
    scrambled[valid] = np.random.default_rng(9).normal(size=scrambled[valid].shape)
    probe, metrics = fit_probe(features, labels, l2="auto")
    other, other_metrics = fit_probe(scrambled, labels, l2="auto")
    assert other_metrics["l2_cv"] == metrics["l2_cv"] and other_metrics["l2"] == metrics["l2"]
    assert np.array_equal(other.weight, probe.weight)
    assert other_metrics["auroc"] != metrics["auroc"]


def test_auto_l2_is_deterministic() -> None:
    features, labels = _contrast(n=120, d=200)
    a, metrics_a = fit_probe(features, labels, seed=3, l2="auto")
    b, metrics_b = fit_probe(features, labels, seed=3, l2="auto")
    assert np.array_equal(a.weight, b.weight) and metrics_a == metrics_b


def test_choose_l2_takes_the_strongest_that_ranks_about_as_well() -> None:
    cv = {
        "l2": [0.1, 1.0, 10.0, 100.0],
        "auroc": [0.999, 0.992, 0.985, 0.93],
        "auroc_se": [0.001, 0.002, 0.003, 0.01],
    }
    assert choose_l2(cv) == 1.0  # within 0.01 of the best; 0.985 is not
    assert choose_l2({**cv, "auroc_se": [0.02, 0.002, 0.003, 0.01]}) == 10.0  # 1 SE is wider
    assert choose_l2({**cv, "auroc": [0.90, 0.95, 0.97, 0.80]}) == 10.0  # the best itself


def test_auto_l2_with_too_few_examples_to_cross_validate() -> None:
    """Two of each label leave one of each for training: no folds, the strongest penalty."""
    features = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]])
    _, metrics = fit_probe(features, np.array([0, 0, 1, 1]), l2="auto")
    assert metrics["l2"] == max(L2_GRID) and metrics["l2_cv"] is None


@pytest.mark.parametrize("l2", ["fast", "Auto", -1.0, float("nan"), float("inf"), True, None])
def test_bad_l2_is_input_error(l2) -> None:
    features, labels = _blobs(n=40, d=4)
    with pytest.raises(InputError, match="l2 must be a non-negative number or 'auto'"):
        fit_probe(features, labels, l2=l2)


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


def test_probe_train_command_prints_and_records_the_penalty(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """--l2 takes a number or auto (the default); a bad value is one line naming --l2 before
    any work; the penalty used is printed and saved in head.json with the grid's scores."""
    from click.testing import CliRunner

    from localguard.cli import cli

    data = tmp_path / "prompts.jsonl"
    words = ["cat", "river", "robot", "bird", "map", "door", "lamp", "tree", "cup", "ship"]
    rows = [
        {
            "prompt": f"How do I hurt the {w}?" if i % 2 else f"Tell me about the {w}.",
            "label": i % 2,
        }
        for i, w in enumerate(words * 2)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["probe", "train", "--model", str(models["llama"]), "--data", str(data)]

    bad = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "bad"), "--l2", "fast"])
    assert bad.exit_code == 2
    assert bad.output == "error: --l2 must be a number or 'auto', not a string ('fast')\n"
    assert not (tmp_path / "bad").exists()

    auto = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    metrics = json.loads((tmp_path / "auto" / "head.json").read_text())["metrics"]
    assert metrics["l2_auto"] is True and metrics["l2"] in L2_GRID
    assert metrics["l2_cv"]["folds"] == 5 and metrics["l2_cv"]["l2"] == list(L2_GRID)
    assert f"L2 {metrics['l2']:.3g} (auto, 5-fold CV)" in auto.output

    fixed = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "fixed"), "--l2", "2.5"])
    assert fixed.exit_code == 0, fixed.output
    assert "L2 2.5 ->" in fixed.output
    metrics = json.loads((tmp_path / "fixed" / "head.json").read_text())["metrics"]
    assert metrics["l2"] == 2.5 and metrics["l2_auto"] is False
