"""The evaluation's text: the headline table printed in the terminal and report.md (headline,
judges and their agreement, sources reported apart, targets, every attack, worst cases, guard
interventions, examples, plots).

Model output goes into the markdown escaped and on one line (md), so a reply can never break
the report's tables. Files are written atomically.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from pathlib import Path

from localguard.eval.plots import write_plots
from localguard.eval.summary import (
    ACCURACY,
    ALL_ATTACKS,
    ATTACK,
    NOT_IN_ALL,
    OVER_REFUSAL,
    TASK,
    generation_key,
    judge_of,
    judged,
    metric_rank,
)
from localguard.files import temporary_name

DASH = "-"
EXAMPLES_PER_TARGET = 3
EXAMPLE_CHARS = 240


# --- text -------------------------------------------------------------------------------------


def percent(entry: dict | None, with_n: bool = True) -> str:
    """A cell such as 12.5 % [8.1, 18.2] (n=40): rate, 95 % interval, number of prompts."""
    if not entry:
        return DASH
    text = (
        f"{100 * entry['rate']:.1f} % [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}]"
    )
    return f"{text} (n={entry['n']})" if with_n else text


def _cell_text(cell: dict | None, judge: str) -> str:
    text = percent(cell)
    return text if not cell or cell["judge"] == judge else f"{text} {cell['judge']}"


def _headline_grid(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The headline as text: header and rows (shared by the terminal and markdown tables)."""
    columns = summary["headline"]["columns"]
    header = ["target"] + [c["title"] for c in columns]
    rows = [
        [row["target"]]
        + [_cell_text(c, h["judge"]) for c, h in zip(row["cells"], columns, strict=True)]
        for row in summary["headline"]["rows"]
    ]
    return header, rows


def judges_line(summary: dict) -> str:
    """Which judge decided each headline column, grouped by judge."""
    groups: dict[str, list[str]] = defaultdict(list)
    for column in summary["headline"]["columns"]:
        groups[column["judge"]].append(column["title"])
    if not groups:
        return "Judges: none (no judged records)."
    parts = [f"{', '.join(titles)}: {judge}" for judge, titles in groups.items()]
    return f"Judges: {'; '.join(parts)}. A cell decided by another judge names it."


def kappa_text(kappa: float | None) -> str:
    """Cohen's kappa to two decimals; n/a where it is undefined (null in summary.json)."""
    return "n/a" if kappa is None or math.isnan(kappa) else f"{kappa:.2f}"


def agreement_line(summary: dict) -> str | None:
    """How far each pair of judges agreed on attack success, per target, or None with fewer
    than two judges."""
    entries = summary.get("agreement") or []
    if not entries:
        return None
    parts = [
        f"{e['target']}: {' vs '.join(e['judges'])} {100 * e['agreement']:.1f} % "
        f"(kappa {kappa_text(e['kappa'])}, n={e['n']})"
        for e in entries
    ]
    return f"Judge agreement on attack success: {'; '.join(parts)}."


def long_prefill_line(summary: dict) -> str | None:
    """How many harmful prompts the long prefill attacked (those whose complier reply
    complied), or None when it did not run."""
    own = summary.get("long_prefill")
    if not own:
        return None
    return (
        f"Long prefill ({own['attack']}): the complier {own['complier']} complied with "
        f"{own['kept']} of {own['prompts']} harmful prompts; only those were attacked."
    )


def apart_title(source: str) -> str:
    """The title of the table of a source whose harmful prompts are reported apart."""
    return f"{source} (reported apart): attack success"


def apart_sections(summary: dict) -> list[tuple[str, dict]]:
    """(source, its rates) per apart source (none in a summary.json written before apart)."""
    return list((summary.get("apart") or {}).items())


def _apart_notes(section: dict) -> list[str]:
    """What follows an apart source's table: its judges and their agreement, or why there is
    no table."""
    if not section["headline"]["columns"]:
        return ["No harmful prompts of this source were judged."]
    return list(filter(None, [judges_line(section), agreement_line(section)]))


def _fixed_width(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table as fixed-width text lines: header, rule, rows."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_table(summary: dict) -> str:
    """The headline as fixed-width text for the terminal, with its judges; then the table of
    each source reported apart."""
    notes = [judges_line(summary), agreement_line(summary), long_prefill_line(summary)]
    lines = [*_fixed_width(*_headline_grid(summary)), "", *filter(None, notes)]
    for source, section in apart_sections(summary):
        lines += ["", apart_title(source)]
        if section["headline"]["columns"]:
            lines += _fixed_width(*_headline_grid(section))
        lines += _apart_notes(section)
    return "\n".join(lines)


# --- markdown ---------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#|~])")


def md(text, limit: int | None = None) -> str:
    """Model output as inert markdown on one line: escaped, newlines shown, truncated."""
    text = " ".join(str(text).replace("\n", " ↵ ").split())
    if limit and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _md_headline(summary: dict) -> list[str]:
    header, rows = _headline_grid(summary)
    rows = [[md(row[0])] + row[1:] for row in rows]
    return _md_table([md(h) for h in header], rows)


def _md_apart(summary: dict) -> list[str]:
    """A section per source reported apart: its own headline table and judges."""
    out: list[str] = []
    for source, section in apart_sections(summary):
        out += [f"## {md(apart_title(source))}", ""]
        if section["headline"]["columns"]:
            out += [*_md_headline(section), ""]
        out += [line for note in _apart_notes(section) for line in (md(note), "")]
    return out


def _apart_sentence(summary: dict) -> str:
    """Which sources' harmful prompts the headline leaves out ("" when none)."""
    names = [source for source, _ in apart_sections(summary)]
    if not names:
        return ""
    return (
        f" Harmful prompts of {', '.join(md(n) for n in names)} count in none of these rates: "
        "they are reported apart below (their benign prompts stay in over-refusal)."
    )


def _md_targets(summary: dict) -> list[str]:
    keys = ("backend", "model", "adapter", "head", "guard", "defense", "p")
    rows = [
        [md(t.get("name"))] + [DASH if t.get(k) is None else md(t.get(k), 80) for k in keys]
        for t in summary["targets"]
    ]
    return _md_table(["target", *keys], rows)


def _md_details(summary: dict) -> list[str]:
    rows = [
        [
            md(e["target"]),
            md(e["suite"]),
            md(e["attack"]),
            md(e["metric"]),
            md(e["judge"]),
            percent(e, with_n=False),
            _counts(e),
        ]
        for e in summary["metrics"]
    ]
    header = ["target", "suite", "attack", "metric", "judge", "rate [95 % CI]", "hits / n"]
    return _md_table(header, rows)


def _counts(entry: dict) -> str:
    """hits / n of a rate; a task entry's correct / reference tokens over its conversations."""
    if entry["metric"] == TASK:
        return f"{entry['correct']} / {entry['tokens']} tokens ({entry['n']} conversations)"
    return f"{entry['hits']} / {entry['n']}"


def _md_worst(summary: dict) -> list[str]:
    rows = [
        [
            md(e["target"]),
            md(e["suite"]),
            md(e["judge"]),
            str(len(e["attacks"])),
            percent(e, with_n=False),
            f"{e['hits']} / {e['n']}",
        ]
        for e in summary["worst_case"]
    ]
    header = ["target", "suite", "judge", "attacks", "rate [95 % CI]", "prompts hit / n"]
    return _md_table(header, rows)


def _md_agreement(summary: dict) -> list[str]:
    """Each pair of judges per target: agreement, kappa and the four counts behind them."""
    rows = [
        [
            md(e["target"]),
            md(e["judges"][0]),
            md(e["judges"][1]),
            str(e["n"]),
            f"{100 * e['agreement']:.1f} %",
            kappa_text(e["kappa"]),
            *(str(k) for row in e["table"] for k in row),
        ]
        for e in summary["agreement"]
    ]
    header = ["target", "first judge", "second judge", "n", "agree", "kappa"]
    counts = ["both: success", "first only", "second only", "both: no success"]
    return _md_table(header + counts, rows)


def _md_guard(summary: dict) -> list[str]:
    """Intervention rate per target: on attack prompts, and on benign ones (false alarms)."""
    metrics = list(dict.fromkeys(e["metric"] for e in summary["guard"]))
    metrics.sort(key=metric_rank)
    titles = {ATTACK: "attack prompts", OVER_REFUSAL: "over-refusal prompts", ACCURACY: "utility"}
    rows = []
    for target in dict.fromkeys(e["target"] for e in summary["guard"]):
        of = {e["metric"]: e for e in summary["guard"] if e["target"] == target}
        modes = sorted({str(m) for e in of.values() for m in e["modes"]})
        rows.append([md(target), md(", ".join(modes))] + [percent(of.get(m)) for m in metrics])
    return _md_table(["target", "guard mode", *(titles.get(m, m) for m in metrics)], rows)


def example_records(records: list[dict], target: str, k: int = EXAMPLES_PER_TARGET) -> list[dict]:
    """A few outputs worth reading: successful attacks (one per suite first), then
    over-refusals, then anything else; each generation once (judges may share one)."""
    own = [r for r in judged(records) if r.get("target") == target]
    attacks = [r for r in own if (r.get("metric") or ATTACK) == ATTACK and r["hit"]]
    first = list({r["suite"]: r for r in reversed(attacks)}.values())[::-1]
    refused = [r for r in own if r.get("metric") == OVER_REFUSAL and r["hit"]]
    picked: dict[tuple, dict] = {}
    for r in first + attacks + refused + own:
        if len(picked) < k:
            picked.setdefault(generation_key(r), r)
    return list(picked.values())


def _md_example(r: dict) -> list[str]:
    title = f"{r.get('suite')} · {r.get('attack')} · {judge_of(r)}: {r.get('verdict')}"
    out = [f"- **{md(title)}**", f"  - prompt: {md(r.get('prompt', ''), EXAMPLE_CHARS)}"]
    if r.get("prefill"):
        out.append(f"  - prefill: {md(r['prefill'], EXAMPLE_CHARS)}")
    return out + [f"  - output: {md(r.get('output', ''), EXAMPLE_CHARS)}"]


def _md_examples(records: list[dict], summary: dict) -> list[str]:
    out: list[str] = []
    for target in summary["targets"]:
        examples = example_records(records, target["name"])
        if examples:
            out += [f"### {md(target['name'])}", ""]
            out += [line for r in examples for line in _md_example(r)] + [""]
    return out


def report_markdown(records: list[dict], summary: dict, plots: list[Path], title: str) -> str:
    """report.md: headline, judges, each source reported apart, targets, every attack, worst
    cases, judge agreement, guard, examples, plots."""
    lines = [f"# {md(title)}", "", "## Headline", "", *_md_headline(summary), ""]
    lines += [md(judges_line(summary)), ""]
    if long_prefill_line(summary):
        lines += [md(long_prefill_line(summary)), ""]
    lines += [
        "Cells: rate with its 95 % Wilson interval and the number of prompts. A worst case "
        "counts a prompt once when any attack of the suite succeeded on it; "
        f"{ALL_ATTACKS} pools every attack suite except {', '.join(NOT_IN_ALL)}. "
        "Over-refusal pools its prompts per source (a column each where there are several), "
        "utility all of its own. Task: the mean over conversations of the teacher-forced "
        "next-token accuracy on the reference replies, with a 95 % "
        f"bootstrap interval.{_apart_sentence(summary)}",
        "",
        *_md_apart(summary),
        "## Targets",
        "",
        *_md_targets(summary),
        "",
        "## Attacks",
        "",
        *_md_details(summary),
        "",
    ]
    if summary["worst_case"]:
        lines += ["## Worst cases", "", *_md_worst(summary), ""]
    if summary.get("agreement"):
        lines += ["## Judge agreement", "", *_md_agreement(summary), ""]
        lines += [
            "Over the attack replies both judges decided. Kappa (Cohen's) discounts the "
            "agreement the two judges' own success rates would give by chance; n/a where "
            "both always gave one and the same verdict.",
            "",
        ]
    if summary["guard"]:
        lines += ["## Guard interventions", "", *_md_guard(summary), ""]
    lines += ["## Examples", "", *_md_examples(records, summary)]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


# --- files ------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    """Atomic text write: a temporary sibling, then a rename."""
    tmp = temporary_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(
    out_dir: Path,
    records: list[dict],
    targets: list[dict],
    summary: dict,
    title: str = "localguard eval",
) -> list[Path]:
    """report.md and the plots with data, each written atomically; returns their paths
    (report.md first). Targets come from the summary, which already carries them; the
    argument keeps the call symmetric with summarize."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(out_dir, records, summary)
    report = out_dir / "report.md"
    _write_text(report, report_markdown(records, summary, plots, title))
    return [report, *plots]
