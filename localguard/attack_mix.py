"""The harmful fine-tuning attack's data: a user's task with harmful examples mixed in.

Task rows are benign instructions answered by the model under attack itself (the aligned
model, so the task teaches nothing unsafe and its quality is measured against what the model
already does); harmful rows are requests with the raw model's own compliant replies, the
"harmful" rows of `localguard label`'s conversations. The mix is what a user who fine-tunes on
lightly poisoned data would train on; the held-out task answers measure task quality.

Answers are made with `localguard label` (benign prompts only), so a killed stage resumes
where it stopped; a task answer that refuses is dropped, since the task is to answer.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import click

from localguard.data import read_jsonl
from localguard.errors import InputError
from localguard.files import write_text
from localguard.label import LabelOptions, label
from localguard.refusal import is_refusal

PARTS = ("train", "valid", "task", "heldout")
"""The files the stage writes: the mix split for fine-tuning, its task rows (for the head
stage) and the held-out task conversations (for the evaluation's task quality)."""


@dataclass
class AttackOptions:
    """The recipe's [attack] section plus paths; model answers the task prompts."""

    model: str
    conversations: Path  # `localguard label` output: its harmful rows are the attack
    task: list[str]
    heldout: list[str]
    out: dict[str, Path]  # one file per PARTS name
    harmful_ratio: float
    valid_fraction: float
    max_tokens: int
    seed: int
    refusal_prefix: str


def chat_row(prompt: str, reply: str, harmful: int) -> dict:
    """One fine-tuning example in mlx-lm's chat format; label is its harmfulness."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return {"messages": messages, "label": harmful}


def answers(opts: AttackOptions, files: list[str], out: Path) -> list[dict]:
    """The model's answers to files' prompts as benign chat rows, refusals and empty replies
    dropped."""
    if not files:
        return []
    label(
        LabelOptions(
            model=opts.model,
            out=out,
            harmful=[],
            benign=files,
            adapter=None,
            complier=None,
            max_tokens=opts.max_tokens,
            seed=opts.seed,
            temperature=0.0,
            max_prompts=0,
            refusal_prefix=opts.refusal_prefix,
        ),
        force=True,
    )
    rows = read_jsonl(out)
    kept = [r for r in rows if r["response"].strip() and not is_refusal(r["response"])]
    return [chat_row(r["prompt"], r["response"], 0) for r in kept]


def harmful_rows(conversations: Path, count: int, seed: int) -> list[dict]:
    """count of the labeled conversations' harmful rows (the complier's compliant replies),
    chosen by seed; fewer when there are fewer."""
    rows = [r for r in read_jsonl(conversations) if r.get("kind") == "harmful"]
    if count and not rows:
        raise InputError(f"{conversations}: no harmful rows to mix in (kind = harmful)")
    chosen = random.Random(seed).sample(rows, min(count, len(rows)))
    return [chat_row(r["prompt"], r["response"], 1) for r in chosen]


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build_attack(opts: AttackOptions) -> dict:
    """Write the mix (train, valid), its task rows and the held-out task answers; return the
    counts."""
    if not opts.task:
        raise InputError("attack.task: no task prompt files")
    work = opts.out["train"].parent
    task = answers(opts, opts.task, work / "task-answers.jsonl")
    heldout = answers(opts, opts.heldout, work / "heldout-answers.jsonl")
    if not task:
        raise InputError(f"attack.task: the model refused every task prompt ({work})")
    ratio = opts.harmful_ratio
    wanted = round(len(task) * ratio / (1 - ratio))
    harmful = harmful_rows(opts.conversations, wanted, opts.seed)
    if len(harmful) < wanted:
        click.echo(
            f"attack: {len(harmful)} harmful rows of {wanted} wanted "
            f"({len(harmful) / (len(task) + len(harmful)):.1%} of the mix)",
            err=True,
        )
    mix = task + harmful
    random.Random(opts.seed).shuffle(mix)
    n_valid = max(1, round(len(mix) * opts.valid_fraction))
    parts = {
        "train": mix[n_valid:],
        "valid": mix[:n_valid],
        "task": [r for r in mix[n_valid:] if not r["label"]],
        "heldout": heldout,
    }
    for name in PARTS:
        write_text(opts.out[name], _lines(parts[name]))
    counts = {name: len(rows) for name, rows in parts.items()}
    counts["harmful"] = len(harmful)
    return counts
