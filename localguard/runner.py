"""Execute a recipe's plan stage by stage into its run folder.

Each stage name maps to a plain function taking (stage, recipe). Every stage of the plan is
checked for an executor before anything runs, so a run never stops half-way on a stage this
version cannot perform.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import click

from localguard.errors import LocalguardError
from localguard.plan import Stage
from localguard.recipe import Recipe

Executor = Callable[[Stage, Recipe], dict]


def run_starter(stage: Stage, recipe: Recipe) -> dict:
    """Build (or reuse) the starter world named by the recipe's model."""
    from localguard.starter.build import build

    return {"model": str(build(stage.settings["size"], stage.settings["seed"]))}


def executors() -> dict[str, Executor]:
    """The stages this version of localguard can run, by name."""
    return {"starter": run_starter}


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temporary name first, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
