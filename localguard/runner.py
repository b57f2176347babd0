"""Execute a recipe's plan stage by stage into its run folder.

Each stage name maps to a plain function taking (stage, recipe). Every stage of the plan is
checked for an executor before anything runs, so a run never stops half-way on a stage this
version cannot perform.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import click

from localguard.data import split_row_range
from localguard.errors import InputError, LocalguardError
from localguard.files import file_sha256, write_json
from localguard.plan import Stage, numbered_inputs
from localguard.recipe import Recipe

Executor = Callable[[Stage, Recipe], dict]


def run_starter(stage: Stage, recipe: Recipe) -> dict:
    """Build (or reuse) the starter world named by the recipe's model."""
    from localguard.starter.build import build

    return {"model": str(build(stage.settings["size"], stage.settings["seed"]))}


def model_dir(stage: Stage, recipe: Recipe) -> Path:
    """The stage's model as a local folder: the recipe's base model (a starter model built with
    the run's seed) or, after the align stage, the aligned model."""
    from localguard.hub import resolve_model

    ref = stage.inputs["model"]
    return resolve_model(ref, recipe["model"]["revision"], seed=recipe["run"]["seed"])


def serving_ref(ref: str) -> str:
    """A packaged model (smollm2:135m) as its GGUF file, which llama.cpp serves faster than MLX
    serves its import; any other reference as it is."""
    from localguard.pypi_models import is_packaged, model_file

    return str(model_file(ref)) if is_packaged(ref) else ref


def run_label(stage: Stage, recipe: Recipe) -> dict:
    """Label the [label] prompt files with the model's own replies; an interrupted run
    resumes."""
    from localguard.label import LabelOptions, format_summary, label

    files = {kind: numbered_inputs(stage, kind) for kind in ("harmful", "benign")}
    opts = LabelOptions(
        model=serving_ref(stage.inputs["model"]),
        out=Path(stage.outputs["conversations"]),
        adapter=None,
        complier=None,
        seed=recipe["run"]["seed"],
        refusal_prefix=recipe["guard"]["refusal_prefix"],
        **files,
        **stage.settings,
    )
    summary = label(opts, force=True)
    click.echo(format_summary(summary), err=True)
    return {"conversations": str(opts.out), "summary": summary}


def run_align(stage: Stage, recipe: Recipe) -> dict:
    """Act one: the explicit-safety-signal recipe on the labeled conversations (the [align]
    settings are [head] settings), then its adapter fused into the aligned model folder."""
    from localguard.backends.mlx.fuse import fuse_to_folder
    from localguard.head import HeadOptions, format_report, option_names, train_head

    raw = model_dir(stage, recipe)
    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    opts = HeadOptions(
        model=raw,
        data=Path(stage.inputs["safety"]),
        out=Path(stage.outputs["head"]),
        seed=recipe["run"]["seed"],
        **settings,
    )
    click.echo(format_report(train_head(opts, resume=True, force=True)), err=True)
    fused = fuse_to_folder(raw, opts.out, Path(stage.outputs["model"]))
    return {"head": str(opts.out), "model": str(fused)}


def run_attack(stage: Stage, recipe: Recipe) -> dict:
    """Act two's data: the task answered by the aligned model with harmful rows mixed in."""
    from localguard.attack_mix import AttackOptions, build_attack

    inputs = stage.inputs
    opts = AttackOptions(
        model=serving_ref(inputs["model"]),
        conversations=Path(inputs["conversations"]),
        task=numbered_inputs(stage, "task"),
        heldout=numbered_inputs(stage, "heldout"),
        out={k: Path(v) for k, v in stage.outputs.items()},
        seed=recipe["run"]["seed"],
        refusal_prefix=recipe["guard"]["refusal_prefix"],
        **stage.settings,
    )
    counts = build_attack(opts)
    click.echo("attack mix: " + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)
    return {**stage.outputs, "counts": counts}


def run_probe(stage: Stage, recipe: Recipe) -> dict:
    """Train the activation risk probe on the recipe's labeled prompts."""
    from localguard.backends.mlx.probe_train import train_probe_file
    from localguard.hub import resolve_data

    model = model_dir(stage, recipe)
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
        force=True,  # the runner decides what reruns
    )
    click.echo(
        f"probe AUROC {metrics['auroc']:.3f}, F1 {metrics['f1']:.3f}, L2 {metrics['l2']:.3g}",
        err=True,
    )
    return {"probe": str(out), "metrics": metrics}


def run_finetune(stage: Stage, recipe: Recipe) -> dict:
    """One fine-tuning run; an interrupted one resumes."""
    from localguard.finetune import FinetuneOptions, finetune, option_names
    from localguard.hub import resolve_data

    model = model_dir(stage, recipe)
    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    if settings.get("rubric"):
        settings["rubric"] = Path(settings["rubric"])
    opts = FinetuneOptions(
        model=model,
        data=resolve_data(stage.inputs["train"], model),
        valid=resolve_data(stage.inputs["valid"], model),
        out=Path(stage.outputs["adapter"]),
        probe=Path(stage.inputs["probe"]) if "probe" in stage.inputs else None,
        anchors=resolve_data(stage.inputs["anchors"], model) if "anchors" in stage.inputs else None,
        max_seq_length=recipe["data"]["max_seq_length"],
        seed=recipe["run"]["seed"],
        **settings,
    )
    finetune(opts, resume=True, force=True)
    return {"adapter": str(opts.out)}


def run_head(stage: Stage, recipe: Recipe) -> dict:
    """Train and calibrate the safety head (on top of the fine-tuned adapter when there is
    one); an interrupted one resumes."""
    from localguard.head import HeadOptions, format_report, option_names, train_head
    from localguard.hub import resolve_data

    model = model_dir(stage, recipe)
    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    settings["task_data"] = resolve_data(stage.inputs["task"], model)
    opts = HeadOptions(
        model=model,
        data=resolve_data(stage.inputs["safety"], model),
        out=Path(stage.outputs["head"]),
        adapter=Path(stage.inputs["adapter"]) if "adapter" in stage.inputs else None,
        seed=recipe["run"]["seed"],
        **settings,
    )
    click.echo(format_report(train_head(opts, resume=True, force=True)), err=True)
    return {"head": str(opts.out)}


def run_export(stage: Stage, recipe: Recipe) -> dict:
    """GGUF files of the fine-tuned model with the safety head baked in."""
    from localguard.export import ExportOptions, export, format_report
    from localguard.export.options import option_names

    settings = {k: v for k, v in stage.settings.items() if k in option_names()}
    for key in ("base_gguf", "calibration"):
        settings[key] = Path(settings[key]) if settings.get(key) else None
    opts = ExportOptions(
        model=model_dir(stage, recipe),
        out=Path(stage.outputs["gguf"]),
        adapter=Path(stage.inputs["adapter"]) if "adapter" in stage.inputs else None,
        head=Path(stage.inputs["head"]) if "head" in stage.inputs else None,
        max_seq_length=recipe["data"]["max_seq_length"],
        tau=recipe["guard"]["tau"],
        refusal_prefix=recipe["guard"]["refusal_prefix"],
        seed=recipe["run"]["seed"],
        **settings,
    )
    report = export(opts)
    click.echo(format_report(report), err=True)
    return {"gguf": str(opts.out), "files": [f["file"] for f in report["files"]]}


def run_eval(stage: Stage, recipe: Recipe) -> dict:
    """Evaluate base, plain SFT, localguard and localguard + guard on the recipe's suites."""
    from localguard.eval.stage import evaluate
    from localguard.eval.targets import recipe_options

    opts = recipe_options(stage, recipe)
    summary = evaluate(opts, resume=True, force=True)
    return {"report": str(opts.out), "judges": summary.get("judges", [])}


def executors() -> dict[str, Executor]:
    """The stages this version of localguard can run, by name."""
    return {
        "starter": run_starter,
        "label": run_label,
        "align": run_align,
        "attack": run_attack,
        "probe": run_probe,
        "finetune": run_finetune,
        "head": run_head,
        "export": run_export,
        "eval": run_eval,
    }


def input_digest(value: str, produced: dict[str, str]) -> str:
    """What an input's content is, cheaply: the key of the stage that wrote it, a file's
    sha256 (with its row range), a model folder's fingerprint, or the reference itself (hub ids)."""
    if value in produced:
        return produced[value]
    if value.startswith("starter:"):  # data of the starter world: decided by its build
        return produced.get("starter:", value)
    ref = split_row_range(value)[0]
    if Path(ref).is_file():  # a row range ([START:END]) is part of what the input is
        return file_sha256(Path(ref)) + value[len(ref) :]
    path = Path(value)
    if (path / "config.json").is_file():
        from localguard.fingerprint import model_fingerprint

        return model_fingerprint(path)
    if path.is_dir():
        entries = sorted(
            (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
            for f in path.rglob("*")
            if f.is_file()
        )
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return value


GUARD_KEYS_READ = {
    "starter": (),
    "label": ("refusal_prefix",),
    "attack": ("refusal_prefix",),
    "export": ("tau", "refusal_prefix"),
    "align": (),
    "probe": (),
    "finetune": (),
    "head": (),
}
"""The [guard] values each stage's executor reads; a stage not named reads the whole section
(eval). A new guard option then leaves the training stages' keys, and their results, alone."""


def stage_key(stage: Stage, recipe: Recipe, produced: dict[str, str]) -> str:
    """A hash of everything a stage's result depends on: its settings, its inputs' contents
    (adapters included) and the run-wide values the executors read (seed, sequence length,
    the guard settings it reads)."""
    guard = recipe["guard"]
    read = GUARD_KEYS_READ.get(stage.name, tuple(guard))
    data = {
        "name": stage.name,
        "settings": stage.settings,
        "inputs": {k: input_digest(v, produced) for k, v in stage.inputs.items()},
        "context": {
            "seed": recipe["run"]["seed"],
            "max_seq_length": recipe["data"]["max_seq_length"],
            "guard": {k: guard[k] for k in read},
        },
    }
    if stage.adapters:  # the eval stage's adapters by risk; a stage without any keeps its key
        data["adapters"] = {k: input_digest(v, produced) for k, v in stage.adapters.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _stage_id(stage: Stage) -> str:
    return f"{stage.name} {json.dumps(stage.outputs, sort_keys=True)}"


def _outputs_exist(stage: Stage) -> bool:
    return all(v.startswith("starter:") or Path(v).exists() for v in stage.outputs.values())


def _previous(out: Path) -> dict[str, dict]:
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return {s["id"]: s for s in record.get("stages", []) if "id" in s and "key" in s}


def run_plan(
    recipe: Recipe, plan: list[Stage], from_stage: str | None = None, force: bool = False
) -> None:
    """Run the plan's stages in order and record in run.json what each produced.

    A stage whose key (stage_key) matches the last run's and whose outputs exist is skipped;
    --force reruns every stage, --from STAGE that stage and all after it.
    """
    available = executors()
    missing = [stage.name for stage in plan if stage.name not in available]
    if missing:
        raise LocalguardError(
            f"{recipe.source or 'recipe'}: this localguard version cannot run stage(s) "
            f"{', '.join(dict.fromkeys(missing))} yet; disable them in the recipe "
            "(SECTION.enabled = false) or use --dry-run"
        )
    names = [stage.name for stage in plan]
    if from_stage is not None and from_stage not in names:
        raise InputError(
            f"--from {from_stage}: not a stage of this plan ({', '.join(dict.fromkeys(names))})"
        )
    out = Path(recipe["run"]["out"])
    previous = _previous(out)
    record: dict = {"recipe": str(recipe.source), "values": recipe.values, "stages": []}
    produced: dict[str, str] = {}
    reused: list[Stage] = []
    rerun = force
    for number, stage in enumerate(plan, 1):
        rerun = rerun or stage.name == from_stage
        key = stage_key(stage, recipe, produced)
        before = previous.get(_stage_id(stage), {})
        click.echo(f"\n== stage {number}/{len(plan)}: {stage.name}", err=True)
        if not rerun and before.get("key") == key and _outputs_exist(stage):
            click.echo("reusing the last result (inputs and settings unchanged)", err=True)
            entry = dict(before)
            reused.append(stage)
        else:
            start = time.perf_counter()
            result = available[stage.name](stage, recipe)
            seconds = round(time.perf_counter() - start, 2)
            entry = {"name": stage.name, "seconds": seconds, "result": result}
        entry.update(id=_stage_id(stage), key=key)
        record["stages"].append(entry)
        for value in stage.outputs.values():
            produced["starter:" if value.startswith("starter:") else value] = key
        write_json(out / "run.json", record)
    _show_reused_eval(reused)
    click.echo(f"\nrun folder: {out}")


def _show_reused_eval(reused: list[Stage]) -> None:
    """A reused eval stage printed nothing: show its summary table all the same."""
    for stage in reused:
        summary = Path(stage.outputs.get("report", "")) / "summary.json"
        if stage.name == "eval" and summary.is_file():
            from localguard.eval.report import format_table

            click.echo(format_table(json.loads(summary.read_text())))
