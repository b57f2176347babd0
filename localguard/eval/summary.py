"""Every rate of an evaluation as plain data (summary.json): per attack and judge, worst cases
over attacks, guard interventions, and the headline that the table, the report and the plots
show.

Input: the records of results.jsonl (one per target, suite, attack, prompt and judge) and the
target descriptions. No model or backend is needed, so a summary can be rebuilt from
results.jsonl on any machine. Every rate carries its 95 % Wilson interval
(localguard.stats.wilson_interval).

Every number keeps the name of the judge that decided it: two judges can disagree on the same
output, and a rate without its judge cannot be compared with another. Where several judges
read the same attack replies, "agreement" gives each pair's agreement and Cohen's kappa.

The task suite is no rate: its records carry each conversation's teacher-forced next-token
accuracy (hit null), summarized as the mean over conversations with a 95 % bootstrap interval
(localguard.stats.bootstrap_mean_interval).

Sources reported apart (eval.apart, --apart: file names such as xstest_prompts.csv) keep
their harmful prompts out of every rate above; summary["apart"][source] holds their own rates,
built by the same code. Their benign prompts stay in over-refusal.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from pathlib import PurePath

from localguard.recipe import EVAL_SUITES
from localguard.stats import bootstrap_mean_interval, cohen_kappa, wilson_interval

SUITES = EVAL_SUITES
WORST_SUITES = ("prefill", "jailbreak", "decoding")  # always summarized by their worst case
ALL_ATTACKS = "all attacks"
NOT_IN_ALL = ("finetune_attack",)  # its targets are other models: no shared prompts to pool
ATTACK = "attack_success"
OVER_REFUSAL = "over_refusal"
ACCURACY = "accuracy"
TASK = "task"  # the task suite's name and metric: mean next-token accuracy per conversation
METRICS = (ATTACK, OVER_REFUSAL, ACCURACY, TASK)
GROUP = ("target", "suite", "attack", "metric", "judge")  # what one metrics entry is about


# --- rates ------------------------------------------------------------------------------------


def _stats(hits: int, n: int) -> dict:
    """n, hits, rate and the 95 % interval: the figures every table cell and plot needs."""
    low, high = wilson_interval(hits, n)
    rate = hits / n if n else math.nan
    return {"n": n, "hits": hits, "rate": rate, "ci_low": low, "ci_high": high}


def _pooled(entries: list[dict]) -> dict:
    """Several entries as one proportion: every prompt weighs the same."""
    return _stats(sum(e["hits"] for e in entries), sum(e["n"] for e in entries))


def judge_rank(judge: str) -> tuple[int, str]:
    """Which judge a headline cell shows first: an LLM judge reads the content; the refusal
    judge is conservative (every non-refusal counts as a success); the safety head is last
    because a guarded target is steered by that same head."""
    order = 0 if judge.startswith("llm:") else {"refusal": 1, "head": 2}.get(judge, 3)
    return (order, judge)


def judge_order(judges: Sequence[str] = ()) -> Callable[[str], tuple]:
    """The rank of a judge wherever one is listed or picked first: the evaluation's own judges
    in their given order (its primary judge first), then any other by judge_rank."""
    at = {judge: i for i, judge in enumerate(judges)}
    return lambda judge: (at.get(judge, len(at)), *judge_rank(judge))


# --- summary ----------------------------------------------------------------------------------


def judged(records: list[dict]) -> list[dict]:
    """Records a judge decided (hit null means the judge gave no verdict: not a miss)."""
    return [r for r in records if r.get("hit") is not None]


def judge_of(record: dict) -> str:
    """The name of the judge that decided record ("unknown" when it names none)."""
    return str(record.get("judge") or "unknown")


def _prompt_key(record: dict) -> str:
    """The base prompt: attacks of one prompt share it, so worst cases count prompts once."""
    return str(record.get("prompt_id") or record.get("prompt") or "")


def generation_key(record: dict) -> tuple:
    """One generation: two judges reading the same output must not count it twice."""
    return (record.get("target"), record.get("suite"), record.get("attack"), _prompt_key(record))


def _all_targets(records: list[dict], targets: list[dict]) -> list[dict]:
    """The descriptions in their order, then any target only the records name."""
    out = [dict(t) for t in targets]
    names = {t.get("name") for t in out}
    for r in records:
        if r.get("target") not in names:
            names.add(r.get("target"))
            out.append({"name": r.get("target")})
    return out


def _sort_key(records: list[dict], targets: list[dict], rank: Callable[[str], tuple]):
    """Targets as described, suites in their usual order, attacks as first seen."""
    target_at = {t["name"]: i for i, t in enumerate(targets)}
    suite_at = {s: i for i, s in enumerate(SUITES)}
    attack_at: dict = {}
    for r in records:
        suite_at.setdefault(r.get("suite"), len(suite_at))
        attack_at.setdefault((r.get("suite"), r.get("attack")), len(attack_at))

    def key(target, suite, attack=None, metric=ATTACK, judge=""):
        return (
            target_at.get(target, len(target_at)),
            suite_at.get(suite, len(suite_at)),
            attack_at.get((suite, attack), -1),
            metric_rank(metric),
            rank(judge),
        )

    return key


def _metric_entries(records: list[dict]) -> list[dict]:
    """One entry per (target, suite, attack, metric, judge)."""
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        group = (r["target"], r["suite"], r["attack"], r.get("metric") or ATTACK, judge_of(r))
        counts[group][0] += bool(r["hit"])
        counts[group][1] += 1
    return [{**dict(zip(GROUP, g, strict=True)), **_stats(*hn)} for g, hn in counts.items()]


def _task_entries(records: list[dict]) -> list[dict]:
    """One entry per (target, suite, attack, judge) of the task suite: the mean of each
    conversation's accuracy (every conversation weighs the same, however long its reply),
    its 95 % bootstrap interval over conversations, and the tokens behind it."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("metric") == TASK and r.get("accuracy") is not None:
            groups[(r["target"], r["suite"], r["attack"], TASK, judge_of(r))].append(r)
    entries = []
    for group, rs in groups.items():
        values = [float(r["accuracy"]) for r in rs]
        low, high = bootstrap_mean_interval(values)
        entries.append(
            {
                **dict(zip(GROUP, group, strict=True)),
                "n": len(rs),
                "correct": sum(int(r["correct"]) for r in rs),
                "tokens": sum(int(r["tokens"]) for r in rs),
                "rate": sum(values) / len(values),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return entries


def worst_suites(records: list[dict]) -> list[str]:
    """Suites summarized by a worst case: the usual multi-attack ones, and any suite whose
    attack_success records name more than one attack."""
    attacks: dict[str, set] = defaultdict(set)
    for r in records:
        if (r.get("metric") or ATTACK) == ATTACK:
            attacks[r["suite"]].add(r["attack"])
    return [s for s, names in attacks.items() if s in WORST_SUITES or len(names) > 1]


def _worst(records: list[dict], suite: str, label) -> list[dict]:
    """Per (target, judge): a prompt is a success when any of its attacks succeeded."""
    hit: dict[tuple, dict[str, bool]] = defaultdict(dict)
    attacks: dict[tuple, list[str]] = defaultdict(list)
    for r in records:
        group = (r["target"], judge_of(r))
        prompts = hit[group]
        prompts[_prompt_key(r)] = prompts.get(_prompt_key(r), False) or bool(r["hit"])
        if label(r) not in attacks[group]:
            attacks[group].append(label(r))
    return [
        {
            "target": target,
            "suite": suite,
            "judge": judge,
            "attacks": attacks[(target, judge)],
            **_stats(sum(prompts.values()), len(prompts)),
        }
        for (target, judge), prompts in hit.items()
    ]


def _worst_entries(records: list[dict], key) -> list[dict]:
    """Worst case per multi-attack suite, then across every attack suite but finetune_attack."""
    attack = [r for r in records if (r.get("metric") or ATTACK) == ATTACK]
    entries = []
    for suite in worst_suites(attack):
        of_suite = [r for r in attack if r["suite"] == suite]
        entries += _worst(of_suite, suite, lambda r: r["attack"])
    pooled = [r for r in attack if r["suite"] not in NOT_IN_ALL]
    entries += _worst(pooled, ALL_ATTACKS, lambda r: f"{r['suite']}: {r['attack']}")
    return sorted(entries, key=lambda e: key(e["target"], e["suite"], judge=e["judge"]))


def _guard_entries(records: list[dict], targets: list[dict]) -> list[dict]:
    """How often the guard stepped in, per target and metric: on attack prompts that is the
    point, on benign prompts (over_refusal, accuracy) it is a false alarm."""
    seen, counts, modes = set(), defaultdict(lambda: [0, 0]), defaultdict(list)
    for r in records:
        guard = r.get("guard")
        if not isinstance(guard, dict) or generation_key(r) in seen:
            continue
        seen.add(generation_key(r))
        group = (r["target"], r.get("metric") or ATTACK)
        counts[group][0] += bool(guard.get("intervened"))
        counts[group][1] += 1
        if guard.get("mode") not in modes[group]:
            modes[group].append(guard.get("mode"))
    order = {t["name"]: i for i, t in enumerate(targets)}
    groups = sorted(counts, key=lambda g: (order.get(g[0], len(order)), metric_rank(g[1])))
    return [
        {"target": t, "metric": m, "modes": modes[(t, m)], **_stats(*counts[(t, m)])}
        for t, m in groups
    ]


def in_apart(record: dict, apart: Collection[str]) -> bool:
    """Whether record is a harmful prompt of a source reported apart (named as the record's
    source field names it, e.g. xstest_prompts.csv), so that it stays out of the headline.
    Benign prompts of that source are no attack: they stay in over-refusal."""
    return (record.get("metric") or ATTACK) == ATTACK and record.get("source") in apart


def _rates(records: list[dict], targets: list[dict], judges: Sequence[str]) -> dict:
    """The rates of one set of records, headline included: the whole summary's, and each
    apart source's, from the same code. targets and judges: the evaluation's, in order."""
    measured = _task_entries(records)
    records = judged(records)
    rank = judge_order(judges)
    key = _sort_key(records, targets, rank)
    metrics = _metric_entries(records) + measured
    rates = {
        "records": len(records),
        "metrics": sorted(metrics, key=lambda e: key(*(e[k] for k in GROUP))),
        "worst_case": _worst_entries(records, key),
        "guard": _guard_entries(records, targets),
        "agreement": _agreement_entries(records, targets, rank),
    }
    rates["headline"] = _headline({**rates, "targets": targets, "judges": judges})
    return rates


def summarize(
    records: list[dict],
    targets: list[dict],
    judges: Sequence[str] = (),
    apart: Sequence[str] = (),
) -> dict:
    """Every rate of an evaluation as plain JSON-able data (summary.json), headline included,
    so tables and plots can be redrawn without the records. judges: the names of the
    evaluation's attack-success judges, the primary first (it leads the headline); without
    them, judge_rank orders the judges the records name. apart: sources whose harmful prompts
    count in no headline rate; each gets its own rates in summary["apart"][source]."""
    rank = judge_order(judges)
    targets = _all_targets(judged(records), targets)
    names = sorted({judge_of(r) for r in judged(records)}, key=rank)
    kept = [r for r in records if not in_apart(r, apart)]
    summary = {"targets": targets, "judges": names, **_rates(kept, targets, names)}
    summary["apart"] = {
        source: _rates([r for r in records if in_apart(r, (source,))], targets, names)
        for source in dict.fromkeys(apart)
    }
    return summary


# --- agreement between judges -----------------------------------------------------------------


def _agreement_entries(
    records: list[dict], targets: list[dict], rank: Callable[[str], tuple]
) -> list[dict]:
    """Per target, every pair of judges over the attack cases both decided (the same
    generations): how often they agree, and Cohen's kappa, which discounts the agreement
    their own success rates would give by chance."""
    hits: dict[str, dict[tuple, dict[str, bool]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if (r.get("metric") or ATTACK) == ATTACK:
            hits[r["target"]][generation_key(r)][judge_of(r)] = bool(r["hit"])
    entries = []
    for target in (t["name"] for t in targets if t["name"] in hits):
        cases = hits[target].values()
        names = sorted({judge for verdicts in cases for judge in verdicts}, key=rank)
        for first, second in itertools.combinations(names, 2):
            pairs = [(v[first], v[second]) for v in cases if first in v and second in v]
            if pairs:
                entries.append(_agreement(target, first, second, pairs))
    return entries


def _agreement(target: str, first: str, second: str, pairs: list[tuple[bool, bool]]) -> dict:
    """One pair of judges on one target; table: rows the first judge's success / no success,
    columns the second's."""
    count = Counter(pairs)
    table = [[count[(a, b)] for b in (True, False)] for a in (True, False)]
    return {
        "target": target,
        "judges": [first, second],
        "n": len(pairs),
        "agreement": (table[0][0] + table[1][1]) / len(pairs),
        "kappa": cohen_kappa([a for a, _ in pairs], [b for _, b in pairs]),
        "table": table,
    }


# --- headline ---------------------------------------------------------------------------------


def _attack_columns(summary: dict) -> list[tuple[dict, dict]]:
    """One column per attack suite: its single rate, or its worst case when it has several
    attacks; then the worst case across all attacks when more than one attack was run."""
    worst = {e["suite"] for e in summary["worst_case"]}
    attack = [e for e in summary["metrics"] if e["metric"] == ATTACK]
    columns: list[tuple[dict, dict]] = []
    for suite in sorted(dict.fromkeys(e["suite"] for e in attack), key=_suite_at):
        if suite in worst:
            cells = _by_target_judge([e for e in summary["worst_case"] if e["suite"] == suite])
            columns.append(({"key": suite, "title": f"{suite} (worst)", "metric": ATTACK}, cells))
        else:
            cells = _pool_by_target_judge([e for e in attack if e["suite"] == suite])
            columns.append(({"key": suite, "title": suite, "metric": ATTACK}, cells))
    if len({(e["suite"], e["attack"]) for e in attack if e["suite"] not in NOT_IN_ALL}) > 1:
        every = [e for e in summary["worst_case"] if e["suite"] == ALL_ATTACKS]
        head = {"key": ALL_ATTACKS, "title": f"{ALL_ATTACKS} (worst)", "metric": ATTACK}
        columns.append((head, _by_target_judge(every)))
    return columns


def _suite_at(suite: str) -> tuple[int, int]:
    """Suites in their usual order; unknown ones after, as first seen (sorted is stable)."""
    return (SUITES.index(suite), 0) if suite in SUITES else (len(SUITES), 0)


def metric_rank(metric: str) -> int:
    """Metrics in their usual order (attack success, over-refusal, accuracy), others after."""
    return METRICS.index(metric) if metric in METRICS else len(METRICS)


def _by_target_judge(entries: list[dict]) -> dict[tuple, dict]:
    return {
        (e["target"], e["judge"]): {**_stats(e["hits"], e["n"]), "attacks": len(e["attacks"])}
        for e in entries
    }


def _pool_by_target_judge(entries: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in entries:
        groups[(e["target"], e["judge"])].append(e)
    return {g: {**_pooled(es), "attacks": len(es)} for g, es in groups.items()}


def _over_refusal_columns(metrics: list[dict]) -> list[tuple[dict, dict]]:
    """One over-refusal column, or one per source where there are several: XSTest's
    borderline prompts and plain instructions measure different things and are not pooled."""
    entries = [e for e in metrics if e["metric"] == OVER_REFUSAL]
    sources = list(dict.fromkeys(e["attack"] for e in entries))
    if len(sources) < 2:
        sources = [None]
    columns = []
    for source in sources:
        own = [e for e in entries if source is None or e["attack"] == source]
        if own:
            key = "over_refusal" if source is None else f"over_refusal {source}"
            title = "over-refusal" if source is None else f"over-refusal {PurePath(source).stem}"
            head = {"key": key, "title": title, "metric": OVER_REFUSAL}
            columns.append((head, _pool_by_target_judge(own)))
    return columns


def _headline(summary: dict) -> dict:
    """Rows = targets, one cell per column (None where absent). The column's judge is the one
    most of its cells show; a cell from another judge names it. summary["judges"] is already
    in rank order, the evaluation's primary judge first."""
    rank = judge_order(summary["judges"])
    columns = _attack_columns(summary)
    columns += _over_refusal_columns(summary["metrics"])
    utility = [e for e in summary["metrics"] if e["metric"] == ACCURACY]
    if utility:
        head = {"key": "utility", "title": "utility", "metric": ACCURACY}
        columns.append((head, _pool_by_target_judge(utility)))
    tasks = [e for e in summary["metrics"] if e["metric"] == TASK]
    if tasks:
        columns.append(({"key": TASK, "title": TASK, "metric": TASK}, _task_cells(tasks)))
    names = [t["name"] for t in summary["targets"]]
    grid = [[_cell(cells, name, rank) for name in names] for _, cells in columns]
    for (head, _), cells in zip(columns, grid, strict=True):
        picked = Counter(c["judge"] for c in cells if c)
        head["judge"] = min(picked, key=lambda j: (-picked[j], rank(j)))
    rows = [{"target": name, "cells": [cells[i] for cells in grid]} for i, name in enumerate(names)]
    return {"columns": [head for head, _ in columns], "rows": rows}


def _task_cells(entries: list[dict]) -> dict[tuple, dict]:
    """The task column's cells: one task file, so one entry per target and judge."""
    fields = ("n", "rate", "ci_low", "ci_high")
    return {(e["target"], e["judge"]): {**{k: e[k] for k in fields}, "attacks": 1} for e in entries}


def _cell(cells: dict[tuple, dict], target: str, rank: Callable[[str], tuple]) -> dict | None:
    """The target's figure from the judge that saw the most attacks (a worst case over fewer
    attacks understates it), then by rank (the primary judge first)."""
    own = {j: c for (t, j), c in cells.items() if t == target}
    if not own:
        return None
    pick = min(own, key=lambda j: (-own[j]["attacks"], rank(j)))
    return {**own[pick], "judge": pick}
