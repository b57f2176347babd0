"""`localguard eval`'s one entry point: every suite on every target, judged, written, resumable.

Every reply goes through localguard.guard.generate, so a target with the guard off is decoded
exactly as one with it on, minus the interventions.

Results are appended to OUT.partial/results.partial.jsonl as they come, so a killed run
resumes where it stopped; the finished folder holds results.jsonl, summary.json, report.md
and the plots (localguard.eval.report, localguard.eval.plots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import click

from localguard import runs
from localguard.backends.base import GuardBackend, Sampling
from localguard.errors import InputError
from localguard.eval.judges import JUDGES, judge_case, make_judge
from localguard.eval.options import EvalOptions, Target
from localguard.eval.report import format_table, write_report
from localguard.eval.suites import ATTACK_SUITES, Case, build_cases, prompt_sets, record_key
from localguard.eval.summary import summarize
from localguard.eval.targets import attack_targets, open_target
from localguard.files import clean_json, temporary_name, write_json
from localguard.guard import GuardResult, GuardSettings, generate, prompt_messages
from localguard.recipe import EVAL_SUITES

PARTIAL_RESULTS = "results.partial.jsonl"


def evaluate(opts: EvalOptions, resume: bool = True, force: bool = False) -> dict:
    """Run every suite on every target into opts.out; the summary (also in summary.json)."""
    _check(opts)
    work = _prepare(opts, resume, force)
    sets = prompt_sets(opts)
    if not sets[0] and any(s in ATTACK_SUITES or s == "finetune_attack" for s in opts.suites):
        raise InputError("no harmful prompts: give --heldout or a --source with harmful rows")
    records, done = read_partial(work / PARTIAL_RESULTS)
    judge = make_judge(opts)
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
            cases = [c for s in suites for c in build_cases(opts, s, sets)]
            run_target(target, cases, opts, judge, done, write)
    described = [t.describe() for t in targets]
    summary = summarize(records, described)
    summary["options"] = opts.describe()
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
    if opts.judge not in JUDGES:
        raise InputError(f"judge must be one of {', '.join(JUDGES)}, not {opts.judge!r}")
    if not opts.targets:
        raise InputError("nothing to evaluate: give a model")
    if "finetune_attack" in opts.suites and opts.training is None:
        raise InputError("the finetune_attack suite needs an MLX model and attack mixes")
    if "utility" in opts.suites and opts.heldout is None:
        raise InputError("the utility suite needs a starter world's held-out sets (--heldout DIR)")
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


def read_partial(path: Path) -> tuple[list[dict], set[str]]:
    """The records a killed run wrote, and the keys of their generations."""
    records = runs.read_appended(path)
    keys = {record_key(r["target"], r["suite"], r["attack"], r["prompt_id"]) for r in records}
    return records, keys


def run_target(
    target: Target,
    cases: Sequence[Case],
    opts: EvalOptions,
    judge,
    done: set[str],
    write: Callable[[dict], None],
) -> None:
    """Generate and judge every case of target not yet in done; write(record) each."""
    todo = [c for c in cases if c.key(target.name) not in done]
    if not todo:
        return
    backend = open_target(target)
    settings = dataclasses.replace(opts.guard, mode=target.guard)
    has_head = bool(backend.head.names)
    with runs.progress_bar(len(todo), f"{target.name:<24}") as bar:
        for index, case in enumerate(todo):
            sampling = _sampling(opts.sampling, case, index)
            prefill, result = reply(backend, case, settings, sampling)
            verdict, hit, judge_name = judge_case(case, result.text, judge)
            write(
                {
                    "target": target.name,
                    "suite": case.suite,
                    "attack": case.attack,
                    "metric": case.metric,
                    "hit": hit,
                    "judge": judge_name,
                    "prompt_id": case.prompt.id,
                    "source": case.prompt.source,
                    "prompt": case.text,
                    "prefill": prefill or None,
                    "output": result.text,
                    "verdict": verdict,
                    "finish": result.finish,
                    "guard": guard_record(result, has_head),
                    "sampling": dataclasses.asdict(sampling),
                }
            )
            bar.update(1)
    backend.close()


def _sampling(base: Sampling, case: Case, index: int) -> Sampling:
    """The decoding attack's sampling for the index-th case (seeded per case), else base."""
    if case.sampling is None:
        return base
    t, top_p, top_k = case.sampling
    seed = (base.seed or 0) + index
    return dataclasses.replace(base, temperature=t, top_p=top_p, top_k=top_k, seed=seed)


def reply(
    backend: GuardBackend, case: Case, settings: GuardSettings, sampling: Sampling
) -> tuple[str, GuardResult]:
    """(the forced reply start, the guarded result) of one case."""
    prefill = ""
    if case.prefill_tokens:
        prefill = backend.decode(backend.encode_text(case.prefill_text)[: case.prefill_tokens])
    return prefill, generate(backend, prompt_messages(case.text, prefill), settings, sampling)


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
