"""Which systems an evaluation reads: the comparison of a recipe's run folder (base model,
baseline fine-tunes, localguard's model with the guard off and on), the adapters of the
harmful fine-tuning attack, and a target opened as a guard backend.
"""

from __future__ import annotations

from pathlib import Path

from localguard.backends.base import GuardBackend
from localguard.backends.factory import open_guard_backend
from localguard.data import read_jsonl
from localguard.eval.options import (
    AttackTraining,
    EvalOptions,
    Target,
    attack_settings,
    attack_training,
    guard_settings,
    heldout_folder,
    long_prefill_and_task,
)
from localguard.guard import GuardSettings
from localguard.hub import resolve_data, resolve_model
from localguard.plan import Stage
from localguard.recipe import Recipe


def open_target(target: Target, guard: GuardSettings | None = None) -> GuardBackend:
    """The target's model as a guard backend (a CLS head re-checked on guard's schedule, by
    default the [guard] defaults'); the caller closes it."""
    guard = guard or GuardSettings()
    return open_guard_backend(
        target.model,
        target.backend,
        adapter=target.adapter,
        head=target.head,
        cls_schedule=guard.cls_schedule,
        cls_period=guard.cls_period,
    )


def mix_ratio(path: Path) -> float | None:
    """The harmful share of an attack mix: from the starter world's name (attack_10: 0.10,
    attack_only: 1.0), else from its rows' labels when every row has one."""
    stem = Path(path).stem
    if stem == "attack_only":
        return 1.0
    if stem.startswith("attack_") and stem[7:].isdigit():
        return int(stem[7:]) / 100
    rows = read_jsonl(Path(path))
    labels = [r.get("label") for r in rows]
    if rows and all(label in (0, 1) for label in labels):
        return sum(labels) / len(labels)
    return None


def attack_targets(training: AttackTraining, work: Path, seed: int) -> list[Target]:
    """Fine-tune the model on every mix with every risk estimator (each adapter once; a
    killed run resumes) and return them as targets of the finetune_attack suite."""
    from localguard.finetune import FinetuneOptions, finetune

    targets = []
    for mix in training.mixes:
        p = mix_ratio(mix)
        for risk in training.risks:
            out = work / "finetune_attack" / f"{Path(mix).stem}-{risk}"
            if not out.exists():
                opts = FinetuneOptions(
                    **{
                        **training.settings,
                        "model": training.model,
                        "data": Path(mix),
                        "out": out,
                        "risk": risk,
                        "probe": training.probe,
                        "critic": training.critic,
                        "seed": seed,
                    }
                )
                finetune(opts, resume=True, force=False)
            label = f"p={p:.2f}" if p is not None else Path(mix).stem
            targets.append(
                Target(
                    f"SFT {risk} {label}",
                    "mlx",
                    str(training.model),
                    str(out),
                    defense=risk,
                    p=p,
                    suite="finetune_attack",
                )
            )
    return targets


def served_file(folder: str, recipe: Recipe) -> Path:
    """The GGUF of an export folder that the evaluation serves: the last quantization type."""
    quant = recipe["export"]["quant"]
    return Path(folder) / f"model-{quant[-1] if quant else 'F16'}.gguf"


def adapter_targets(
    model: Path, adapters: dict[str, str], main: str | None, p: float | None
) -> list[Target]:
    """The base model and each baseline fine-tune as MLX targets."""
    targets = [Target("base", "mlx", str(model))]
    for risk, path in adapters.items():
        if risk != main:
            name = "plain SFT" if risk == "none" else f"SFT {risk}"
            targets.append(Target(name, "mlx", str(model), path, defense=risk, p=p))
    return targets


def comparison_targets(
    inputs: dict[str, str], recipe: Recipe, main: str | None, p: float | None
) -> list[Target]:
    """The raw and aligned models and each baseline fine-tune of the aligned model, as the
    GGUF files their export stages wrote, served guard off by llama.cpp like localguard's own."""
    names = {"raw": "raw", "aligned": "aligned", "none": "plain LoRA"}
    targets = []
    for key, folder in inputs.items():
        if key.startswith("gguf "):
            system = key.removeprefix("gguf ")
            defense = None if system in ("raw", "aligned") else system
            name = names.get(system, f"LoRA risk {system}")
            file = str(served_file(folder, recipe))
            targets.append(
                Target(name, "llamacpp", file, defense=defense, p=p if defense else None)
            )
    return targets


def three_act_defaults(ev: dict, inputs: dict[str, str], recipe: Recipe) -> dict:
    """What a three-act run supplies where [eval] leaves it open: the raw model as the complier
    of the long prefill (when the prefill suite runs), the aligned model's head (trained apart
    from the served one) as the head judge, and the attack stage's held-out task answers as the
    task data."""
    if "gguf aligned" not in inputs:
        return {}
    raw = str(served_file(inputs["gguf raw"], recipe)) if "prefill" in ev["suites"] else None
    return {
        "complier": ev["complier"] or raw,
        "judge_model": ev["judge_model"] or str(served_file(inputs["gguf aligned"], recipe)),
        "task_data": ev["task_data"] or inputs.get("task"),
    }


def recipe_options(stage: Stage, recipe: Recipe) -> EvalOptions:
    """The demo's comparison from a run's eval stage: the base model, each baseline fine-tune
    (plain SFT is risk none), and localguard's model (the exported GGUF when there is one,
    else the adapter with its head) with the guard off and in the recipe's mode."""
    run = Path(recipe["run"]["out"])
    inputs, adapters = stage.inputs, stage.adapters
    model = resolve_model(inputs["model"], recipe["model"]["revision"], seed=recipe["run"]["seed"])
    ev, fine = recipe["eval"], recipe["finetune"]
    train = inputs.get("train", recipe["data"]["train"])  # an [attack] mix, else the data's
    p = mix_ratio(resolve_data(train, model)) if fine["enabled"] else None
    main = fine["risk"] if fine["risk"] in adapters else None
    if "gguf aligned" in inputs:  # a three-act run: every row is an exported GGUF
        targets = comparison_targets(inputs, recipe, main, p)
    else:
        targets = adapter_targets(model, adapters, main, p)
    mode = recipe["guard"]["mode"]
    if "gguf" in inputs:
        ours = {"backend": "llamacpp", "model": str(served_file(inputs["gguf"], recipe))}
    else:
        ours = {
            "backend": "mlx",
            "model": str(model),
            "adapter": adapters.get(main),
            "head": inputs.get("head"),
        }
    if "gguf" in inputs or "head" in inputs:
        targets.append(Target("localguard", guard="off", defense=main, p=p, **ours))
        if mode != "off":
            targets.append(Target("localguard + guard", guard=mode, defense=main, p=p, **ours))
    elif main:
        targets.append(Target("localguard", "mlx", str(model), adapters[main], defense=main, p=p))
    heldout = heldout_folder(None, model)
    training = None
    if "finetune_attack" in ev["suites"]:
        probe = run / "probe" if (run / "probe").is_dir() else None
        training = attack_training(
            model,
            heldout,
            ev["attack_mixes"],
            ev["attack_risks"],
            str(probe) if probe else None,
            fine["critic"],
            attack_settings(fine),
        )
    settings, sampling = guard_settings(recipe["guard"], recipe["run"]["seed"])
    ev = {**ev, **three_act_defaults(ev, inputs, recipe)}
    return EvalOptions(
        targets=targets,
        out=Path(stage.outputs["report"]),
        suites=list(ev["suites"]),
        sources=list(ev["sources"]),
        apart=list(ev["apart"]),
        apart_suites=list(ev["apart_suites"]),
        heldout=heldout,
        prefill_tokens=list(ev["prefill_tokens"]),
        judge=ev["judge"],
        judge_model=Path(ev["judge_model"]) if ev["judge_model"] else None,
        rubric=Path(ev["rubric"]) if ev["rubric"] else None,
        max_prompts=ev["max_prompts"],
        guard=settings,
        sampling=sampling,
        training=training,
        seed=recipe["run"]["seed"],
        **long_prefill_and_task(ev, model),
    )
