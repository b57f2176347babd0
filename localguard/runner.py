"""Execute a recipe's plan stage by stage into its run folder.

Each stage name maps to a plain function taking (stage, recipe). Every stage of the plan is
checked for an executor before anything runs, so a run never stops half-way on a stage this
version cannot perform.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click

from localguard.errors import LocalguardError
from localguard.files import write_json
from localguard.plan import Stage
from localguard.recipe import Recipe

Executor = Callable[[Stage, Recipe], dict]


def run_starter(stage: Stage, recipe: Recipe) -> dict:
    """Build (or reuse) the starter world named by the recipe's model."""
    from localguard.starter.build import build

    return {"model": str(build(stage.settings["size"], stage.settings["seed"]))}


def model_dir(recipe: Recipe) -> Path:
    """The recipe's base model as a local folder (a starter model built with the run's seed)."""
    from localguard.hub import resolve_model
    from localguard.starter import starter_size

    ref = recipe["model"]["path"]
    size = starter_size(ref)
    if size is not None:
        from localguard.starter.build import build

        return build(size, recipe["run"]["seed"])
    return resolve_model(ref, recipe["model"]["revision"])


def run_probe(stage: Stage, recipe: Recipe) -> dict:
    """Train the activation risk probe on the recipe's labeled prompts."""
    from localguard.backends.mlx.probe_train import train_probe_file
    from localguard.hub import resolve_data

    model = model_dir(recipe)
    out = Path(stage.outputs["probe"])
    metrics = train_probe_file(
        model,
        resolve_data(stage.inputs["prompts"], model),
        out,
        stage.settings["layers"] or None,
        recipe["data"]["max_seq_length"],
        recipe["run"]["seed"],
        stage.settings["valid_fraction"],
        stage.settings["l2"],
    )
    click.echo(f"probe AUROC {metrics['auroc']:.3f}, F1 {metrics['f1']:.3f}", err=True)
    return {"probe": str(out), "metrics": metrics}


def run_finetune(stage: Stage, recipe: Recipe) -> dict:
    """One fine-tuning run; an interrupted one resumes, a finished one with the same options
    is reused."""
    from localguard.finetune import FinetuneOptions, finetune, option_names
    from localguard.hub import resolve_data

    model = model_dir(recipe)
    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    if settings.get("rubric"):
        settings["rubric"] = Path(settings["rubric"])
    opts = FinetuneOptions(
        model=model,
        data=resolve_data(stage.inputs["train"], model),
        valid=resolve_data(stage.inputs["valid"], model),
        out=Path(stage.outputs["adapter"]),
        probe=Path(stage.inputs["probe"]) if "probe" in stage.inputs else None,
        max_seq_length=recipe["data"]["max_seq_length"],
        seed=recipe["run"]["seed"],
        **settings,
    )
    manifest = opts.out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["options"] == opts.describe():
        click.echo(f"reusing {opts.out}", err=True)
    else:
        finetune(opts, resume=True, force=True)
    return {"adapter": str(opts.out)}


def run_head(stage: Stage, recipe: Recipe) -> dict:
    """Train and calibrate the safety head (on top of the fine-tuned adapter when there is
    one); a finished head with the same options is reused."""
    from localguard.head import HeadOptions, format_report, option_names, train_head
    from localguard.hub import resolve_data

    model = model_dir(recipe)
    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    opts = HeadOptions(
        model=model,
        data=resolve_data(stage.inputs["safety"], model),
        out=Path(stage.outputs["head"]),
        adapter=Path(stage.inputs["adapter"]) if "adapter" in stage.inputs else None,
        seed=recipe["run"]["seed"],
        **settings,
    )
    info = opts.out / "head.json"
    if info.is_file() and json.loads(info.read_text())["manifest"]["options"] == opts.describe():
        click.echo(f"reusing {opts.out}", err=True)
    else:
        click.echo(format_report(train_head(opts, resume=True, force=True)), err=True)
    return {"head": str(opts.out)}


def run_export(stage: Stage, recipe: Recipe) -> dict:
    """GGUF files of the fine-tuned model with the safety head baked in; a finished export
    with the same options is reused."""
    from localguard.export import ExportOptions, export, format_report, option_names

    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    for key in ("base_gguf", "calibration"):
        settings[key] = Path(settings[key]) if settings.get(key) else None
    opts = ExportOptions(
        model=model_dir(recipe),
        out=Path(stage.outputs["gguf"]),
        adapter=Path(stage.inputs["adapter"]) if "adapter" in stage.inputs else None,
        head=Path(stage.inputs["head"]) if "head" in stage.inputs else None,
        max_seq_length=recipe["data"]["max_seq_length"],
        tau=recipe["guard"]["tau"],
        refusal_prefix=recipe["guard"]["refusal_prefix"],
        seed=recipe["run"]["seed"],
        **settings,
    )
    info = opts.out / "export.json"
    if info.is_file() and json.loads(info.read_text()).get("options") == opts.describe():
        click.echo(f"reusing {opts.out}", err=True)
        report = json.loads(info.read_text())
    else:
        report = export(opts)
        click.echo(format_report(report), err=True)
    return {"gguf": str(opts.out), "files": [f["file"] for f in report["files"]]}


def executors() -> dict[str, Executor]:
    """The stages this version of localguard can run, by name."""
    return {
        "starter": run_starter,
        "probe": run_probe,
        "finetune": run_finetune,
        "head": run_head,
        "export": run_export,
    }


def run_plan(recipe: Recipe, plan: list[Stage]) -> None:
    """Run every stage of plan in order and record what each produced in run.json."""
    available = executors()
    missing = [stage.name for stage in plan if stage.name not in available]
    if missing:
        raise LocalguardError(
            f"{recipe.source or 'recipe'}: this localguard version cannot run stage(s) "
            f"{', '.join(dict.fromkeys(missing))} yet; disable them in the recipe "
            "(SECTION.enabled = false) or use --dry-run"
        )
    out = Path(recipe["run"]["out"])
    record: dict = {"recipe": str(recipe.source), "values": recipe.values, "stages": []}
    for number, stage in enumerate(plan, 1):
        click.echo(f"\n== stage {number}/{len(plan)}: {stage.name}", err=True)
        start = time.perf_counter()
        result = available[stage.name](stage, recipe)
        record["stages"].append(
            {"name": stage.name, "seconds": round(time.perf_counter() - start, 2), "result": result}
        )
        write_json(out / "run.json", record)
    click.echo(f"\nrun folder: {out}")
