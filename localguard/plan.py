"""The resolved plan of a recipe: which stages run, on what, into which folders.

`localguard run --dry-run` prints it; the runner executes it stage by stage. A stage is plain
data here (name, inputs, outputs, settings, adapters) so the plan can be shown and checked
without importing any ML framework.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localguard.recipe import Recipe
from localguard.starter import starter_size

STAGES = ("starter", "probe", "finetune", "head", "export", "eval")


@dataclass
class Stage:
    """One step of a run: what it reads, what it writes, and the settings it uses.

    adapters: the fine-tuned adapters the stage reads, by the risk estimator that trained each
    ("none" is plain LoRA); only the eval stage reads more than one."""

    name: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)


def build_plan(recipe: Recipe) -> list[Stage]:
    """The enabled stages of recipe, in order, with resolved input and output paths."""
    out = Path(recipe["run"]["out"])
    model = recipe["model"]["path"]
    data = recipe["data"]
    fine = recipe["finetune"]
    plan: list[Stage] = []
    if starter_size(model):
        plan.append(
            Stage(
                "starter",
                {},
                {"model": model},
                {"size": starter_size(model), "seed": recipe["run"]["seed"]},
            )
        )
    if recipe["probe"]["enabled"]:
        plan.append(
            Stage(
                "probe",
                {"model": model, "prompts": data["prompts"]},
                {"probe": str(out / "probe")},
                dict(recipe["probe"]),
            )
        )
    adapter = None
    adapters: dict[str, str] = {}
    if fine["enabled"]:
        for risk in [*fine["baselines"], fine["risk"]]:
            adapter = adapters[risk] = str(out / f"adapter-{risk}")
            inputs = {"model": model, "train": data["train"], "valid": data["valid"]}
            if risk == "probe":
                inputs["probe"] = str(out / "probe")
            settings = {k: v for k, v in fine.items() if k not in ("enabled", "baselines")}
            plan.append(Stage("finetune", inputs, {"adapter": adapter}, {**settings, "risk": risk}))
    head = None
    if recipe["head"]["enabled"]:
        head = str(out / "head")
        # the task data (default: the fine-tuning data) is an input, so editing it reruns the head
        task = recipe["head"]["task_data"] or data["train"]
        inputs = {"model": model, "safety": data["safety"], "task": task}
        if adapter:
            inputs["adapter"] = adapter
        settings = {k: v for k, v in recipe["head"].items() if k != "task_data"}
        plan.append(Stage("head", inputs, {"head": head}, settings))
    gguf = None
    if recipe["export"]["enabled"]:
        gguf = str(out / "export")
        inputs = {
            "model": model,
            **({"adapter": adapter} if adapter else {}),
            **({"head": head} if head else {}),
        }
        plan.append(Stage("export", inputs, {"gguf": gguf}, dict(recipe["export"])))
    if recipe["eval"]["enabled"]:
        inputs = {
            "model": model,
            **({"head": head} if head else {}),
            **({"gguf": gguf} if gguf else {}),
        }
        if "finetune_attack" in recipe["eval"]["suites"] and recipe["probe"]["enabled"]:
            inputs["probe"] = str(out / "probe")
        report = {"report": str(out / "eval")}
        plan.append(Stage("eval", inputs, report, dict(recipe["eval"]), dict(adapters)))
    return plan


def _short(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_plan(recipe: Recipe, plan: list[Stage]) -> str:
    """A readable plan: run folder, then each stage with its inputs, outputs and settings."""
    lines = [
        f"recipe  {recipe.source or '(defaults)'}",
        f"run     {recipe['run']['name']}  ->  {recipe['run']['out']}",
        f"seed    {recipe['run']['seed']}",
        "",
    ]
    for number, stage in enumerate(plan, 1):
        lines.append(f"{number}. {stage.name}")
        lines += [f"     in   {k}: {v}" for k, v in stage.inputs.items()]
        lines += [f"     in   adapter {risk}: {v}" for risk, v in stage.adapters.items()]
        lines += [f"     out  {k}: {v}" for k, v in stage.outputs.items()]
        shown = {k: v for k, v in stage.settings.items() if k != "enabled"}
        if shown:
            text = "  ".join(f"{k}={_short(v)}" for k, v in shown.items())
            lines += textwrap.wrap(
                text,
                96,
                initial_indent="     with ",
                subsequent_indent="          ",
                break_long_words=False,
            )
    skipped = [
        s
        for s in ("probe", "finetune", "head", "export", "eval")
        if s not in {st.name for st in plan}
    ]
    if skipped:
        lines += ["", "disabled: " + ", ".join(skipped)]
    return "\n".join(lines)
