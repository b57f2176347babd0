"""The evaluation's PNG plots, drawn with matplotlib on the Agg backend (no display needed):
attack success per attack, attack success against the harmful ratio p, per-token guard traces,
and utility against safety. Each is drawn only when the summary has data for it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from localguard.eval.summary import ALL_ATTACKS, ATTACK, generation_key, judge_of, judge_rank
from localguard.files import temporary_name
from localguard.stats import sigmoid

PLOTS = ("attack_success.png", "attack_vs_p.png", "safety_traces.png", "utility_vs_safety.png")


def _pyplot():
    """pyplot on the Agg backend: reports are drawn on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write a PNG under a temporary name, then rename: a reader never sees half a file."""
    plt = _pyplot()
    tmp = temporary_name(path)
    try:
        with warnings.catch_warnings():  # a legend outside the axes is not worth a warning
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _label(target: dict) -> str:
    """A target's name, with its defense when the name does not already say it."""
    name, defense = str(target.get("name")), target.get("defense")
    return name if not defense or str(defense) in name else f"{name} [{defense}]"


def _errors(entries: list[dict]) -> np.ndarray:
    """matplotlib's asymmetric error bars from the Wilson bounds."""
    return np.array(
        [[e["rate"] - e["ci_low"] for e in entries], [e["ci_high"] - e["rate"] for e in entries]]
    )


def _bars(ax, entries: list[dict], targets: list[dict]) -> None:
    """Grouped bars: one group per attack, one bar per target."""
    groups = list(dict.fromkeys((e["suite"], e["attack"]) for e in entries))
    present = [t for t in targets if any(e["target"] == t["name"] for e in entries)]
    width = 0.8 / max(1, len(present))
    for i, target in enumerate(present):
        own = {(e["suite"], e["attack"]): e for e in entries if e["target"] == target["name"]}
        xs = [g for g, key in enumerate(groups) if key in own]
        values = [own[groups[g]] for g in xs]
        offset = (i - (len(present) - 1) / 2) * width
        ax.bar(
            np.array(xs) + offset,
            [e["rate"] for e in values],
            width,
            label=_label(target),
            yerr=_errors(values),
            capsize=2,
        )
    names = [a if s == a else f"{s}: {a}" for s, a in groups]
    ax.set_xticks(range(len(groups)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="attack success")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_attack_success(path: Path, summary: dict) -> bool:
    """Attack success per attack and target with 95 % intervals, one panel per judge."""
    entries = [e for e in summary["metrics"] if e["metric"] == ATTACK]
    if not entries:
        return False
    judges = sorted({e["judge"] for e in entries}, key=judge_rank)
    groups = len({(e["suite"], e["attack"]) for e in entries})
    width = min(30.0, max(6.0, 0.25 * groups * len(summary["targets"]) + 3))
    plt = _pyplot()
    fig, axes = plt.subplots(len(judges), 1, figsize=(width, 4 * len(judges)), squeeze=False)
    for ax, judge in zip(axes[:, 0], judges, strict=True):
        _bars(ax, [e for e in entries if e["judge"] == judge], summary["targets"])
        ax.set_title(f"attack success per attack (judge: {judge}; bars: 95 % Wilson CI)")
    _save(fig, path)
    return True


def _column(summary: dict, preferred: tuple[str, ...], rows: list[dict]) -> int | None:
    """The headline attack column with a cell for the most of rows (one measure for every
    point of a plot), preferred keys first among equals; None when no row has one."""
    columns = summary["headline"]["columns"]
    candidates = [i for i, c in enumerate(columns) if c["metric"] == ATTACK]
    rank = {key: n for n, key in enumerate(preferred)}

    def key(i: int) -> tuple[int, int, int]:
        covered = sum(1 for row in rows if row["cells"][i])
        return (-covered, rank.get(columns[i]["key"], len(rank)), i)

    best = min(candidates, key=key, default=None)
    return best if best is not None and key(best)[0] < 0 else None


def plot_attack_vs_p(path: Path, summary: dict) -> bool:
    """Attack success against the harmful ratio p of the fine-tuning mix, a line per defense:
    how fast each defense gives way as the data gets worse."""
    with_p = {t["name"]: t for t in summary["targets"] if t.get("p") is not None}
    rows = [r for r in summary["headline"]["rows"] if r["target"] in with_p]
    i = _column(summary, ("direct", ALL_ATTACKS), rows)
    if i is None:
        return False
    column = summary["headline"]["columns"][i]
    lines: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for row in rows:
        if row["cells"][i]:
            target = with_p[row["target"]]
            lines[str(target.get("defense") or "none")].append((target["p"], row["cells"][i]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for defense, points in lines.items():
        points.sort(key=lambda pc: pc[0])
        cells = [c for _, c in points]
        ax.errorbar(
            [p for p, _ in points],
            [c["rate"] for c in cells],
            yerr=_errors(cells),
            marker="o",
            capsize=3,
            label=defense,
        )
    judges = ", ".join(sorted({c["judge"] for ps in lines.values() for _, c in ps}))
    ax.set(
        xlabel="harmful ratio p of the fine-tuning mix",
        ylabel=f"attack success: {column['title']}",
        ylim=(0, 1.05),
        title=f"attack success vs p (judge: {judges})",
    )
    ax.legend(title="defense", fontsize=8)
    _save(fig, path)
    return True


def trace_records(records: list[dict], k: int = 4) -> list[dict]:
    """Up to k generations with a per-token guard trace: interventions first, then spread
    over targets, each generation once."""
    seen, pool = set(), []
    for r in records:
        guard = r.get("guard")
        fresh = generation_key(r) not in seen
        if isinstance(guard, dict) and guard.get("response_logits") and fresh:
            seen.add(generation_key(r))
            pool.append(r)
    nth: Counter = Counter()
    ranked = []
    for index, r in enumerate(pool):
        intervened = bool(r["guard"].get("intervened"))
        ranked.append(((not intervened, nth[(intervened, r.get("target"))], index), r))
        nth[(intervened, r.get("target"))] += 1
    return [r for _, r in sorted(ranked, key=lambda x: x[0])[:k]]


def _trace(ax, r: dict) -> None:
    """One generation: P(unsafe) per output token, the threshold and where the guard acted."""
    guard = r["guard"]
    logits = [math.nan if v is None else float(v) for v in guard["response_logits"]]
    prob = sigmoid(logits)
    ax.plot(range(len(prob)), prob, marker=".", linewidth=1, label="response P(unsafe)")
    if guard.get("response_threshold") is not None:
        ax.axhline(
            float(sigmoid(guard["response_threshold"])),
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label="threshold",
        )
    for n, action in enumerate(guard.get("actions") or []):
        at = int(action.get("at") or 0) if action.get("output") == "response" else 0
        label = f"{action.get('output')}: {action.get('action')}"
        ax.axvline(at, color="tab:orange", linestyle=":", label=label if n == 0 else None)
        ax.annotate(str(action.get("action")), (at, 1.0), fontsize=7, color="tab:orange")
    if guard.get("query_logit") is not None:
        query = float(sigmoid(guard["query_logit"]))
        ax.text(0.99, 0.02, f"query P={query:.2f}", transform=ax.transAxes, ha="right", fontsize=7)
    title = f"{r.get('target')} · {r.get('suite')}: {r.get('attack')}"
    verdict = f"judge {judge_of(r)}: {r.get('verdict')}"
    ax.set_title(f"{title[:60]}\n{verdict[:60]}", fontsize=8)
    ax.set(ylim=(-0.02, 1.08), xlabel="output token", ylabel="P(unsafe)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=6, loc="upper left")


def plot_safety_traces(path: Path, records: list[dict]) -> bool:
    """The guard's per-token signal on a few generations: where it rose and where it acted."""
    picked = trace_records(records)
    if not picked:
        return False
    plt = _pyplot()
    cols = min(2, len(picked))
    rows = math.ceil(len(picked) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, picked, strict=False):
        _trace(ax, r)
    for ax in list(axes.flat)[len(picked) :]:
        ax.set_visible(False)
    _save(fig, path)
    return True


def plot_utility_vs_safety(path: Path, summary: dict) -> bool:
    """One point per target: what safety costs in utility (up and right is better)."""
    columns = summary["headline"]["columns"]
    keys = [c["key"] for c in columns]
    if "utility" not in keys:
        return False
    u = keys.index("utility")
    rows = [r for r in summary["headline"]["rows"] if r["cells"][u]]
    i = _column(summary, (ALL_ATTACKS, "direct"), rows)
    points = [(r["target"], r["cells"][i], r["cells"][u]) for r in rows if i is not None]
    points = [p for p in points if p[1]]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, safe, util in points:
        x = 1 - safe["rate"]
        xerr = [[safe["ci_high"] - safe["rate"]], [safe["rate"] - safe["ci_low"]]]
        ax.errorbar([x], [util["rate"]], xerr=xerr, yerr=_errors([util]), marker="o", capsize=3)
        ax.annotate(name, (x, util["rate"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    safety_judges = ", ".join(sorted({s["judge"] for _, s, _ in points}))
    utility_judges = ", ".join(sorted({v["judge"] for _, _, v in points}))
    ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        ylabel="utility accuracy",
        xlabel=f"1 - attack success: {columns[i]['title']}",
        title=f"utility vs safety (safety judge: {safety_judges}; utility judge: {utility_judges})",
    )
    ax.title.set_fontsize(9)
    _save(fig, path)
    return True


def write_plots(out_dir: Path, records: list[dict], summary: dict) -> list[Path]:
    """The plots that have data; a plot skipped now is removed if an older run left one, so
    the folder never shows a figure from other results."""
    draw = {
        "attack_success.png": lambda p: plot_attack_success(p, summary),
        "attack_vs_p.png": lambda p: plot_attack_vs_p(p, summary),
        "safety_traces.png": lambda p: plot_safety_traces(p, records),
        "utility_vs_safety.png": lambda p: plot_utility_vs_safety(p, summary),
    }
    written = []
    for name in PLOTS:
        path = Path(out_dir) / name
        if draw[name](path):
            written.append(path)
        else:
            path.unlink(missing_ok=True)
    return written
