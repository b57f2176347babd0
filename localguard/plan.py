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

from localguard.recipe import SCHEMA, Recipe
from localguard.starter import starter_size

STAGES = ("starter", "label", "align", "attack", "probe", "finetune", "head", "export", "eval")
ALIGNED_FILE = "model-F16.gguf"
"""The aligned model's export the attack stage answers its task prompts with (always written)."""


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


def _numbered(key: str, refs: list[str]) -> dict[str, str]:
    """A list of files as inputs ("harmful 1", "harmful 2", ...), each digested on its own."""
    return {f"{key} {i}": ref for i, ref in enumerate(refs, 1)}


def numbered_inputs(stage: Stage, key: str) -> list[str]:
    """The list of files _numbered made inputs of stage under key, in order."""
    return [v for k, v in stage.inputs.items() if k.startswith(key + " ")]


def _export(inputs: dict[str, str], out: Path, recipe: Recipe) -> Stage:
    return Stage("export", inputs, {"gguf": str(out)}, dict(recipe["export"]))


def build_plan(recipe: Recipe) -> list[Stage]:
    """The enabled stages of recipe, in order, with resolved input and output paths.

    A real-model recipe runs three acts: [label] and [align] make the aligned model every later
    stage starts from; [attack] builds the fine-tuning mix; finetune, head and export defend
    and guard it; the eval stage compares raw, aligned, each baseline fine-tune and localguard,
    all as GGUF files served by llama.cpp."""
    out = Path(recipe["run"]["out"])
    raw = model = recipe["model"]["path"]
    data = dict(recipe["data"])
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
    label, align, attack = recipe["label"], recipe["align"], recipe["attack"]
    if label["enabled"]:
        data["safety"] = data["prompts"] = str(out / "label.jsonl")
        inputs = {"model": raw, **_numbered("harmful", label["harmful"])}
        inputs.update(_numbered("benign", label["benign"]))
        settings = {k: v for k, v in label.items() if k not in ("enabled", "harmful", "benign")}
        plan.append(Stage("label", inputs, {"conversations": data["safety"]}, settings))
    comparisons: dict[str, str] = {}  # eval rows as GGUF export folders, by name
    if align["enabled"]:
        head = str(out / "align")
        model = str(out / "aligned")
        settings = {k: v for k, v in align.items() if k != "enabled"}
        inputs = {"model": raw, "safety": data["safety"]}
        plan.append(Stage("align", inputs, {"head": head, "model": model}, settings))
        if recipe["export"]["enabled"]:
            comparisons["raw"] = str(out / "export-raw")
            comparisons["aligned"] = str(out / "export-aligned")
            plan.append(_export({"model": raw}, Path(comparisons["raw"]), recipe))
            plan.append(_export({"model": raw, "head": head}, Path(comparisons["aligned"]), recipe))
    if attack["enabled"]:
        mix = out / "attack"
        answerer = str(Path(comparisons["aligned"]) / ALIGNED_FILE) if comparisons else model
        inputs = {"model": answerer, "conversations": data["safety"]}
        inputs.update(_numbered("task", attack["task"]))
        inputs.update(_numbered("heldout", attack["heldout"]))
        outputs = {
            name: str(mix / f"{name}.jsonl") for name in ("train", "valid", "task", "heldout")
        }
        settings = {k: v for k, v in attack.items() if k not in ("enabled", "task", "heldout")}
        plan.append(Stage("attack", inputs, outputs, settings))
        data.update(train=outputs["train"], valid=outputs["valid"])
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
            if risk == "none":  # plain LoRA, the attack baseline: no KL term to anchor with
                settings["anchor_ratio"] = 0.0
            elif fine["anchor_ratio"]:
                inputs["anchors"] = data["safety"]
            plan.append(Stage("finetune", inputs, {"adapter": adapter}, {**settings, "risk": risk}))
    head = None
    if recipe["head"]["enabled"]:
        head = str(out / "head")
        # the task data (default: the fine-tuning data) is an input, so editing it reruns the head
        task = recipe["head"]["task_data"] or (
            str(out / "attack" / "task.jsonl") if attack["enabled"] else data["train"]
        )
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
        plan.append(_export(inputs, Path(gguf), recipe))
        if comparisons:
            for risk, path in adapters.items():
                if risk != fine["risk"]:
                    comparisons[risk] = str(out / f"export-{risk}")
                    inputs = {"model": model, "adapter": path}
                    plan.append(_export(inputs, Path(comparisons[risk]), recipe))
    if recipe["eval"]["enabled"]:
        inputs = {
            "model": model,
            **({"head": head} if head else {}),
            **({"gguf": gguf} if gguf else {}),
            **{f"gguf {name}": path for name, path in comparisons.items()},
        }
        if attack["enabled"]:  # the mix (its harmful share) and the held-out task answers
            inputs.update(train=data["train"], task=str(out / "attack" / "heldout.jsonl"))
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
    # the stages on by default that this recipe turns off (the real-model acts are opt-in)
    ran = {st.name for st in plan}
    skipped = [s for s in STAGES[1:] if SCHEMA[s]["enabled"].default and s not in ran]
    if skipped:
        lines += ["", "disabled: " + ", ".join(skipped)]
    return "\n".join(lines)
