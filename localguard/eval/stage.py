"""`localguard eval`'s one entry point: every suite on every target, judged, written, resumable.

Every reply of a target with a safety head goes through localguard.guard.generate, so with the
guard off it is decoded exactly as with it on, minus the interventions. A target without a head
(nothing a guard could read) on a backend that decodes side by side gets REPLY_BATCH replies
at a time from GuardBackend.replies instead, batches counted from its first case, so a resumed
run decodes each reply in the batch an uninterrupted one does.

Each reply is generated once and read by every judge: one record per judge. Results are
appended to OUT.partial/results.partial.jsonl as they come, so a killed run resumes where it
stopped (a reply some judges had not yet decided is judged, not generated, again); the
finished folder holds results.jsonl, summary.json, report.md and the plots
(localguard.eval.report, localguard.eval.plots). The task suite generates nothing: it feeds
each reference reply and counts the target's correct next-token guesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import click
import numpy as np

from localguard import runs
from localguard.backends.base import REPLY_BATCH, GuardBackend, Sampling
from localguard.errors import InputError
from localguard.eval.judges import JUDGES, Judge, deciders, judge_case, make_judges
from localguard.eval.options import EvalOptions, Target
from localguard.eval.prompts import EvalPrompt
from localguard.eval.report import format_table, write_report
from localguard.eval.suites import (
    Case,
    OwnPrefill,
    build_cases,
    complier_starts,
    prompt_sets,
    record_key,
    runs_suite,
    task_cases,
)
from localguard.eval.summary import TASK, judge_of, summarize
from localguard.eval.targets import attack_targets, open_target
from localguard.files import clean_json, temporary_name, write_json
from localguard.guard import GuardResult, GuardSettings, chat_tokens, generate, prompt_messages
from localguard.recipe import ATTACK_SUITES, EVAL_SUITES

PARTIAL_RESULTS = "results.partial.jsonl"
TASK_JUDGE = "next-token"  # what decides the task suite: the target's argmax, teacher-forced


def evaluate(opts: EvalOptions, resume: bool = True, force: bool = False) -> dict:
    """Run every suite on every target into opts.out; the summary (also in summary.json)."""
    _check(opts)
    work = _prepare(opts, resume, force)
    sets = prompt_sets(opts)
    if not sets[0] and any(s in ATTACK_SUITES or s == "finetune_attack" for s in opts.suites):
        raise InputError("no harmful prompts: give --heldout or a --source with harmful rows")
    records, done = read_partial(work / PARTIAL_RESULTS)
    if (work / PARTIAL_RESULTS).is_file():
        # rewritten without a cut-short last line, which the next append would run into
        _write_records(work / PARTIAL_RESULTS, records)
    judges = make_judges(opts)  # a bad judge model fails before the complier's replies
    own = _own_prefill(opts, sets[0], work)
    targets = list(opts.targets)
    if "finetune_attack" in opts.suites:
        targets += attack_targets(opts.training, work, opts.seed)
    plain_suites = [s for s in opts.suites if s != "finetune_attack"]
    with open(work / PARTIAL_RESULTS, "a", encoding="utf-8") as fh:

        def write(record: dict) -> None:
            record = clean_json(record)
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            records.append(record)

        for target in targets:
            suites = [target.suite] if target.suite else plain_suites
            cases = [c for s in suites for c in build_cases(opts, s, sets, own and own.starts)]
            run_target(target, cases, opts, judges, done, write)
    described = [t.describe() for t in targets]
    summary = summarize(records, described, [j.name for j in judges], opts.apart)
    summary["options"] = opts.describe()
    if own is not None:
        summary["long_prefill"] = own.describe()
    _write_records(work / "results.jsonl", records)
    write_json(work / "summary.json", clean_json(summary))
    write_report(work, records, described, summary)
    runs.finish(work, opts.out, PARTIAL_RESULTS)
    click.echo(format_table(summary))
    return summary


def _check(opts: EvalOptions) -> None:
    unknown = [s for s in opts.suites if s not in EVAL_SUITES]
    if unknown:
        raise InputError(f"unknown suite {unknown[0]!r}; known: {', '.join(EVAL_SUITES)}")
    _check_judges(opts.judge)
    if not opts.targets:
        raise InputError("nothing to evaluate: give a model")
    if "finetune_attack" in opts.suites and opts.training is None:
        raise InputError("the finetune_attack suite needs an MLX model and attack mixes")
    if "utility" in opts.suites and opts.heldout is None:
        raise InputError("the utility suite needs a starter world's held-out sets (--heldout DIR)")
    if opts.complier and "prefill" not in opts.suites:
        raise InputError("eval.complier (--complier) runs the long prefill: add the prefill suite")
    if TASK in opts.suites:
        task_cases(opts)  # a missing or malformed file fails here, before any model work
    names = [t.name for t in opts.targets]
    if len(set(names)) != len(names):
        raise InputError(f"two targets share a name: {names}")


def _prepare(opts: EvalOptions, resume: bool, force: bool) -> Path:
    """OUT.partial for this run. An interrupted evaluation with these options is continued;
    one that got no further than its options (it stopped at a missing head or a bad source,
    say) is started over, so the corrected command just runs; one with other options and
    results is kept unless --force starts over (eval has no --resume: it always continues)."""
    work = runs.partial_dir(opts.out)
    if work.is_dir() and resume:
        saved_file = work / "options.json"
        saved = json.loads(saved_file.read_text("utf-8")) if saved_file.is_file() else {}
        changed = sorted(k for k, v in opts.describe().items() if saved.get(k) != v)
        if changed and not (force or _nothing_done(work)):
            raise InputError(
                f"{work} holds an interrupted evaluation with other {', '.join(changed)}; "
                "run its command again to continue it, or pass --force to start over"
            )
        if changed:
            shutil.rmtree(work)
    return runs.prepare(opts.out, opts.describe(), resume, force)


def _nothing_done(work: Path) -> bool:
    """Whether an interrupted run's folder holds nothing but its options (and an empty results
    file): no reply written and no attack adapter trained."""
    for entry in work.iterdir():
        if entry.name == "options.json":
            continue
        if entry.name == PARTIAL_RESULTS and entry.is_file() and not entry.stat().st_size:
            continue
        return False
    return True


def _own_prefill(opts: EvalOptions, harmful: list[EvalPrompt], work: Path) -> OwnPrefill | None:
    """The long prefill's starts when a complier is set and the prefill suite runs."""
    if not opts.complier or "prefill" not in opts.suites:
        return None
    return complier_starts(opts, [p for p in harmful if runs_suite(opts, p, "prefill")], work)


def _check_judges(names: Sequence[str]) -> None:
    """At least one known attack-success judge, none twice (a judge's records are told
    apart by its name)."""
    key = "eval.judge (--judge)"
    if not names:
        raise InputError(f"{key} is empty: name at least one of {', '.join(JUDGES)}")
    unknown = [n for n in names if n not in JUDGES]
    if unknown:
        raise InputError(f"{key} must be one of {', '.join(JUDGES)}, not {unknown[0]!r}")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise InputError(f"{key} names {twice[0]!r} twice")


def read_partial(path: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """The records a killed run wrote, and per generation key the records of that generation
    (one per judge that decided it)."""
    records = runs.read_appended(path)
    done: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        done[record_key(r["target"], r["suite"], r["attack"], r["prompt_id"])].append(r)
    return records, dict(done)


def _decided(case: Case, judges: Sequence[Judge], have: list[dict]) -> bool:
    """Whether a killed run wrote case's records of every judge that decides it."""
    named = {judge_of(r) for r in have}
    return bool(have) and all(j.name in named for j in deciders(case, judges))


def run_target(
    target: Target,
    cases: Sequence[Case],
    opts: EvalOptions,
    judges: Sequence[Judge],
    done: dict[str, list[dict]],
    write: Callable[[dict], None],
) -> None:
    """Generate each case of target once and write(record) one record per judge that decides
    it. A case a killed run already generated is not generated again: the judges it still
    lacks read the reply its records hold."""
    todo = [(i, c, done.get(c.key(target.name), [])) for i, c in enumerate(cases)]
    todo = [(i, c, have) for i, c, have in todo if not _decided(c, judges, have)]
    if not todo:
        return
    backend = open_target(target, opts.guard) if any(not have for *_, have in todo) else None
    settings = dataclasses.replace(opts.guard, mode=target.guard)
    batched = backend is not None and backend.batches_replies and not backend.head.names
    made: dict[int, dict] = {}  # batched: the reply records of the current batch, by case index
    with runs.progress_bar(len(todo), f"{target.name:<24}") as bar:
        for index, case, have in todo:
            if have:
                write_verdicts(case, judges, have[0], write, {judge_of(r) for r in have})
            elif case.metric == TASK:
                write(task_record(target.name, case, backend))
            elif batched:
                if index not in made:
                    made = batch_generations(target.name, cases, index, backend, opts.sampling)
                write_verdicts(case, judges, made[index], write)
            else:
                sampling = _sampling(opts.sampling, case, index, backend)
                reply_record = generation(target.name, case, backend, settings, sampling)
                write_verdicts(case, judges, reply_record, write)
            bar.update(1)
    if backend is not None:
        backend.close()


def _case_fields(target: str, case: Case, judge: str | None) -> dict:
    """What every record of a case starts with: which target, suite, attack and prompt (hit
    null until a judge decides, or for good in the task suite)."""
    return {
        "target": target,
        "suite": case.suite,
        "attack": case.attack,
        "metric": case.metric,
        "hit": None,
        "judge": judge,
        "prompt_id": case.prompt.id,
        "source": case.prompt.source,
        "prompt": case.text,
    }


def generation(
    target: str, case: Case, backend: GuardBackend, settings: GuardSettings, sampling: Sampling
) -> dict:
    """One reply of target to case as a record whose verdict is still to come (hit, judge
    and verdict are filled in per judge by write_verdicts)."""
    prefill, result = reply(backend, case, settings, sampling)
    guard = guard_record(result, bool(backend.head.names))
    return reply_record(target, case, prefill, result.text, result.finish, guard, sampling)


def reply_record(
    target: str,
    case: Case,
    prefill: str,
    output: str,
    finish: str,
    guard: dict | None,
    sampling: Sampling,
) -> dict:
    """A reply as a record, verdict to come."""
    return {
        **_case_fields(target, case, judge=None),
        "prefill": prefill or None,
        "output": output,
        "verdict": None,
        "finish": finish,
        "guard": guard,
        "sampling": dataclasses.asdict(sampling),
    }


def batch_generations(
    target: str, cases: Sequence[Case], index: int, backend: GuardBackend, base: Sampling
) -> dict[int, dict]:
    """The reply records of every generated case in the REPLY_BATCH cases that hold cases[index]
    (decoded whole, so a resumed run rounds as an uninterrupted one), by case index: what
    generate gives with the guard off (the forced start counted against max_tokens, the end of
    turn left out, finish "eos" or "length"), decoded side by side by GuardBackend.replies."""
    first = index - index % REPLY_BATCH
    last = min(first + REPLY_BATCH, len(cases))
    batch = [i for i in range(first, last) if cases[i].metric != TASK]
    starts, prompts, samplings, budgets = {}, [], [], []
    for i in batch:
        sampling = _sampling(base, cases[i], i, backend)
        prefill = forced_start(backend, cases[i])
        prompt, forced = chat_tokens(backend, prompt_messages(cases[i].text, prefill))
        starts[i] = (prefill, forced, sampling)
        budgets.append(max(sampling.max_tokens - len(forced), 0))
        prompts.append(prompt + forced)
        samplings.append(dataclasses.replace(sampling, max_tokens=max(budgets[-1], 1)))
    replies = backend.replies(prompts, samplings)
    made = {}
    for i, budget, tokens in zip(batch, budgets, replies, strict=True):
        prefill, forced, sampling = starts[i]
        tokens = (forced + tokens[:budget])[: sampling.max_tokens]
        finish = "length" if len(tokens) >= sampling.max_tokens else "eos"
        text = backend.decode(tokens)
        made[i] = reply_record(target, cases[i], prefill, text, finish, None, sampling)
    return made


def write_verdicts(
    case: Case,
    judges: Sequence[Judge],
    reply_record: dict,
    write: Callable[[dict], None],
    skip: Collection[str] = (),
) -> None:
    """write() a copy of reply_record per judge of case not in skip, with that judge's
    verdict: every judge reads the same reply, generated once."""
    text = judged_text(case, reply_record["prefill"] or "", reply_record["output"])
    for verdict, hit, name in judge_case(case, text, judges, skip):
        write({**reply_record, "hit": hit, "judge": name, "verdict": verdict})


def _sampling(base: Sampling, case: Case, index: int, backend: GuardBackend) -> Sampling:
    """The decoding attack's sampling for the index-th case (seeded per case); the long
    prefill's, with room for max_tokens of the target's own after the forced start (the
    guard counts forced tokens against max_tokens); else base."""
    if case.own_start:
        forced = len(backend.encode_text(case.prefill_text))
        return dataclasses.replace(base, max_tokens=base.max_tokens + forced)
    if case.sampling is None:
        return base
    t, top_p, top_k = case.sampling
    seed = (base.seed or 0) + index
    return dataclasses.replace(base, temperature=t, top_p=top_p, top_k=top_k, seed=seed)


def reply(
    backend: GuardBackend, case: Case, settings: GuardSettings, sampling: Sampling
) -> tuple[str, GuardResult]:
    """(the forced reply start, the guarded result) of one case: the first prefill_tokens
    tokens of prefill_text by the target's tokenizer, or all of it when prefill_tokens is 0
    (the long prefill, already cut by the complier's)."""
    prefill = forced_start(backend, case)
    return prefill, generate(backend, prompt_messages(case.text, prefill), settings, sampling)


def forced_start(backend: GuardBackend, case: Case) -> str:
    """The reply start a case forces: the first prefill_tokens tokens of prefill_text by the
    target's tokenizer, or all of it when prefill_tokens is 0."""
    if case.prefill_tokens:
        return backend.decode(backend.encode_text(case.prefill_text)[: case.prefill_tokens])
    return case.prefill_text


def judged_text(case: Case, prefill: str, output: str) -> str:
    """What the judge reads: the reply, or for the long prefill only what the target wrote
    after the forced start. That start is a compliant reply by construction and longer than
    the refusal matcher's head, so judged with it every such attack would succeed."""
    return output.removeprefix(prefill) if case.own_start else output


def next_token_accuracy(backend: GuardBackend, case: Case) -> tuple[int, int]:
    """(correct, reference tokens) of a task case: the chat prompt, then the reference reply
    fed token by token (feed returns only the last position's logits), each compared with the
    target's argmax before it. No guard runs: this measures the model itself."""
    reference = backend.encode_text(case.answer or "")
    backend.reset()
    prompt = backend.encode_chat(list(case.messages), add_generation_prompt=True)
    step = backend.feed(prompt, every=False)
    correct = 0
    for i, token in enumerate(reference):
        correct += int(np.argmax(step.logits)) == token
        if i + 1 < len(reference):
            step = backend.feed([token], every=False)
    return correct, len(reference)


def task_record(target: str, case: Case, backend: GuardBackend) -> dict:
    """One task conversation's record: no judge verdict (hit null), its accuracy instead
    (null for an empty reference reply)."""
    correct, tokens = next_token_accuracy(backend, case)
    return {
        **_case_fields(target, case, judge=TASK_JUDGE),
        "reference": case.answer,
        "correct": correct,
        "tokens": tokens,
        "accuracy": correct / tokens if tokens else None,
        "guard": None,
    }


def guard_record(result: GuardResult, has_head: bool) -> dict | None:
    """What the guard saw and did in one generation (None for a target without a head)."""
    if not has_head:
        return None
    return {
        "mode": result.settings["mode"],
        "intervened": result.intervened,
        "actions": [dataclasses.asdict(i) for i in result.interventions],
        "query_logit": result.query_logit,
        "response_logits": result.response_logits,
        "response_threshold": result.settings["response_threshold"],
    }


def _write_records(path: Path, records: Iterable[dict]) -> None:
    """results.jsonl, atomically: a temporary sibling, then a rename."""
    tmp = temporary_name(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
