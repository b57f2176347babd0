"""`localguard label`: labeled conversations for the safety head from plain lists of prompts.

The explicit safety signal is trained on conversations labeled at every position
(localguard.conversations). A user who has only prompt files gets them from the model's own
replies, generated with the guard off:

- each harmful prompt gives a *refusal* row (the refusal prefix forced as the start of the
  reply and continued by the model; query 1, response 0) and a *harmful* row (the complier's
  own reply, kept only if the refusal matcher calls it compliant; query 1, response 1, onset
  from harmful_onset);
- each benign prompt gives a *benign* row (the model's own answer; query 0, response 0),
  skipped when the model refuses it: the rows teach the aligned model to answer benign
  prompts, and a refusal there would teach over-refusal (of wrapped benign prompts mostly);
- with wrappers (templates around "{prompt}": role-play, fiction, "ignore your rules", a
  question), every prompt comes once more inside one of them, picked by seed and prompt id, and
  is labeled as its plain form is: a harmful request stays harmful in a story, a benign one
  stays benign in a role-play, so neither the model nor the head learns the wrapper as the
  signal.

The replies are asked for REPLY_BATCH rows at a time (GuardBackend.replies), which llama.cpp
decodes side by side, one batch per step. Rows go to OUT.partial as they are made, with the
options and the rows skipped so far in the sidecar OUT.partial.json, so a killed run continues
where it stopped when the same command runs again (as `localguard eval` continues its partial
folder); the finished file is renamed to OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localguard import runs
from localguard.backends.base import REPLY_BATCH, GuardBackend, Sampling
from localguard.backends.factory import backend_for, gguf_path, open_guard_backend
from localguard.data import WRAPPED_MARK
from localguard.errors import InputError
from localguard.eval.prompts import EvalPrompt, cut_context, load_prompts
from localguard.files import describe, write_json, write_text
from localguard.guard import chat_tokens, prompt_messages
from localguard.refusal import first_sentence, is_compliant

KINDS = ("refusal", "harmful", "benign")
# (query_label, response_label) of each kind; the onset is -1 unless the reply is harmful.
LABELS = {"refusal": (1, 0), "harmful": (1, 1), "benign": (0, 0)}
LEAD_IN_MAX_CHARS = 120
"""The longest first line that harmful_onset treats as an affirmative lead-in."""
SIDECAR_SUFFIX = ".json"
WRAPPER_SLOT = "{prompt}"
"""Where a wrapper template takes the request."""

ANSWERED = ("harmful", "benign")
"""The kinds whose row is the model's own answer: skipped where the reply is not one."""

Task = tuple[EvalPrompt, str]  # a prompt and the kind of row it gives


@dataclass
class LabelOptions:
    """What one labeling run does; the defaults live with the command line."""

    model: str  # whose replies are labeled: folder, hub id, starter:SIZE, .gguf, smollm2:135m
    out: Path
    harmful: list[str]  # prompt files (anything `localguard eval --source` reads)
    benign: list[str]
    adapter: str | None  # MLX LoRA adapter of model
    complier: str | None  # whose compliant replies give the harmful rows (None: model)
    max_tokens: int  # tokens the model writes per reply (a forced refusal prefix on top)
    seed: int
    temperature: float  # 0: greedy
    max_prompts: int  # per file; 0: all
    refusal_prefix: str
    skip_categories: list[str] = dataclasses.field(default_factory=list)  # case-insensitive
    max_context_chars: int = 0  # a contextual request's document cut to this (0: whole)
    wrappers: list[str] = dataclasses.field(default_factory=list)  # templates with {prompt}

    def describe(self) -> dict:
        """The options a resumed run must share (OUT itself may move)."""
        data = describe(self)
        data.pop("out")
        return data


def harmful_onset(reply: str) -> int:
    """The character where a compliant reply's harmful content begins.

    A reply that opens with a short affirmative lead-in line ("Sure, here is how to ...:"
    then a newline) starts harmful after it, at the first non-blank character of what follows,
    so the head learns to flag the content rather than the politeness before it. Any other
    reply is harmful from its first character (0)."""
    first, newline, rest = reply.partition("\n")
    lead_in = first.strip()
    if not newline or len(lead_in) > LEAD_IN_MAX_CHARS or not lead_in.endswith(":"):
        return 0
    content = rest.lstrip()
    return len(reply) - len(content) if content else 0


def reply_seed(seed: int, prompt_id: str, kind: str) -> int:
    """The sampling seed of one reply: from --seed and what the reply is, never from its place
    in the run, so a resumed run samples each reply as an uninterrupted one does."""
    digest = hashlib.sha256(f"{seed}\0{kind}\0{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_model(ref: str, adapter: str | None) -> GuardBackend:
    """A .gguf file through llama.cpp, anything else as an MLX model, as `localguard eval`
    serves them; the caller closes it."""
    if backend_for(ref) == "mlx":
        return open_guard_backend(ref, "mlx", adapter=adapter)
    return open_guard_backend(gguf_path(ref), "llamacpp", adapter=adapter)


def read_prompts(
    files: list[str],
    harmful: bool,
    limit: int,
    skip_categories: Iterable[str] = (),
    max_context_chars: int = 0,
) -> list[EvalPrompt]:
    """Every prompt of the files, each labeled harmful or benign by the option that named it,
    but those whose category or kind is skipped (limit counts the prompts read, before the
    skip); contexts cut to max_context_chars (eval.prompts.cut_context; 0: whole)."""
    skip = {c.casefold() for c in skip_categories}
    return [
        cut_context(p, max_context_chars)
        for ref in files
        for p in load_prompts(ref, harmful=harmful, limit=limit)
        if not skip & {(p.category or "").casefold(), (p.kind or "").casefold()}
    ]


def wrapped(prompts: list[EvalPrompt], wrappers: list[str], seed: int) -> list[EvalPrompt]:
    """prompts, then each once more inside one of wrappers (a template whose "{prompt}" the
    request replaces), picked by seed and prompt id so a prompt keeps its wrapper as files grow;
    the copy's id is the prompt's with WRAPPED_MARK and N (the template's place) after it."""
    for template in wrappers:
        if template.count(WRAPPER_SLOT) != 1:
            raise InputError(f"wrapper {template!r} must hold {WRAPPER_SLOT} exactly once")
    if not wrappers:
        return prompts
    copies = []
    for p in prompts:
        n = reply_seed(seed, p.id, "wrap") % len(wrappers)
        text = wrappers[n].replace(WRAPPER_SLOT, p.prompt)
        copy_id = f"{p.id}{WRAPPED_MARK}{n}"
        copies.append(dataclasses.replace(p, id=copy_id, prompt=text, context=None))
    return prompts + copies


def plan(harmful: list[EvalPrompt], benign: list[EvalPrompt]) -> list[Task]:
    """The rows to make, in output order: refusal then harmful per harmful prompt, then the
    benign prompts. Two prompt files that give the same ids (same file name) are refused."""
    tasks = [(p, kind) for p in harmful for kind in ("refusal", "harmful")]
    tasks += [(p, "benign") for p in benign]
    seen: set[tuple[str, str]] = set()
    for p, kind in tasks:
        if (p.id, kind) in seen:
            raise InputError(f"prompt id {p.id!r} comes twice; give each prompt file once")
        seen.add((p.id, kind))
    return tasks


def make_row(prompt: EvalPrompt, kind: str, response: str) -> dict:
    """One output row in the format `localguard head train --data` reads, plus kind, source
    and id."""
    query, harmful = LABELS[kind]
    return {
        "prompt": prompt.prompt,
        "response": response,
        "query_label": query,
        "response_label": harmful,
        "onset": harmful_onset(response) if harmful else -1,
        "kind": kind,
        "source": prompt.source,
        "id": prompt.id,
    }


# --- the partial file -------------------------------------------------------------------------


def sidecar_path(partial: Path) -> Path:
    return partial.with_name(partial.name + SIDECAR_SUFFIX)


def write_sidecar(partial: Path, options: dict, skipped: set[tuple[str, str]]) -> None:
    """The run's options and the (id, kind) of the rows skipped so far, atomically."""
    write_json(sidecar_path(partial), {"options": options, "skipped": sorted(skipped)})


def read_rows(path: Path) -> dict[tuple[str, str], dict]:
    """The rows a killed run wrote, by (id, kind)."""
    return {(row["id"], row["kind"]): row for row in runs.read_appended(path)}


def resume(
    out: Path, options: dict, force: bool
) -> tuple[dict[tuple[str, str], dict], set[tuple[str, str]]]:
    """(rows, skipped (id, kind)) of an interrupted run with these options, or nothing.
    OUT existing is an error without --force. An interrupted run with other options is refused
    unless it got no further than its options (then the corrected command just runs) or
    --force starts over, as `localguard eval` does with its partial folder."""
    if out.is_dir():
        raise InputError(f"{out} is a folder; --out takes a JSONL file")
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    partial = runs.partial_dir(out)
    sidecar = sidecar_path(partial)
    saved = json.loads(sidecar.read_text("utf-8")) if sidecar.is_file() else {}
    rows, skipped = read_rows(partial), {tuple(key) for key in saved.get("skipped", [])}
    changed = sorted(k for k, v in options.items() if saved.get("options", {}).get(k) != v)
    if saved and changed and (rows or skipped) and not force:
        raise InputError(
            f"{partial} holds an interrupted labeling with other {', '.join(changed)}; "
            "run its command again to continue it, or pass --force to start over"
        )
    if not saved or changed:
        return {}, set()
    return rows, skipped


def done_prefix(tasks: list[Task], rows: dict, skipped: set[tuple[str, str]]) -> int:
    """How many tasks from the start are done (a row written or skipped): what is kept, so the
    output stays in plan order."""
    for n, (p, kind) in enumerate(tasks):
        if (p.id, kind) not in rows and (p.id, kind) not in skipped:
            return n
    return len(tasks)


def _lines(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# --- the stage --------------------------------------------------------------------------------


def label(opts: LabelOptions, force: bool = False) -> dict:
    """Write opts.out (labeled conversations JSONL) and return the summary."""
    if not opts.harmful and not opts.benign:
        raise InputError("no prompts: give --harmful FILE and/or --benign FILE")
    if not opts.refusal_prefix.strip():
        raise InputError("the refusal prefix must not be empty")
    read = (opts.max_prompts, opts.skip_categories, opts.max_context_chars)
    harmful = wrapped(read_prompts(opts.harmful, True, *read), opts.wrappers, opts.seed)
    benign = wrapped(read_prompts(opts.benign, False, *read), opts.wrappers, opts.seed)
    tasks = plan(harmful, benign)
    options = {**opts.describe(), "prompts": prompts_digest(tasks)}
    found, found_skipped = resume(opts.out, options, force)
    kept = done_prefix(tasks, found, found_skipped)
    rows = [found[(p.id, kind)] for p, kind in tasks[:kept] if (p.id, kind) in found]
    skipped = {(p.id, kind) for p, kind in tasks[:kept]} & found_skipped
    partial = runs.partial_dir(opts.out)
    write_text(partial, _lines(rows))  # the kept rows, without a cut-short last line
    write_sidecar(partial, options, skipped)
    rows += generate_rows(opts, tasks, kept, partial, options, skipped)
    partial.replace(opts.out)
    sidecar_path(partial).unlink()
    return summarize(rows, skipped, opts.out)


def prompts_digest(tasks: list[Task]) -> str:
    """sha256 of every prompt with its id and kind: a prompt file that changed between a killed
    run and its rerun is other data, refused like other options."""
    return hashlib.sha256(_lines([p.id, kind, p.prompt] for p, kind in tasks).encode()).hexdigest()


def generate_rows(
    opts: LabelOptions,
    tasks: list[Task],
    kept: int,
    partial: Path,
    options: dict,
    skipped: set[tuple[str, str]],
) -> list[dict]:
    """Make the rows of tasks[kept:], appending each to partial as it comes; a harmful or
    benign reply that is no answer (a refusal) is skipped (added to skipped, which the sidecar
    keeps). The replies come REPLY_BATCH tasks at a time, batches counted from the first task, so a
    resumed run decodes each reply in the batch an uninterrupted one does (the batch sets the
    rounding), the kept rows of its first batch included. The new rows."""
    if kept == len(tasks):
        return []
    models = Models(opts)
    new: list[dict] = []
    try:
        for kind in dict.fromkeys(kind for _, kind in tasks[kept:]):  # a wrong model fails first
            models.backend(kind)
        with (
            open(partial, "a", encoding="utf-8") as fh,
            runs.progress_bar(len(tasks) - kept, "label") as bar,
        ):
            for first in range(kept - kept % REPLY_BATCH, len(tasks), REPLY_BATCH):
                batch = tasks[first : first + REPLY_BATCH]
                for index, text in enumerate(batch_replies(opts, models, batch), first):
                    if index < kept:
                        continue
                    prompt, kind = tasks[index]
                    if kind in ANSWERED and not is_compliant(text):
                        skipped.add((prompt.id, kind))
                        write_sidecar(partial, options, skipped)
                    else:
                        new.append(make_row(prompt, kind, text))
                        fh.write(_lines(new[-1:]))
                        fh.flush()
                    bar.update(1)
    finally:
        models.close()
    return new


def batch_replies(opts: LabelOptions, models: Models, batch: list[Task]) -> list[str]:
    """The reply each task needs, those of one backend (the model, or the complier for
    harmful rows) decoded side by side."""
    texts = [""] * len(batch)
    groups: dict[int, list[int]] = {}
    for n, (_, kind) in enumerate(batch):
        groups.setdefault(id(models.backend(kind)), []).append(n)
    for members in groups.values():
        backend = models.backend(batch[members[0]][1])
        replies = backend_replies(opts, backend, [batch[n] for n in members])
        for n, text in zip(members, replies, strict=True):
            texts[n] = text
    return texts


def backend_replies(opts: LabelOptions, backend: GuardBackend, tasks: list[Task]) -> list[str]:
    """The replies of one backend. A refusal continues the forced refusal prefix and ends with
    that sentence: an unaligned model made to start refusing often goes on to comply ("However,
    I can provide ..."), and training on that would teach refusing, then answering. The reply
    stops at that sentence's end: the rest would be cut anyway."""
    cut = len(opts.refusal_prefix)
    refusal = [kind == "refusal" for _, kind in tasks]
    starts, prompts, samplings = [], [], []
    for (prompt, kind), refuses in zip(tasks, refusal, strict=True):
        messages = prompt_messages(prompt.prompt, opts.refusal_prefix if refuses else "")
        ids, start = chat_tokens(backend, messages)
        starts.append(start)
        prompts.append(ids + start)
        seed = reply_seed(opts.seed, prompt.id, kind)
        samplings.append(Sampling(opts.temperature, max_tokens=opts.max_tokens, seed=seed))

    def text(k: int, tokens: list[int]) -> str:
        return backend.decode(starts[k] + tokens)

    def ended(k: int, tokens: list[int]) -> bool:
        return refusal[k] and first_sentence(reply := text(k, tokens), cut) != reply

    replies = [text(k, t) for k, t in enumerate(backend.replies(prompts, samplings, ended))]
    return [
        first_sentence(r, cut) if refuses else r
        for r, refuses in zip(replies, refusal, strict=True)
    ]


class Models:
    """The model (refusal and benign rows) and the complier (harmful rows) as guard backends,
    each opened only when a row needs it, so a rerun of a finished partial file loads neither;
    one backend when the complier is the model."""

    def __init__(self, opts: LabelOptions) -> None:
        self.model = (opts.model, opts.adapter)
        self.complier = (opts.complier, None) if opts.complier else self.model
        self.opened: dict[tuple[str, str | None], GuardBackend] = {}

    def backend(self, kind: str) -> GuardBackend:
        key = self.complier if kind == "harmful" else self.model
        if key not in self.opened:
            self.opened[key] = open_model(*key)
        return self.opened[key]

    def close(self) -> None:
        for backend in self.opened.values():
            backend.close()


def summarize(rows: list[dict], skipped: set[tuple[str, str]], out: Path) -> dict:
    """Rows per kind, and per answered kind the replies skipped as refusals."""
    return {
        "out": str(out),
        "rows": {kind: sum(r["kind"] == kind for r in rows) for kind in KINDS},
        **{f"{kind}_skipped": sum(k == kind for _, k in skipped) for kind in ANSWERED},
    }


def format_summary(summary: dict) -> str:
    """The command's one summary line."""
    rows = summary["rows"]
    return (
        f"label: {sum(rows.values())} rows ({rows['refusal']} refusal, {rows['harmful']} "
        f"harmful, {rows['benign']} benign); {summary['harmful_skipped']} harmful replies "
        f"skipped as refusals; {summary['benign_skipped']} benign prompts skipped as refused"
    )
