"""What one evaluation does (EvalOptions: targets, suites, prompts, judge, guard and sampling),
and how values from the command line or a recipe become those options.

A *target* is one system to evaluate: a GGUF with its baked head (llama.cpp) or an MLX model
with an optional adapter and head, served with the guard on, off or monitoring.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localguard.backends.base import Sampling
from localguard.backends.factory import backend_for, gguf_path
from localguard.data import split_row_range
from localguard.errors import InputError
from localguard.guard import GuardSettings
from localguard.hub import resolve_data, resolve_model
from localguard.recipe import EVAL_GUARD_KEYS, default, option_value, schema_field
from localguard.starter import starter_size

STARTER_MIXES = ("attack_05", "attack_10", "attack_20")


@dataclass
class Target:
    """One system to evaluate. backend "llamacpp": model is a GGUF (its head is baked in);
    "mlx": model is a folder, with an optional adapter and head folder."""

    name: str
    backend: str
    model: str
    adapter: str | None = None
    head: str | None = None
    guard: str = "off"
    defense: str | None = None  # the fine-tuning risk estimator behind the model, if known
    p: float | None = None  # harmful ratio of its fine-tuning mix, if known
    suite: str | None = None  # only this suite (finetune_attack targets: "direct" prompts)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class AttackTraining:
    """The finetune_attack suite: which mixes and risk estimators, with which settings."""

    model: Path
    mixes: list[Path]
    risks: list[str] = field(default_factory=lambda: ["none", "probe"])
    settings: dict = field(default_factory=dict)  # FinetuneOptions fields
    probe: Path | None = None
    critic: str | None = None


@dataclass
class EvalOptions:
    targets: list[Target]
    out: Path
    suites: list[str] = schema_field("eval", "suites")
    sources: list[str] = schema_field("eval", "sources")  # prompt files or hub data set ids
    apart: list[str] = schema_field("eval", "apart")  # harmful sources outside the headline
    apart_suites: list[str] = schema_field("eval", "apart_suites")  # theirs (empty: all)
    heldout: Path | None = None  # a starter world's data folder (held-out sets)
    prefill_tokens: list[int] = schema_field("eval", "prefill_tokens")
    complier: str | None = schema_field("eval", "complier")  # the long prefill's own replies
    long_prefill_tokens: int = schema_field("eval", "long_prefill_tokens")
    task_data: Path | None = schema_field("eval", "task_data")  # the task suite's JSONL
    judge: list[str] = schema_field("eval", "judge")  # attack success; the first leads
    # llm: a GGUF judge; head: a GGUF with a baked head (both read this one file)
    judge_model: Path | None = schema_field("eval", "judge_model")
    rubric: Path | None = schema_field("eval", "rubric")
    max_prompts: int = schema_field("eval", "max_prompts")
    guard: GuardSettings = field(default_factory=GuardSettings)  # mode comes from each target
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=64, seed=0))
    training: AttackTraining | None = None
    seed: int = schema_field("run", "seed")

    def __post_init__(self) -> None:
        """A recipe's one-name judge ("refusal") is a one-judge list, so that options.json,
        which a resumed run compares, reads the same whichever form named it."""
        self.judge = [self.judge] if isinstance(self.judge, str) else list(self.judge)

    def describe(self) -> dict:
        data = dataclasses.asdict(self)
        return json.loads(json.dumps(data, default=str))


# --- pieces shared by the command line and a recipe's eval stage ------------------------------


def heldout_folder(ref: str | None, model: Path | None = None) -> Path | None:
    """A starter world's data folder: from ref (a folder or starter:SIZE), else the world of a
    starter model folder, else None."""
    if ref:
        folder = resolve_model(ref).parent / "data" if starter_size(ref) else Path(ref)
        if not (folder / "heldout_harmful.jsonl").is_file():
            raise InputError(f"--heldout {ref}: no heldout_harmful.jsonl in {folder}")
        return folder
    if model is not None and (Path(model).parent / "starter.json").is_file():
        return Path(model).parent / "data"
    return None


def default_suites(heldout: Path | None) -> list[str]:
    """The recipe's default suites, and utility when there are held-out skill questions."""
    return default("eval", "suites") + (["utility"] if heldout else [])


def long_prefill_and_task(values: dict[str, Any], model: Path | None = None) -> dict[str, Any]:
    """EvalOptions' complier, long_prefill_tokens and task_data from eval's command line or a
    recipe's [eval] section (the same names); task_data may be starter:SPLIT of model's
    world."""
    tokens = str(values["long_prefill_tokens"])
    return {
        "complier": values["complier"] or None,
        "long_prefill_tokens": option_value(
            "eval", "long_prefill_tokens", tokens, "--long-prefill-tokens"
        ),
        "task_data": _task_data_path(values["task_data"], model),
    }


def _task_data_path(ref: str | None, model: Path | None) -> Path | None:
    """The task suite's JSONL from a path or starter:SPLIT, keeping a trailing [START:END]
    row range; None without one."""
    if not ref:
        return None
    file, _, _ = split_row_range(str(ref))
    return Path(str(resolve_data(file, model)) + str(ref)[len(file) :])


def attack_settings(fine: dict) -> dict:
    """The training settings of a recipe's [finetune] section that a harmful fine-tuning
    attack reuses (everything but what the attack itself decides)."""
    from localguard.finetune import option_names

    skip = {"risk", "probe", "critic", "rubric", "model", "data", "out", "seed"}
    return {k: v for k, v in fine.items() if k in option_names() and k not in skip}


def attack_training(
    model: Path,
    heldout: Path | None,
    mixes: list[str],
    risks: list[str],
    probe: str | None,
    critic: str | None,
    settings: dict,
) -> AttackTraining:
    """The finetune_attack suite's plan; mixes default to the starter world's."""
    if not mixes:
        if heldout is None:
            raise InputError("finetune_attack needs --attack-mix files (or a starter world)")
        paths = [heldout / f"{m}.jsonl" for m in STARTER_MIXES]
    else:
        paths = [resolve_data(m, model) for m in mixes]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"attack mix {missing[0]} does not exist")
    if not risks:
        risks = ["none", "constant"] + ["probe"] * bool(probe) + ["critic"] * bool(critic)
    if "probe" in risks and not probe:
        raise InputError("finetune_attack with risk probe needs --probe (a probe folder)")
    if "critic" in risks and not critic:
        raise InputError("finetune_attack with risk critic needs --critic (a judge model)")
    probe_dir = Path(probe) if probe else None
    return AttackTraining(model, paths, list(risks), settings, probe_dir, critic)


def guard_settings(guard: dict, seed: int) -> tuple[GuardSettings, Sampling]:
    """Guard overrides and sampling from a [guard]-like dict; the mode comes from each target."""
    settings, sampling = GuardSettings.from_recipe({**guard, "mode": "on"})
    return settings, dataclasses.replace(sampling, seed=seed)


# --- the command line -------------------------------------------------------------------------


def _cli_targets(options: dict[str, Any]) -> tuple[list[Target], str, Path]:
    """The --model under each --guard mode, with its backend and local path."""
    ref = options["model"]
    if backend_for(ref) == "llamacpp":
        if options["adapter"] or options["head"]:
            raise InputError("--adapter and --head are for MLX models; a GGUF carries its head")
        path = gguf_path(ref)
        backend, model, has_head = "llamacpp", path, _gguf_has_head(path)
    else:
        backend, model, has_head = "mlx", resolve_model(ref), bool(options["head"])
    guards = list(options["guards"]) or (["on"] if has_head else ["off"])
    if not has_head and set(guards) != {"off"}:
        raise InputError(
            "--guard on/monitor needs a safety head: give --head (MLX) or a GGUF exported with one"
        )
    name = options["name"] or (Path(ref).stem if backend == "llamacpp" else Path(ref).name)
    targets = [
        Target(
            name if len(guards) == 1 else f"{name} guard {g}",
            backend,
            str(model),
            options["adapter"],
            options["head"],
            g,
        )
        for g in guards
    ]
    return targets, backend, model


def _gguf_has_head(path: Path) -> bool:
    """Whether a GGUF carries a baked safety head: a plain llama.cpp file (a user's own model)
    is evaluated with the guard off, as an MLX model without --head is."""
    from localguard.backends.llamacpp.gguf_runtime import read_head

    return read_head(path) is not None


def _recipe_settings(recipe_path: str | None) -> dict:
    """The attack's training settings from --recipe's [finetune] section ({} without one)."""
    from localguard.recipe import load_recipe

    return attack_settings(load_recipe(recipe_path)["finetune"]) if recipe_path else {}


def _prefill_tokens(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise InputError(f"--prefill-tokens {text!r}: expected numbers such as 5,10,20") from None


def options_from_cli(options: dict[str, Any]) -> EvalOptions:
    """EvalOptions from `localguard eval`'s option values (click's dict)."""
    targets, backend, model = _cli_targets(options)
    heldout = heldout_folder(options["heldout"], model if backend == "mlx" else None)
    extra = long_prefill_and_task(options, model if backend == "mlx" else None)
    task = ["task"] if extra["task_data"] else []  # --task-data alone asks for the suite
    suites = list(options["suites"]) or default_suites(heldout) + task
    training = None
    if "finetune_attack" in suites:
        if backend != "mlx":
            raise InputError("finetune_attack fine-tunes the model: give an MLX --model")
        training = attack_training(
            model,
            heldout,
            list(options["attack_mixes"]),
            list(options["attack_risks"]),
            options["probe"],
            options["critic"],
            _recipe_settings(options["recipe"]),
        )
    settings, sampling = guard_settings({k: options[k] for k in EVAL_GUARD_KEYS}, options["seed"])
    prefill = _prefill_tokens(str(options["prefill_tokens"]))
    return EvalOptions(
        targets=targets,
        out=Path(options["out"]),
        suites=suites,
        sources=list(options["sources"]),
        apart=list(options["apart"]),
        apart_suites=list(options["apart_suites"]),
        heldout=heldout,
        prefill_tokens=prefill,
        **extra,
        judge=options["judge"],
        judge_model=Path(options["judge_model"]) if options["judge_model"] else None,
        rubric=Path(options["rubric"]) if options["rubric"] else None,
        max_prompts=options["max_prompts"],
        guard=settings,
        sampling=sampling,
        training=training,
        seed=options["seed"],
    )
