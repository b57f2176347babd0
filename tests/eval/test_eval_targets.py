"""Targets: the harmful share of an attack mix, and the comparison a recipe's run evaluates."""

from __future__ import annotations

from pathlib import Path

from localguard.eval.targets import mix_ratio, recipe_options
from localguard.plan import build_plan
from localguard.recipe import load_recipe


def test_mix_ratio_from_names_and_labels(tmp_path: Path) -> None:
    assert mix_ratio(Path("attack_05.jsonl")) == 0.05
    assert mix_ratio(Path("attack_only.jsonl")) == 1.0
    mix = tmp_path / "mine.jsonl"
    mix.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    assert mix_ratio(mix) == 0.5
    mix.write_text('{"text": "a"}\n')
    assert mix_ratio(mix) is None


def test_recipe_targets_are_base_sft_and_ours_with_and_without_guard(tmp_path: Path) -> None:
    overrides = [
        "model.path='starter:test'",
        "finetune.baselines=['none']",
        f"run.out='{tmp_path}'",
        "export.quant=['Q4_K_M']",
    ]
    recipe = load_recipe(None, overrides)
    stage = build_plan(recipe)[-1]
    assert stage.name == "eval"
    assert {"head", "gguf"} <= set(stage.inputs)
    assert stage.adapters == {
        "none": str(tmp_path / "adapter-none"),
        "probe": str(tmp_path / "adapter-probe"),
    }
    opts = recipe_options(stage, recipe)
    names = [t.name for t in opts.targets]
    assert names == ["base", "plain SFT", "localguard", "localguard + guard"]
    ours = opts.targets[-1]
    assert ours.model.endswith("export/model-Q4_K_M.gguf") and ours.guard == "on"
    assert opts.targets[1].adapter.endswith("adapter-none") and opts.targets[1].p == 0.1
    assert opts.heldout is not None and opts.suites == recipe["eval"]["suites"]
    assert opts.out == tmp_path / "eval" == Path(stage.outputs["report"])


def test_recipe_without_export_evaluates_the_adapter_with_its_head(tmp_path: Path) -> None:
    overrides = [
        "model.path='starter:test'",
        "finetune.baselines=['none']",
        f"run.out='{tmp_path}'",
        "export.enabled=false",
    ]
    recipe = load_recipe(None, overrides)
    stage = build_plan(recipe)[-1]
    assert set(stage.adapters) == {"none", "probe"} and "gguf" not in stage.inputs
    targets = recipe_options(stage, recipe).targets
    assert [t.name for t in targets] == ["base", "plain SFT", "localguard", "localguard + guard"]
    ours = targets[-1]
    assert (ours.backend, ours.adapter, ours.head) == (
        "mlx",
        str(tmp_path / "adapter-probe"),
        str(tmp_path / "head"),
    )
    assert ours.defense == "probe"
