"""A training stage's working folder: OUT.partial until it has finished, then OUT.

The options go to OUT.partial/options.json, so `--resume` can refuse different ones; metric
lines go to metrics.jsonl and are trimmed back to the checkpoint a resumed run starts from.
The finished folder replaces OUT in one rename, so OUT is never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from localguard.errors import InputError
from localguard.files import write_json, write_text

METRICS_FILE = "metrics.jsonl"


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def prepare(out: Path, options: dict, resume: bool, force: bool) -> Path:
    """The working folder OUT.partial: fresh, or the interrupted run's when resuming. An
    interrupted run with other options is refused, unless force (as the recipe runner passes:
    a recipe whose settings changed makes it stale) starts over."""
    work = partial_dir(out)
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    if work.exists() and not resume:
        raise InputError(
            f"{work} holds an interrupted run; pass --resume to continue it or delete the folder"
        )
    if resume and work.exists():
        saved = json.loads((work / "options.json").read_text())
        changed = sorted(k for k, v in options.items() if saved.get(k) != v)
        if not changed:
            return work
        if not force:
            raise InputError(f"--resume with other options than the interrupted run: {changed}")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(work / "options.json", options)
    return work


def trim_metrics(work: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a resumed run starts from."""
    path = work / METRICS_FILE
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in keep))


def read_appended(path: Path) -> list[dict]:
    """The JSON lines a killed run appended to path, oldest first. Unlike
    localguard.data.read_jsonl this stops quietly at a cut-short last line."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


class MetricsLog:
    """Appends one JSON line per step and keeps the last one."""

    def __init__(self, work: Path) -> None:
        self.path = work / METRICS_FILE
        self.last: dict = {}

    def __call__(self, metrics: dict) -> None:
        self.last = dict(metrics)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics) + "\n")


def progress_bar(steps: int, label: str, visible: bool = True):
    return click.progressbar(
        length=steps,
        label=label,
        file=sys.stderr,
        hidden=not visible,
        show_pos=True,
        show_eta=True,
        width=20,
    )


def finish(work: Path, out: Path, checkpoint: str) -> Path:
    """Drop the checkpoint (a folder, or a file of partial results) and move the finished
    folder to OUT."""
    path = work / checkpoint
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    return out
