"""The plan's eval stage reads the adapters by risk; the runner hashes them and resolves the
recipe's model with the run's seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from localguard import runner, runs
from localguard.errors import InputError
from localguard.plan import build_plan, format_plan
from localguard.recipe import load_recipe


def _recipe(tmp_path: Path, *overrides: str):
    return load_recipe(None, ["model.path='starter:test'", f"run.out='{tmp_path}'", *overrides])


def test_eval_stage_reads_every_adapter_by_risk(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "finetune.baselines=['none', 'constant']")
    plan = build_plan(recipe)
    trained = {s.settings["risk"]: s.outputs["adapter"] for s in plan if s.name == "finetune"}
    (ev,) = [s for s in plan if s.name == "eval"]
    assert (
        ev.adapters
        == trained
        == {
            "none": str(tmp_path / "adapter-none"),
            "constant": str(tmp_path / "adapter-constant"),
            "probe": str(tmp_path / "adapter-probe"),
        }
    )
    assert not any(k.startswith("adapter") for k in ev.inputs)
    assert all(not s.adapters for s in plan if s.name != "eval")
    text = format_plan(recipe, plan)
    for risk, path in trained.items():
        assert f"     in   adapter {risk}: {path}" in text
    assert "adapters" not in text  # one readable line per adapter, not a mapping


def test_eval_stage_without_fine_tuning_reads_no_adapter(tmp_path: Path) -> None:
    plan = build_plan(_recipe(tmp_path, "finetune.enabled=false"))
    (ev,) = [s for s in plan if s.name == "eval"]
    assert ev.adapters == {}


def test_anchors_go_to_every_fine_tune_with_a_kl_term_but_plain_lora(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path, "finetune.baselines=['none', 'constant']", "finetune.anchor_ratio=0.2"
    )
    stages = {s.settings["risk"]: s for s in build_plan(recipe) if s.name == "finetune"}
    assert stages["none"].settings["anchor_ratio"] == 0.0 and "anchors" not in stages["none"].inputs
    for risk in ("constant", "probe"):
        assert stages[risk].settings["anchor_ratio"] == 0.2
        assert stages[risk].inputs["anchors"] == recipe["data"]["safety"]
    off = {s.settings["risk"]: s for s in build_plan(_recipe(tmp_path)) if s.name == "finetune"}
    assert "anchors" not in off["probe"].inputs


def test_stage_key_follows_the_adapters(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "finetune.baselines=['none']")
    plan = build_plan(recipe)
    (ev,) = [s for s in plan if s.name == "eval"]
    produced = {path: f"key of {risk}" for risk, path in ev.adapters.items()}
    key = runner.stage_key(ev, recipe, produced)
    assert runner.stage_key(ev, recipe, dict(produced)) == key
    produced[ev.adapters["none"]] = "a retrained baseline"
    assert runner.stage_key(ev, recipe, produced) != key


def test_stage_keys_follow_only_the_guard_values_each_stage_reads(tmp_path: Path) -> None:
    """A guard option the training stages never read (a new one, or max_tokens) keeps their
    results; the refusal prefix, which label and export write into their outputs, does not."""
    stages = {s.name: s for s in build_plan(_recipe(tmp_path))}
    assert set(runner.GUARD_KEYS_READ) <= set(runner.executors())

    def keys(*overrides: str) -> dict[str, str]:
        recipe = _recipe(tmp_path, *overrides)
        return {name: runner.stage_key(s, recipe, {}) for name, s in stages.items()}

    base = keys()
    tokens = keys("guard.max_tokens=7")
    assert {n for n in base if tokens[n] != base[n]} == {"eval"}
    prefix = keys("guard.refusal_prefix='No.'")
    assert {"export", "eval"} <= {n for n in base if prefix[n] != base[n]}
    assert prefix["finetune"] == base["finetune"] and prefix["head"] == base["head"]


def test_model_dir_builds_the_starter_world_with_the_run_seed(monkeypatch, tmp_path) -> None:
    built = []

    def build(size, seed=0):
        built.append((size, seed))
        return tmp_path / "model"

    monkeypatch.setattr("localguard.starter.build.build", build)
    recipe = _recipe(tmp_path, "run.seed=4")
    stage = [s for s in build_plan(recipe) if s.name == "probe"][0]
    assert runner.model_dir(stage, recipe) == tmp_path / "model"
    assert built == [("test", 4)]


def test_a_stale_interrupted_stage_starts_over_under_the_runner(tmp_path: Path) -> None:
    """An interrupted training stage resumes with the same options; with other options (a
    recipe changed since) the command line refuses, the runner (force) starts over."""
    out = tmp_path / "head"
    work = runs.prepare(out, {"iters": 100}, resume=False, force=False)
    (work / "step.txt").write_text("50")
    assert runs.prepare(out, {"iters": 100}, resume=True, force=True) == work
    assert (work / "step.txt").exists()
    with pytest.raises(InputError, match="other options than the interrupted run"):
        runs.prepare(out, {"iters": 100, "r1": 5}, resume=True, force=False)
    assert runs.prepare(out, {"iters": 100, "r1": 5}, resume=True, force=True) == work
    assert not (work / "step.txt").exists()
