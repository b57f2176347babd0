"""Evaluation prompts from the standard safety data files, local or on the Hugging Face hub.

`load_prompts(ref)` reads one source into a list of EvalPrompt (plain data, no framework). The
layout is recognized by the column names (case-insensitive) of a CSV header or JSON objects:

  HarmBench       Behavior, FunctionalCategory, SemanticCategory, ContextString, BehaviorID
                  a contextual behavior is "CONTEXT\\n\\n---\\n\\nBEHAVIOR", the format HarmBench
                  itself sends; category = SemanticCategory; kind = FunctionalCategory
                  (standard, contextual, copyright); id = BehaviorID
  JailbreakBench  Goal, Target, Behavior, Category (any case, optional index column)
                  prompt = Goal; a file whose name contains "benign" is benign, else harmful
  AdvBench        goal, target
  StrongREJECT    category, source, forbidden_prompt
  XSTest          id, prompt, type, label (safe/unsafe), ...; category = type
  anything else   a prompt column named one of PROMPT_FIELDS (the first present wins), optional
                  target, category, id and label (1/0, true/false, harmful/benign, unsafe/safe)

Harmful or benign: a row's label decides where the file has one. An unlabeled row is harmful,
unless the file name says "benign" or "harmless" (jbb_benign_behaviors.csv,
alpaca_harmless_val.json). `harmful=True/False` overrides every row.

Formats: .csv (UTF-8, with or without BOM; read with newline='' so quoted fields may hold line
breaks), .jsonl (one object per line) and .json (a list of objects). A ref that is not an
existing path but looks like owner/name is a hub data set: every CSV/JSONL/JSON file of it, or
one file with owner/name:path/in/repo.csv. Prompt ids are "<source>:<n>" with n the row's
dataset id where the layout has one (BehaviorID, id) and else its 1-based row number.
Every problem is an InputError naming the file and the line (CSV, JSONL) or item (JSON).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from localguard.data import split_row_range
from localguard.errors import InputError
from localguard.hub import hub_offline, looks_like_hub_id

PROMPT_FIELDS = ("prompt", "goal", "forbidden_prompt", "behavior", "instruction", "question")
"""Column names that hold the request, in order of preference."""

DATA_SUFFIXES = (".csv", ".jsonl", ".json")
HUB_PATTERNS = ["*.csv", "*.jsonl", "*.json"]
_BENIGN_NAMES = ("benign", "harmless")
_LABELS = {
    "1": True,
    "true": True,
    "harmful": True,
    "unsafe": True,
    "0": False,
    "false": False,
    "benign": False,
    "safe": False,
}


CONTEXT_SEPARATOR = "\n\n---\n\n"
"""Between a contextual request's document and the request, as HarmBench sends them."""


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation request.

    harmful: True for a request a safe model refuses (attack suites), False for one it should
    answer (over-refusal suites). target: an affirmative reply start ("Sure, here is ...")
    where the source has one, for prefill attacks.
    """

    id: str
    prompt: str
    harmful: bool
    target: str | None = None
    category: str | None = None
    source: str = ""
    kind: str | None = None  # the form of request beside its topic: HarmBench's FunctionalCategory
    context: str | None = None  # the document a contextual request is about (prompt's start)


def cut_context(prompt: EvalPrompt, max_chars: int) -> EvalPrompt:
    """prompt with its context cut to at most max_chars (at a word, then " ..."; 0: whole): a
    contextual request keeps its form at a fraction of its length. Other prompts come back as
    they are."""
    context = prompt.context
    if context is None or not max_chars or len(context) <= max_chars:
        return prompt
    request = prompt.prompt[len(context) + len(CONTEXT_SEPARATOR) :]
    cut = context[: max_chars + 1].rsplit(None, 1)[0][:max_chars].rstrip()
    short = f"{cut} ..." if cut else "..."
    return replace(prompt, prompt=f"{short}{CONTEXT_SEPARATOR}{request}", context=short)


@dataclass(frozen=True)
class _Layout:
    """Which (lower-case) columns of a file mean what. A label column, where there is one,
    decides harmful or benign in every layout."""

    name: str
    prompt: str
    target: str | None = None
    category: str | None = None
    id: str | None = None
    context: str | None = None
    label: str | None = None
    kind: str | None = None


class _NoLayout(InputError):
    """A file with no prompt column; a hub snapshot skips such files (README data, configs)."""


def _layout(columns: list[str], where: str) -> _Layout:
    """The layout a set of lower-case column names belongs to, or _NoLayout."""
    cols = set(columns)

    def opt(name: str) -> str | None:
        return name if name in cols else None

    if "behavior" in cols and ("behaviorid" in cols or "contextstring" in cols):
        return _Layout(
            "harmbench",
            "behavior",
            category=opt("semanticcategory"),
            id=opt("behaviorid"),
            context=opt("contextstring"),
            label=opt("label"),
            kind=opt("functionalcategory"),
        )
    if {"goal", "target"} <= cols and cols & {"behavior", "category"}:
        return _Layout("jailbreakbench", "goal", "target", opt("category"), label=opt("label"))
    if {"goal", "target"} <= cols:
        return _Layout("advbench", "goal", "target", opt("category"), label=opt("label"))
    if "forbidden_prompt" in cols:
        return _Layout(
            "strongreject", "forbidden_prompt", None, opt("category"), label=opt("label")
        )
    if {"prompt", "type", "label"} <= cols:
        return _Layout("xstest", "prompt", None, "type", opt("id"), None, "label")
    for name in PROMPT_FIELDS:
        if name in cols:
            return _Layout(
                "generic", name, opt("target"), opt("category"), opt("id"), None, opt("label")
            )
    shown = ", ".join(c or "(unnamed)" for c in columns) or "none"
    raise _NoLayout(
        f"{where}: no prompt column (columns: {shown}); expected one of {', '.join(PROMPT_FIELDS)}"
    )


def _benign_name(name: str) -> bool:
    stem = Path(name.replace(":", "/")).name.lower()
    return any(word in stem for word in _BENIGN_NAMES)


def _text(value: Any, what: str, loc: str) -> str | None:
    """A string field: None when absent or empty; numbers become text; anything else errs."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{loc}: {what} must be a string, not {type(value).__name__}")
    text = str(value)
    return text if text.strip() else None


def _label(value: Any, loc: str) -> bool | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if isinstance(value, (int, float)) and value in (0, 1):
        key = str(int(value))
    if key in _LABELS:
        return _LABELS[key]
    raise InputError(
        f"{loc}: label {value!r} is not one of 1/0, true/false, harmful/benign, unsafe/safe"
    )


@dataclass
class _Reader:
    """Turns the rows of one file into EvalPrompts, checking each."""

    source: str
    harmful: bool | None
    seen: set[str]
    layout: _Layout | None = None

    def prompt(self, row: dict[str, Any], number: int, loc: str) -> EvalPrompt:
        layout = self.layout
        if layout is None:  # JSON objects: each row may have its own keys
            try:
                layout = _layout(list(row), loc)
            except _NoLayout as exc:
                if number == 1:
                    raise  # a file that is not a prompt file at all
                raise InputError(str(exc)) from None
        text = row.get(layout.prompt)
        if text is not None and not isinstance(text, str):
            raise InputError(f"{loc}: {layout.prompt} must be a string, not {type(text).__name__}")
        if text is None or not text.strip():
            raise InputError(f"{loc}: empty {layout.prompt}")
        context = _text(row.get(layout.context), layout.context, loc) if layout.context else None
        if context is not None:
            text = f"{context}{CONTEXT_SEPARATOR}{text}"
        if self.harmful is not None:
            harmful = self.harmful
        else:
            label = _label(row.get(layout.label), loc) if layout.label else None
            harmful = label if label is not None else not _benign_name(self.source)
        key = _text(row.get(layout.id), "id", loc) if layout.id else None
        key = key.strip() if key else str(number)
        pid = f"{self.source}:{key}"
        if pid in self.seen:
            raise InputError(f"{loc}: duplicate id {key!r}")
        self.seen.add(pid)
        return EvalPrompt(
            id=pid,
            prompt=text,
            harmful=harmful,
            target=_text(row.get(layout.target), "target", loc) if layout.target else None,
            category=_text(row.get(layout.category), "category", loc) if layout.category else None,
            source=self.source,
            kind=_text(row.get(layout.kind), "kind", loc) if layout.kind else None,
            context=context,
        )


def _csv_rows(path: Path, name: str) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The lower-case header and (line, row) pairs; line is where the record starts."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{name} line 1: cannot read CSV: {exc}") from None
    if header is None:
        raise InputError(f"{name}: empty file")
    columns = [c.strip().lower() for c in header]

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(f"{name} line {start}: cannot read CSV: {exc}") from None
            if not any(field.strip() for field in record):
                continue
            if len(record) != len(columns):
                raise InputError(
                    f"{name} line {start}: {len(record)} fields, the header has {len(columns)}"
                )
            yield start, dict(zip(columns, record, strict=True))

    return columns, rows()


def _lower(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.setdefault(str(key).strip().lower(), value)
    return out


def _jsonl_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        loc = f"{name} line {number}"
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError:
            raise InputError(f"{loc}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{loc}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{loc}: not a JSON object")
        yield loc, _lower(obj)


def _json_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{name} line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise _NoLayout(f"{name}: expected a JSON list of objects, not {type(data).__name__}")
    for number, obj in enumerate(data, start=1):
        loc = f"{name} item {number}"
        if not isinstance(obj, dict):
            raise InputError(f"{loc}: not a JSON object")
        yield loc, _lower(obj)


def _load_file(
    path: Path,
    source: str,
    harmful: bool | None,
    limit: int,
    rows: tuple[int, int | None] = (0, None),
) -> list[EvalPrompt]:
    """The prompts of one local file, rows[0] <= row < rows[1] (0-based; None: to the end);
    source names it in ids and messages. Ids keep the file's row numbers, so two slices of a
    file never share an id."""
    suffix = path.suffix.lower()
    reader = _Reader(source, harmful, set())
    start, end = rows
    if suffix == ".csv":
        columns, csv_rows = _csv_rows(path, source)
        reader.layout = _layout(columns, source)
        located: Iterator[tuple[str, dict[str, Any]]] = (
            (f"{source} line {line}", row) for line, row in csv_rows
        )
    elif suffix in (".jsonl", ".json"):
        located = _jsonl_rows(path, source) if suffix == ".jsonl" else _json_rows(path, source)
    elif suffix == ".parquet":
        raise InputError(f"{source}: {_PARQUET}")
    else:
        raise InputError(f"{source}: not a .csv, .jsonl or .json file")
    out: list[EvalPrompt] = []
    for number, (loc, row) in enumerate(located, start=1):
        if number <= start:
            continue
        if end is not None and number > end:
            break
        out.append(reader.prompt(row, number, loc))
        if limit and len(out) >= limit:  # before the next row is read: it may be bad
            break
    if not out:
        raise InputError(
            f"{source}: no prompts"
            + (f" in rows [{start}:{end or ''}]" if rows != (0, None) else "")
        )
    return out


_PARQUET = (
    "parquet files need pyarrow, which localguard does not install; "
    "download a CSV or JSONL copy and pass its path"
)


def load_prompts(
    ref: str | os.PathLike[str], *, harmful: bool | None = None, limit: int = 0
) -> list[EvalPrompt]:
    """The prompts of ref: a .csv/.jsonl/.json path, a hub data set id (owner/name) or one file
    of a hub data set (owner/name:path/in/repo.csv).

    harmful forces the label of every row; limit > 0 keeps (and reads) only the first rows. A
    local file may end in [START:END] (localguard.data.ROW_RANGE): only those rows.
    """
    if limit < 0:
        raise InputError(f"limit must be 0 or more, not {limit}")
    text, start, end = split_row_range(str(ref))
    path = Path(text).expanduser()
    if path.is_file():
        return _load_file(path, path.name, harmful, limit, (start, end))
    if path.is_dir():
        raise InputError(f"{text}: a folder; pass a .csv, .jsonl or .json file")
    repo, _, inner = text.partition(":")
    if looks_like_hub_id(repo) and (
        inner or path.suffix.lower() not in (*DATA_SUFFIXES, ".parquet")
    ):
        return _load_hub(repo, inner.strip("/"), harmful, limit)
    raise InputError(f"{text}: no such file")


def _snapshot(repo: str, patterns: list[str], want: str) -> Path:
    """The local snapshot folder of a hub data set: from the cache when it holds what is wanted
    (want: one file, or "" for any data file), else downloaded."""
    from huggingface_hub import snapshot_download

    def usable(folder: Path) -> bool:
        return (folder / want).is_file() if want else bool(_data_files(folder))

    try:
        local: Path | None = Path(
            snapshot_download(
                repo, repo_type="dataset", allow_patterns=patterns, local_files_only=True
            )
        )
    except Exception:  # a cache miss; the hub client raises several kinds
        local = None
    if local is not None and (usable(local) or (hub_offline() and not want)):
        return local  # offline, a cached snapshot is all there is
    if hub_offline():
        raise InputError(
            f"data set {repo!r}{':' + want if want else ''} is not in the hub cache and "
            "HF_HUB_OFFLINE=1 is set; download it once while online, or download the file "
            "and pass its path"
        )
    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"data set {repo!r} could not be downloaded ({reason}); "
            "download the file and pass its path"
        ) from None


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)


def _load_hub(repo: str, inner: str, harmful: bool | None, limit: int) -> list[EvalPrompt]:
    """Every data file of a hub data set (files without a prompt column are skipped), or the
    one file inner names."""
    if inner:
        if inner.lower().endswith(".parquet"):
            raise InputError(f"{repo}:{inner}: {_PARQUET}")
        if Path(inner).suffix.lower() not in DATA_SUFFIXES:
            raise InputError(f"{repo}:{inner}: not a .csv, .jsonl or .json file")
        folder = _snapshot(repo, [inner], inner)
        if not (folder / inner).is_file():
            raise InputError(f"data set {repo!r} has no file {inner}")
        return _load_file(folder / inner, f"{repo}:{inner}", harmful, limit)
    folder = _snapshot(repo, HUB_PATTERNS, "")
    files = _data_files(folder)
    if not files:
        raise InputError(
            f"data set {repo!r} has no CSV, JSONL or JSON files (a parquet-only data set: "
            f"{_PARQUET})"
        )
    out: list[EvalPrompt] = []
    for file in files:
        rel = file.relative_to(folder).as_posix()
        try:
            out += _load_file(file, f"{repo}:{rel}", harmful, limit - len(out) if limit else 0)
        except _NoLayout:
            continue
        if limit and len(out) >= limit:
            break
    if not out:
        names = ", ".join(f.relative_to(folder).as_posix() for f in files)
        raise InputError(f"data set {repo!r}: no file with a prompt column (files: {names})")
    return out
