"""`localguard finetune`: LoRA fine-tuning that stays close to the safe model where it is risky.

Each training example gets a risk in [0, 1] from an estimator (the activation probe, the judge
critic, a constant, or none), and its loss weights follow from it (docs/design.md, "Adaptive
regularization"); anchors from the safety conversations join them at risk 1 (anchor_samples).
This module holds the options, the risk estimation, the anchors and the output folder;
the training itself is backends/mlx/lora_train.py.

The run writes to OUT.partial/ and renames it to OUT only when it has finished, so OUT is never
half-written. A killed run keeps its last checkpoint in OUT.partial/ and `--resume` continues it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import click
import numpy as np

from localguard import __version__, runs
from localguard.data import Sample, load_dataset, split_for_validation, warnings_for
from localguard.errors import InputError
from localguard.files import describe, file_sha256, write_json
from localguard.home import home
from localguard.recipe import schema_field

RISKS = ("none", "constant", "probe", "critic")
ANCHOR_STREAM = 7  # the anchors' own random stream, apart from the data order's


@dataclass
class FinetuneOptions:
    """Everything a fine-tuning run depends on (the recipe's [finetune] section plus paths)."""

    model: Path
    data: Path
    out: Path
    valid: Path | None = None
    risk: str = schema_field("finetune", "risk")
    probe: Path | None = None
    anchors: Path | None = None
    critic: str | None = schema_field("finetune", "critic")
    rubric: Path | None = schema_field("finetune", "rubric")
    beta_min: float = schema_field("finetune", "beta_min")
    beta_max: float = schema_field("finetune", "beta_max")
    beta: float = schema_field("finetune", "beta")
    alpha: str = schema_field("finetune", "alpha")
    risk_ema: float = schema_field("finetune", "risk_ema")
    kl_sample_below: float = schema_field("finetune", "kl_sample_below")
    anchor_ratio: float = schema_field("finetune", "anchor_ratio")
    lora_rank: int = schema_field("finetune", "lora_rank")
    lora_scale: float = schema_field("finetune", "lora_scale")
    lora_dropout: float = schema_field("finetune", "lora_dropout")
    lora_layers: int = schema_field("finetune", "lora_layers")
    target_modules: list[str] = schema_field("finetune", "target_modules")
    dora: bool = schema_field("finetune", "dora")
    optimizer: str = schema_field("finetune", "optimizer")
    learning_rate: float = schema_field("finetune", "learning_rate")
    lr_schedule: str = schema_field("finetune", "lr_schedule")
    warmup_steps: int = schema_field("finetune", "warmup_steps")
    iters: int = schema_field("finetune", "iters")
    epochs: float = schema_field("finetune", "epochs")
    batch_size: int = schema_field("finetune", "batch_size")
    grad_accumulation: int = schema_field("finetune", "grad_accumulation")
    grad_checkpoint: bool = schema_field("finetune", "grad_checkpoint")
    max_seq_length: int = schema_field("data", "max_seq_length")
    mask_prompt: bool = schema_field("finetune", "mask_prompt")
    steps_per_eval: int = schema_field("finetune", "steps_per_eval")
    steps_per_save: int = schema_field("finetune", "steps_per_save")
    seed: int = schema_field("run", "seed")

    def describe(self) -> dict:
        return describe(self)


def option_names() -> list[str]:
    return [f.name for f in fields(FinetuneOptions)]


# --- checks before any model work -----------------------------------------------------------


def check_options(opts: FinetuneOptions) -> None:
    """One-line errors for option combinations that cannot work."""
    if opts.risk not in RISKS:
        raise InputError(f"--risk must be one of {', '.join(RISKS)}, not {opts.risk!r}")
    if opts.beta_min > opts.beta_max:
        raise InputError(f"--beta-min ({opts.beta_min}) is above --beta-max ({opts.beta_max})")
    if opts.risk == "probe" and opts.probe is None:
        raise InputError("--risk probe needs --probe DIR (train one with `localguard probe train`)")
    if opts.risk == "critic" and not opts.critic:
        raise InputError("--risk critic needs --critic MODEL (a GGUF file or an MLX model folder)")
    if opts.iters == 0 and opts.epochs <= 0:
        raise InputError("set --iters above 0 or --epochs above 0")
    if (opts.anchors is None) != (opts.anchor_ratio == 0):
        raise InputError("--anchors FILE and --anchor-ratio above 0 go together (e.g. 0.3)")
    if opts.anchors is not None and opts.risk == "none":
        raise InputError("--anchors are held by the KL term, which --risk none does not have")


# --- anchors ---------------------------------------------------------------------------------


def anchor_samples(opts: FinetuneOptions, tokenizer, n_train: int) -> list[Sample]:
    """Rows held to the reference at the full KL weight (risk 1): refusals of harmful requests
    and answers to benign ones from a safety-conversation file, half each, drawn by seed to
    make up anchor_ratio of the training rows.

    A user's data holds the fine-tune only on its own prompts, along its own replies. The
    refusals keep the reference refusing harmful requests (some inside wrappers) that the data
    never makes; the benign answers keep it answering the benign requests nearest them, so the
    refusals do not spread.
    """
    from localguard.conversations import load_conversations

    path = opts.anchors
    rows = load_conversations(path, tokenizer, opts.max_seq_length)
    wanted = round(opts.anchor_ratio / (1 - opts.anchor_ratio) * n_train)
    rng = np.random.default_rng([opts.seed, ANCHOR_STREAM])
    anchors = []
    for query, share in ((1, (wanted + 1) // 2), (0, wanted // 2)):
        group = [c for c in rows if c.query == query and c.response == 0]
        what = f"rows with query_label {query} and response_label 0"
        if not group:
            raise InputError(f"{path}: no {what} to anchor on")
        if share > len(group):
            click.echo(f"warning: {path} has {len(group)} {what}, fewer than {share}", err=True)
        for i in np.sort(rng.permutation(len(group))[:share]):
            c = group[i]
            offset = c.start if opts.mask_prompt else 0
            anchors.append(Sample(c.tokens, offset, query, "", "", line=c.line))
    return anchors


# --- risk ------------------------------------------------------------------------------------


def estimate_risk(opts: FinetuneOptions, model, samples: list) -> tuple[np.ndarray, dict]:
    """One risk per training sample and a summary; must run before adapters are added."""
    if opts.risk in ("none", "constant"):
        value = 0.0 if opts.risk == "none" else 1.0
        return np.full(len(samples), value), {"estimator": opts.risk}
    if opts.risk == "probe":
        return _probe_risk(opts, model, samples)
    return _critic_risk(opts, samples)


def _probe_risk(opts: FinetuneOptions, model, samples) -> tuple[np.ndarray, dict]:
    from localguard.backends.mlx.hidden import prompt_features
    from localguard.probe import check_probe_matches, load_probe

    probe = load_probe(opts.probe)
    check_probe_matches(probe, opts.model)
    prompts = [s.tokens[: s.offset] if s.offset > 0 else s.tokens for s in samples]
    risks = probe.predict(prompt_features(model, prompts, probe.layers))
    return np.asarray(risks, np.float64), {"estimator": "probe", "probe": str(opts.probe)}


def _critic_risk(opts: FinetuneOptions, samples) -> tuple[np.ndarray, dict]:
    from localguard.critic import DEFAULT_RUBRIC, Critic, load_rubric

    judge = load_judge(opts.critic)
    rubric = load_rubric(opts.rubric) if opts.rubric else DEFAULT_RUBRIC
    critic = Critic(judge, rubric, cache_path=home() / "critic" / "scores.json")
    risks = critic.score([(s.prompt, s.response) for s in samples])
    summary = {
        "estimator": "critic",
        "critic": opts.critic,
        "scored": critic.n_scored,
        "cached": critic.n_cached,
        "failed_closed": critic.n_failed,
    }
    return np.asarray(risks, np.float64), summary


def load_judge(ref: str):
    """A GGUF file through llama.cpp, anything else as an MLX model."""
    from localguard.backends.factory import backend_for

    if backend_for(ref) == "llamacpp":
        from localguard.backends.llamacpp.judge import LlamaCppJudge

        return LlamaCppJudge(Path(ref))
    from localguard.backends.mlx.judge import MLXJudge
    from localguard.hub import resolve_model

    return MLXJudge(resolve_model(ref))


def weighting_for(opts: FinetuneOptions):
    """The loss weights: none trains plain SFT, constant a fixed beta, the estimators a range."""
    from localguard.backends.mlx.lora_train import Weighting

    alpha_one = opts.alpha == "one"
    if opts.risk == "none":
        return Weighting(0.0, 0.0, alpha_one=True)
    if opts.risk == "constant":
        return Weighting(opts.beta, opts.beta, alpha_one, sample_below=opts.kl_sample_below)
    return Weighting(opts.beta_min, opts.beta_max, alpha_one, opts.risk_ema, opts.kl_sample_below)


# --- the run ---------------------------------------------------------------------------------


def _iters(opts: FinetuneOptions, n: int) -> int:
    if opts.iters:
        return opts.iters
    return max(1, round(opts.epochs * n / opts.batch_size))


def finetune(opts: FinetuneOptions, resume: bool = False, force: bool = False) -> Path:
    """Run (or resume) a fine-tuning run; returns the finished adapter folder."""
    from localguard.backends.mlx import lora_train as lt
    from localguard.fingerprint import model_fingerprint

    check_options(opts)
    rank = lt.rank()
    model, tokenizer = lt.load(opts.model)
    train = load_dataset(opts.data, tokenizer, opts.max_seq_length, opts.mask_prompt)
    if opts.valid is not None:
        valid = load_dataset(opts.valid, tokenizer, opts.max_seq_length, opts.mask_prompt).samples
    else:
        train.samples, valid = split_for_validation(train.samples, 0.1, opts.seed, opts.data)
    for line in warnings_for(train) if rank == 0 else []:
        click.echo(f"warning: {line}", err=True)
    # read before the risks, so a bad anchors file fails before a judge scores every row
    anchors = anchor_samples(opts, tokenizer, len(train.samples)) if opts.anchors else []
    risks, risk_summary = estimate_risk(opts, model, train.samples)
    risk_summary.update(mean=float(risks.mean()), n=len(risks))
    samples = train.samples + anchors
    risks = np.concatenate([risks, np.ones(len(anchors))])
    work = runs.prepare(opts.out, opts.describe(), resume, force) if rank == 0 else None
    work = work or runs.partial_dir(opts.out)
    lora = lt.LoraSpec(
        rank=opts.lora_rank,
        scale=opts.lora_scale,
        dropout=opts.lora_dropout,
        num_layers=opts.lora_layers,
        keys=list(opts.target_modules),
        dora=opts.dora,
    )
    num_layers = lt.add_adapters(model, lora, opts.seed)
    spec = lt.TrainSpec(
        iters=_iters(opts, len(samples)),
        batch_size=opts.batch_size,
        grad_accumulation=opts.grad_accumulation,
        learning_rate=opts.learning_rate,
        lr_schedule=opts.lr_schedule,
        warmup_steps=opts.warmup_steps,
        optimizer=opts.optimizer,
        max_seq_length=opts.max_seq_length,
        seed=opts.seed,
        steps_per_eval=opts.steps_per_eval,
        steps_per_save=opts.steps_per_save,
        grad_checkpoint=opts.grad_checkpoint,
    )
    record = runs.MetricsLog(work)
    with runs.progress_bar(spec.iters, "finetune", rank == 0) as bar:
        start = lt.resume_step(work)
        if rank == 0:
            runs.trim_metrics(work, start)
        bar.update(start)
        lt.train(
            model,
            samples,
            risks,
            weighting_for(opts),
            spec,
            work,
            valid=valid,
            progress=_Show(bar),
            on_metrics=record,
        )
    if rank != 0:
        return opts.out
    lt.save_adapters(model, lora.adapter_config(num_layers), work)
    data = {"train": str(opts.data), "train_sha256": file_sha256(opts.data)}
    if anchors:
        data.update(anchors=str(opts.anchors), anchors_sha256=file_sha256(opts.anchors))
    manifest = {
        "kind": "adapter",
        "localguard": __version__,
        "base_model": str(opts.model),
        "base_fingerprint": model_fingerprint(opts.model),
        "data": data,
        "options": opts.describe(),
        "steps": spec.iters,
        "resumed_from": start,
        "risk": risk_summary,
        "examples": len(train.samples),
        "anchor_rows": len(anchors),
        "truncated": train.n_truncated,
        "final": record.last,
    }
    write_json(work / "manifest.json", manifest)
    return runs.finish(work, opts.out, lt.CHECKPOINT)


class _Show:
    """The progress bar's label. Its tok/s is trained tokens (with mask_prompt, the replies
    only, as mlx-lm counts them) per second over the steps run so far: one step's rate swings
    with its batch's widths, and a step that meets a new batch shape also compiles."""

    def __init__(self, bar) -> None:
        self.bar, self.tokens, self.seconds = bar, 0.0, 0.0

    def __call__(self, _step: int, m: dict) -> None:
        self.tokens += m["tokens"]
        self.seconds += m["step_seconds"]
        self.bar.label = (
            f"finetune loss {m['loss']:.3f} kl {m['kl']:.3f} beta {m['beta']:.2f} "
            f"{self.tokens / self.seconds:,.0f} tok/s"
        )
        self.bar.update(1)
