"""`localguard head train` and `localguard head score`: the explicit safety head as a stage.

train: labeled conversations -> a head fitted on the frozen model (probe mode) or trained with
LoRA (stream mode; cls mode, where it reads a dedicated CLS token: localguard/cls_token.py),
calibrated on a validation split, written with its metrics and a reliability diagram. The
adapter is saved next to the head (adapters.safetensors + adapter_config.json, loadable by
mlx-lm) but in files of its own. score: the per-token safety trace of one conversation.

--task-data (a recipe's [data] train) adds the user's fine-tuning data as benign conversations
(query 0, response 0): a seeded valid_fraction of them is held out and counted as negatives
when the query threshold is set (and reported as over-refusal); the rest join the training
conversations in both modes, so stream mode keeps the task it continues (SFT on its replies).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import click
import numpy as np

from localguard import __version__, runs
from localguard.cls_token import ClsRule
from localguard.conversations import (
    Conversation,
    check_both_classes,
    load_conversations,
    load_task_conversations,
)
from localguard.errors import InputError
from localguard.files import describe, file_sha256, write_json
from localguard.recipe import SCHEMA, schema_field
from localguard.safety_head import (
    SafetyHead,
    calibrate,
    reliability_png,
    stream_metrics,
    write_head,
)
from localguard.stats import grouped_split

MODES = ("stream", "probe", "cls")
# stream and cls modes train the head with the adapter, so the fit on frozen features only
# starts it: on 2 CPU cores that forward pass over all 1,360 training conversations was 8 of
# the SmolLM2 head stage's 20 minutes, and the training steps read every row anyway
WARM_START_CONVERSATIONS = 256
RELIABILITY_FILE = "reliability.png"
_TOKEN_STATES = {"query": "last prompt token", "response": "every reply token"}
POSITIONS = {  # where each mode reads its outputs, as head.json records it
    "stream": _TOKEN_STATES,
    "probe": _TOKEN_STATES,
    "cls": {"query": "CLS verdict after the prompt", "response": "CLS verdict after every token"},
}


@dataclass
class HeadOptions:
    """The recipe's [head] section plus paths."""

    model: Path
    data: Path
    out: Path
    adapter: Path | None = None
    task_data: Path | None = schema_field("head", "task_data")
    mode: str = schema_field("head", "mode")
    r1: int = schema_field("head", "r1")
    r2: int = schema_field("head", "r2")
    r3: int = schema_field("head", "r3")
    gamma: float = schema_field("head", "gamma")
    beta: float = schema_field("head", "beta")
    target_fpr: float = schema_field("head", "target_fpr")
    iters: int = schema_field("head", "iters")
    learning_rate: float = schema_field("head", "learning_rate")
    batch_size: int = schema_field("head", "batch_size")
    lora_rank: int = schema_field("head", "lora_rank")
    lora_scale: float = schema_field("head", "lora_scale")
    lora_layers: int = schema_field("head", "lora_layers")
    valid_fraction: float = schema_field("head", "valid_fraction")
    max_seq_length: int = schema_field("head", "max_seq_length")
    steps_per_save: int = schema_field("head", "steps_per_save")
    seed: int = schema_field("run", "seed")

    def describe(self) -> dict:
        return describe(self)


def option_names() -> list[str]:
    return [f.name for f in fields(HeadOptions)]


def split(convs: list[Conversation], fraction: float, seed: int):
    """Train and validation conversations, stratified by (query, response) label pair, the
    rows of one prompt (Conversation.group) on one side together (stats.grouped_split)."""
    keys = [(c.query, c.response) for c in convs]
    train, valid = grouped_split(keys, [c.group for c in convs], fraction, seed)
    return [convs[i] for i in train], [convs[i] for i in valid]


def _task_split(opts: HeadOptions, tokenizer) -> tuple[list[Conversation], list[Conversation]]:
    """The task data's (train, held-out) conversations, split as the safety data is; none
    without --task-data."""
    if opts.task_data is None:
        return [], []
    task = load_task_conversations(opts.task_data, tokenizer, opts.max_seq_length)
    return split(task, opts.valid_fraction, opts.seed)


def _file_record(path: Path | None) -> dict | None:
    return {"path": str(path), "sha256": file_sha256(path)} if path else None


def _load(opts: HeadOptions):
    from localguard.backends.mlx.loading import load_model

    return load_model(Path(opts.model), Path(opts.adapter) if opts.adapter else None)


def _adapter_config(opts: HeadOptions, num_layers: int) -> dict:
    """The adapter's own config when continuing one, else a fresh one's."""
    import json

    from localguard.backends.mlx import lora_train as lt

    if opts.adapter:
        return json.loads((Path(opts.adapter) / "adapter_config.json").read_text())
    spec = lt.LoraSpec(rank=opts.lora_rank, scale=opts.lora_scale, num_layers=opts.lora_layers)
    return spec.adapter_config(num_layers)


def _check_options(opts: HeadOptions) -> None:
    """The mode and cls mode's windows (the CLI's choices do not cover a direct call)."""
    if opts.mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, not {opts.mode!r}")
    for key in ("r1", "r2", "r3"):
        low, value = SCHEMA["head"][key].low, getattr(opts, key)
        if value < low:
            raise InputError(f"--{key} must be at least {low:g}, not {value}")


def warm_start(train: list[Conversation], mode: str, seed: int) -> list[Conversation]:
    """The conversations the frozen-feature fit reads: all of them in probe mode (the fit is the
    head), else at most WARM_START_CONVERSATIONS drawn by seed, in their order."""
    if mode == "probe" or len(train) <= WARM_START_CONVERSATIONS:
        return train
    picked = np.random.default_rng(seed).choice(len(train), WARM_START_CONVERSATIONS, replace=False)
    return [train[i] for i in np.sort(picked)]


def _cls_rule(opts: HeadOptions) -> ClsRule | None:
    return ClsRule(opts.r1, opts.r2, opts.r3) if opts.mode == "cls" else None


def _train_joint(opts: HeadOptions, model, head: SafetyHead, train, work: Path):
    """LoRA + head (+ a CLS head's vector) jointly, continuing --adapter when given; returns
    (head, adapter config)."""
    from localguard.backends.mlx import head_train as ht
    from localguard.backends.mlx import lora_train as lt

    if opts.adapter:
        model.freeze()
        model.unfreeze(keys=["lora_a", "lora_b", "m"], strict=False)
        num_layers = len(model.layers)
    else:
        lora = lt.LoraSpec(rank=opts.lora_rank, scale=opts.lora_scale, num_layers=opts.lora_layers)
        num_layers = lt.add_adapters(model, lora, opts.seed)
    initial = lt.adapter_weights(model)  # the KL's reference (beta > 0), before any resume
    ht.attach_head(model, head)
    spec = lt.TrainSpec(
        iters=opts.iters,
        batch_size=opts.batch_size,
        learning_rate=opts.learning_rate,
        max_seq_length=opts.max_seq_length,
        seed=opts.seed,
        steps_per_save=opts.steps_per_save,
    )
    record = runs.MetricsLog(work)
    with runs.progress_bar(spec.iters, "head train") as bar:
        start = lt.resume_step(work)
        runs.trim_metrics(work, start)
        bar.update(start)

        def show(_step: int, m: dict) -> None:
            kl = f" kl {m['kl']:.4f}" if "kl" in m else ""
            bar.label = f"head train nll {m['nll']:.3f} bce {m['bce']:.3f}{kl}"
            bar.update(1)

        weights = ht.Weights(opts.gamma, opts.beta)
        objective = ht.HeadObjective(train, spec, weights, _cls_rule(opts), initial)
        lt.run_training(model, objective, spec, work, show, record)
    return ht.detach_head(model, head), _adapter_config(opts, num_layers)


def train_head(opts: HeadOptions, resume: bool = False, force: bool = False) -> dict:
    """Train, calibrate and write a head folder; returns the calibration report."""
    from localguard.backends.mlx import head_train as ht
    from localguard.backends.mlx import lora_train as lt
    from localguard.fingerprint import model_fingerprint

    _check_options(opts)
    model, tokenizer = _load(opts)
    convs = load_conversations(opts.data, tokenizer, opts.max_seq_length)
    train, valid = split(convs, opts.valid_fraction, opts.seed)
    check_both_classes(valid, f"{opts.data} (validation split)")
    task_train, task_valid = _task_split(opts, tokenizer)
    train = train + task_train
    work = runs.prepare(opts.out, opts.describe(), resume, force)
    rule = _cls_rule(opts)
    cls = ht.embedding_mean(model) if rule else None
    start = warm_start(train, opts.mode, opts.seed)
    with runs.progress_bar(len(start), "head features") as bar:
        states_of = ht.state_reader(cls, rule)
        head = ht.fit_probe_head(model, start, opts.seed, bar.update, states_of)
    head.cls = cls
    if rule:
        head.metadata["cls"] = rule.describe()
    adapter_config = None
    if opts.mode != "probe":
        head, adapter_config = _train_joint(opts, model, head, train, work)
    task_traces = ht.teacher_traces(model, head, task_valid)
    teacher = ht.teacher_traces(model, head, valid)
    report = calibrate(head, teacher, valid, opts.target_fpr, task_traces)
    if rule:  # what the guard sees: the windows its own verdicts give, not the labels'
        report["stream_teacher_windows"] = report["stream"]
        report["stream"] = stream_metrics(head, ht.traces(model, head, valid), valid)
    head.metadata.update(
        mode=opts.mode,
        target_fpr=opts.target_fpr,
        metrics={k: v for k, v in report.items() if k != "reliability"},
        reliability=report["reliability"],
        positions=POSITIONS[opts.mode],
    )
    manifest = {
        "command": "head train",
        "localguard": __version__,
        "model_path": str(Path(opts.model).resolve()),
        "model_fingerprint": model_fingerprint(opts.model),
        "base_adapter": str(opts.adapter) if opts.adapter else None,
        "adapter": "adapters.safetensors" if adapter_config else None,
        "data": _file_record(opts.data),
        "task_data": _file_record(opts.task_data),
        "options": opts.describe(),
        "examples": {
            "train": len(train),
            "valid": len(valid),
            "task_train": len(task_train),
            "task_valid": len(task_valid),
        },
    }

    write_head(head, work, manifest)
    reliability_png(work / RELIABILITY_FILE, report["reliability"])
    if adapter_config is not None:
        lt.save_adapters(model, adapter_config, work)
    write_json(work / "report.json", report)
    runs.finish(work, opts.out, lt.CHECKPOINT)
    return report


def format_report(report: dict) -> str:
    """The calibration report as a few readable lines."""
    lines = [f"target FPR {report['target_fpr']:.0%} (validation split)"]
    for name in ("query", "response"):
        r = report[name]
        lines.append(
            f"{name:<9} AUROC {r['auroc']:.3f}  F1 {r['f1']:.3f}  FPR {r['fpr']:.1%}  "
            f"TPR {r['tpr']:.1%}  ({r['n']} units)"
        )
    st = report["stream"]
    lines.append(
        f"stream    query AUROC {st['query_auroc']:.3f}  response token AUROC "
        f"{st['response_token_auroc']:.3f}  delay median {st['delay_median']:.0f} "
        f"p90 {st['delay_p90']:.0f} tokens  missed {st['missed']:.1%}  "
        f"benign replies flagged {st['benign_flagged']:.1%}"
    )
    if "task" in report:
        t = report["task"]
        lines.append(
            f"task      {t['n']} held-out prompts flagged {t['query_flagged']:.1%} "
            f"({t['query_flagged_safety_only']:.1%} at the safety data's own threshold), "
            f"replies flagged {t['replies_flagged']:.1%}"
        )
    return "\n".join(lines)


# --- score -------------------------------------------------------------------------------------


def score_conversation(
    model_dir: Path, head_dir: Path, prompt: str, response: str = "", adapter: Path | None = None
) -> dict:
    """The per-token trace of one conversation: tokens with query and response probabilities.

    Without a response, the model's own greedy reply is scored. A stream head uses the adapter
    saved with it unless another is given.
    """
    from localguard.backends.mlx import head_train as ht
    from localguard.backends.mlx.guarded import load_with_head
    from localguard.conversations import encode_conversation
    from localguard.encoding import hf_tokenizer
    from localguard.stats import sigmoid

    model, tokenizer, head = load_with_head(Path(model_dir), Path(head_dir), adapter)
    if not response:
        from localguard.backends.mlx.scratch import greedy_answers

        response = greedy_answers(model, tokenizer, [prompt])[0]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    row = {"messages": messages, "query_label": 0, "response_label": 0}
    conv = encode_conversation(tokenizer, row, 1 << 20)
    trace = ht.traces(model, head, [conv])[0]
    q, r = head.index("query"), head.index("response")
    pieces = [hf_tokenizer(tokenizer).decode([t]) for t in conv.tokens[conv.start - 1 :]]
    probs = sigmoid(trace)
    thresholds = sigmoid(head.thresholds)
    return {
        "prompt": prompt,
        "response": response,
        "query": {
            "probability": float(probs[0, q]),
            "threshold": float(thresholds[q]),
            "flagged": bool(trace[0, q] >= head.thresholds[q]),
        },
        "response_threshold": float(thresholds[r]),
        "tokens": [
            {
                "text": text,
                "response": float(p[r]),
                "flagged": bool(logit[r] >= head.thresholds[r]),
            }
            for text, p, logit in zip(pieces[1:], probs[1:], trace[1:], strict=True)
        ],
    }


def format_trace(trace: dict) -> str:
    """score_conversation's trace for a terminal: the query verdict, then each reply token
    colored by the response output (green: far below the threshold, yellow: within a factor of
    two, red: flagged), then the count of flagged tokens."""
    q = trace["query"]
    verdict = click.style("UNSAFE", fg="red", bold=True) if q["flagged"] else "safe"
    lines = [f"query: {verdict}  p={q['probability']:.3f} (threshold {q['threshold']:.3f})"]
    threshold = trace["response_threshold"]
    colored = []
    for token in trace["tokens"]:
        p = token["response"]
        color = "red" if token["flagged"] else "yellow" if p >= threshold / 2 else "green"
        colored.append(click.style(token["text"], fg=color))
    flagged = sum(t["flagged"] for t in trace["tokens"])
    count = f"response: {flagged} of {len(trace['tokens'])} tokens flagged"
    lines.append("".join(colored))
    lines.append(f"{count} (threshold {threshold:.3f})")
    return "\n".join(lines)
