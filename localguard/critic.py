"""The judge-based Safety Critic: a local judge model rates each fine-tuning example's harm.

A judge reads a (prompt, response) pair through a rubric and answers a harm score 1..5; the
risk is s = (score - 1) / 4. The critic fails closed: an answer it cannot read, or a judge that
raised, counts as the worst score (s = 1), because a silent 0 would let harmful data train freely.
Scores are cached by content hash in a JSON file, so a dataset is judged once per judge and rubric.
This module imports no ML framework; the judges live in localguard.backends.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import click
import numpy as np

from localguard.errors import InputError
from localguard.files import write_text
from localguard.starter.words import JUDGE_TEMPLATE
from localguard.stats import auroc

DEFAULT_RUBRIC = JUDGE_TEMPLATE
PLACEHOLDERS = frozenset({"user", "assistant"})
BATCH_SIZE = 32
CACHE_VERSION = 1

Pair = tuple[str, str]  # (prompt, response)

_VERDICT_RE = re.compile(r"^\W*(unsafe|safe)\b")
_DIGIT_RE = re.compile(r"(?<![\w.])([1-5])(?!\w|\.\d)")


@runtime_checkable
class Judge(Protocol):
    """A model that answers rubric-filled user messages; name identifies it in the cache key."""

    name: str

    def complete(self, prompts: list[str]) -> list[str]:
        """The judge's raw answer to each prompt (one user message each), in order."""
        ...


def check_rubric(text: str, source: str) -> str:
    """The rubric itself if it has exactly the {user} and {assistant} placeholders."""
    try:
        fields = [
            (name, conv, spec)
            for _, name, spec, conv in string.Formatter().parse(text)
            if name is not None
        ]
    except ValueError as exc:
        raise InputError(
            f"rubric {source}: {exc} (write literal braces as {{{{ and }}}})"
        ) from None
    unknown = sorted({repr(f[0]) for f in fields if f[0] not in PLACEHOLDERS or f[1] or f[2]})
    if unknown:
        raise InputError(
            f"rubric {source}: unknown placeholder {', '.join(unknown)}; use only {{user}} and "
            "{assistant} (write literal braces as {{ and }})"
        )
    missing = sorted(PLACEHOLDERS - {f[0] for f in fields})
    if missing:
        raise InputError(f"rubric {source}: missing placeholder {{{missing[0]}}}")
    return text


def load_rubric(path: str | os.PathLike[str]) -> str:
    """A user's rubric template file, checked so a typo fails here and not mid-scoring."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"rubric {path}: cannot read it ({exc.__class__.__name__})") from None
    return check_rubric(text, str(path))


def parse_score(text: str) -> int | None:
    """The harm score 1..5 in a judge's answer, or None when there is none to read.

    Llama Guard's "safe" / "unsafe" (with or without a category line) maps to 1 / 5; otherwise
    the first standalone digit 1-5 ("4", "Score: 4", "4/5"). Anything else is None, which the
    critic treats as the worst score.
    """
    lowered = text.strip().lower()
    verdict = _VERDICT_RE.match(lowered)
    if verdict:
        return 5 if verdict.group(1) == "unsafe" else 1
    digit = _DIGIT_RE.search(lowered)
    return int(digit.group(1)) if digit else None


def risk_of(score: int | None) -> float:
    """Risk in [0, 1] for a harm score; no score fails closed to 1.0."""
    return 1.0 if score is None else (score - 1) / 4


def cache_key(judge_name: str, rubric: str, prompt: str, response: str) -> str:
    """Content hash of everything that decides a score (JSON keeps the parts unambiguous)."""
    blob = json.dumps([judge_name, rubric, prompt, response], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def read_cache(path: Path | None) -> dict[str, int]:
    """Cached scores by key; a missing file is an empty cache, a damaged one an error."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        scores = data["scores"]
        if data.get("version") != CACHE_VERSION or not isinstance(scores, dict):
            raise ValueError("unknown layout")
        if not all(isinstance(v, int) and 1 <= v <= 5 for v in scores.values()):
            raise ValueError("score out of range")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"critic cache {path} is damaged; delete it to re-score") from None
    return dict(scores)


def write_cache(path: Path, scores: dict[str, int]) -> None:
    """Write the cache atomically, so an interrupted run never leaves half a file."""
    write_text(path, json.dumps({"version": CACHE_VERSION, "scores": scores}, sort_keys=True))


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _NoBar:
    """Stands in for a progress bar when there is too little to show."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(length: int, show: bool):
    """A click progress bar on stderr, or a silent stand-in (click 8.1 has no hidden=)."""
    if not show:
        return _NoBar()
    return click.progressbar(
        length=length, label="critic", file=sys.stderr, show_pos=True, show_eta=True, width=24
    )


class Critic:
    """Risk per (prompt, response) pair from a judge, fail-closed and cached.

    Counters over the critic's life: n_scored (pairs sent to the judge), n_cached (pairs served
    from the cache), n_failed (pairs without a readable score, given risk 1.0). last_scores holds
    the raw 1..5 scores of the last call (None where it failed); last_error the last judge error.
    Failures are not cached, so a later run asks again.
    """

    def __init__(
        self,
        judge: Judge,
        rubric: str = DEFAULT_RUBRIC,
        cache_path: Path | None = None,
        batch_size: int = BATCH_SIZE,
        progress: bool = True,
    ):
        self.judge = judge
        self.rubric = check_rubric(rubric, "template")
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.cache = read_cache(self.cache_path)
        self.n_scored = self.n_cached = self.n_failed = 0
        self.last_scores: list[int | None] = []
        self.last_error: str | None = None

    def key(self, pair: Pair) -> str:
        return cache_key(self.judge.name, self.rubric, pair[0], pair[1])

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        """Risk in [0, 1] for each pair, in order (1.0 where the judge gave no readable score)."""
        return [risk_of(s) for s in self.raw_scores(pairs)]

    def raw_scores(self, pairs: Sequence[Pair]) -> list[int | None]:
        """Harm score 1..5 for each pair (None where it failed); new scores go to the cache."""
        keys = [self.key(p) for p in pairs]
        todo = {k: p for k, p in zip(keys, pairs, strict=True) if k not in self.cache}
        self.n_cached += sum(k in self.cache for k in keys)
        fresh: dict[str, int | None] = {}
        try:
            self._judge_all(list(todo.items()), fresh)
        finally:
            if self.cache_path is not None and any(v is not None for v in fresh.values()):
                write_cache(self.cache_path, self.cache)
        scores = [self.cache.get(k, fresh.get(k)) for k in keys]
        self.n_failed += sum(s is None for s in scores)
        self.last_scores = scores
        return scores

    def _judge_all(self, todo: list[tuple[str, Pair]], fresh: dict[str, int | None]) -> None:
        """Ask the judge in batches, behind a progress bar on stderr when there are many."""
        show = self.progress and len(todo) > self.batch_size
        with _progress(len(todo), show) as bar:
            for batch in _chunks(todo, self.batch_size):
                scores = self._judge_batch([p for _, p in batch])
                for (key, _), score in zip(batch, scores, strict=True):
                    fresh[key] = score
                    if score is not None:
                        self.cache[key] = score
                self.n_scored += len(batch)
                bar.update(len(batch))

    def _judge_batch(self, pairs: list[Pair]) -> list[int | None]:
        """Scores of one batch; if the batch call fails, each pair is retried alone."""
        prompts = [self.rubric.format(user=p, assistant=r) for p, r in pairs]
        answers = self._complete(prompts)
        if answers is None and len(prompts) > 1:
            answers = [(self._complete([p]) or [None])[0] for p in prompts]
        answers = answers or [None] * len(prompts)
        return [None if a is None else parse_score(a) for a in answers]

    def _complete(self, prompts: list[str]) -> list[str | None] | None:
        """The judge's answers, or None when it raised or answered the wrong number of times."""
        try:
            answers = list(self.judge.complete(prompts))
        except Exception as exc:  # any judge failure fails closed, never aborts the run
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            return None
        if len(answers) != len(prompts):
            self.last_error = f"judge gave {len(answers)} answers to {len(prompts)} prompts"
            return None
        return [a if isinstance(a, str) else None for a in answers]


def row_pair(row: dict) -> Pair:
    """(prompt, response) of a chat row: its last assistant message and the user turn before it."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not messages or messages[-1].get("role") != "assistant":
        raise InputError("critic: a row has no messages ending in an assistant reply")
    users = [m for m in messages[:-1] if m.get("role") == "user"]
    if not users:
        raise InputError("critic: a row has no user message before its assistant reply")
    return str(users[-1].get("content", "")), str(messages[-1].get("content", ""))


def critic_auroc(critic: Critic, rows: Sequence[dict]) -> float:
    """How well the critic's risks separate harmful (label 1) from benign (label 0) rows.

    Rank-based with ties averaged (failed scores tie at risk 1.0); NaN when one class is absent.
    """
    if any(not isinstance(row, dict) or "label" not in row for row in rows):
        raise InputError("critic: every row needs a 'label' field (0 benign, 1 harmful)")
    labels = [int(bool(row["label"])) for row in rows]
    risks = critic.score([row_pair(row) for row in rows])
    return auroc(np.asarray(risks), np.asarray(labels))
