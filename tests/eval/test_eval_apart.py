"""Sources reported apart (eval.apart, --apart): their harmful prompts leave every headline
rate for a section of their own; their benign prompts stay in over-refusal."""

from __future__ import annotations

import re

from click.testing import CliRunner
from eval_helpers import BASE, GUARDED, TARGETS, entry, rec

from localguard.cli import cli
from localguard.eval.options import EvalOptions
from localguard.eval.prompts import EvalPrompt
from localguard.eval.report import format_table, report_markdown
from localguard.eval.suites import build_cases
from localguard.eval.summary import ALL_ATTACKS, in_apart, summarize
from localguard.recipe import SCHEMA

MAIN, APART = "advbench.csv", "xstest_prompts.csv"


def _of(source: str, records: list[dict]) -> list[dict]:
    for r in records:
        r["source"] = source
        r["prompt_id"] = f"{source}:{r['prompt_id']}"
    return records


def two_sources() -> list[dict]:
    """MAIN: direct hits 1 of 4, prefill k=1 1 of 4. APART: direct hits 3 of 4, prefill k=1
    4 of 4, and 4 benign prompts of which 2 were refused."""
    records = []
    for target in (BASE, GUARDED):
        records += _of(MAIN, [rec(target, "direct", "direct", i, i < 1) for i in range(4)])
        records += _of(MAIN, [rec(target, "prefill", "prefill k=1", i, i < 1) for i in range(4)])
        records += _of(APART, [rec(target, "direct", "direct", i, i < 3) for i in range(4)])
        records += _of(APART, [rec(target, "prefill", "prefill k=1", i, True) for i in range(4)])
        over = [rec(target, "over_refusal", "xstest", i, i < 2, "over_refusal") for i in range(4)]
        records += _of(APART, over)
    return records


def test_in_apart_takes_harmful_prompts_of_the_named_sources_only():
    (harmful,) = _of(APART, [rec(BASE, "direct", "direct", 0, True)])
    (benign,) = _of(APART, [rec(BASE, "over_refusal", "xstest", 0, True, "over_refusal")])
    assert in_apart(harmful, [APART]) and not in_apart(harmful, [MAIN])
    assert not in_apart(harmful, ["XSTEST_PROMPTS.CSV"]) and not in_apart(harmful, [])
    assert not in_apart(benign, [APART])


def test_headline_leaves_the_apart_source_out():
    summary = summarize(two_sources(), TARGETS, apart=[APART])
    direct = entry(summary["metrics"], target=BASE, suite="direct")
    assert (direct["hits"], direct["n"]) == (1, 4)
    every = entry(summary["worst_case"], target=BASE, suite=ALL_ATTACKS)
    assert (every["hits"], every["n"]) == (2, 8)
    over = entry(summary["metrics"], target=BASE, metric="over_refusal")
    assert (over["hits"], over["n"]) == (2, 4)  # XSTest's safe prompts still count
    columns = [c["key"] for c in summary["headline"]["columns"]]
    assert columns == ["direct", "prefill", ALL_ATTACKS, "over_refusal"]
    cells = summary["headline"]["rows"][0]["cells"]
    assert [c["n"] for c in cells] == [4, 4, 8, 4] and cells[0]["rate"] == 0.25
    assert summary["records"] == 2 * (8 + 4)


def test_without_apart_every_prompt_counts():
    summary = summarize(two_sources(), TARGETS)
    direct = entry(summary["metrics"], target=BASE, suite="direct")
    assert (direct["hits"], direct["n"]) == (4, 8) and summary["apart"] == {}


def test_the_apart_section_has_its_own_rates():
    summary = summarize(two_sources(), TARGETS, apart=[APART, "missing.csv"])
    section = summary["apart"][APART]
    direct = entry(section["metrics"], target=GUARDED, suite="direct", judge="refusal")
    assert (direct["hits"], direct["n"], direct["rate"]) == (3, 4, 0.75)
    assert direct["ci_low"] < 0.75 < direct["ci_high"]
    assert not [e for e in section["metrics"] if e["metric"] != "attack_success"]
    every = entry(section["worst_case"], target=BASE, suite=ALL_ATTACKS)
    assert (every["hits"], every["n"]) == (7, 8)  # direct 3 of 4, prefill 4 of 4
    assert every["attacks"] == ["direct: direct", "prefill: prefill k=1"]
    columns = [c["key"] for c in section["headline"]["columns"]]
    assert columns == ["direct", "prefill", ALL_ATTACKS]
    assert section["records"] == 2 * 8
    empty = summary["apart"]["missing.csv"]
    assert (empty["records"], empty["metrics"], empty["headline"]["columns"]) == (0, [], [])


def test_report_shows_a_table_per_apart_source():
    records = two_sources()
    summary = summarize(records, TARGETS, apart=[APART, "missing.csv"])
    text = format_table(summary)
    main, apart = text.split(f"{APART} (reported apart): attack success")
    assert "25.0 %" in main and "75.0 %" not in main
    header, rule, base, guarded = apart.strip().splitlines()[:4]
    titles = ["target", "direct", "prefill (worst)", "all attacks (worst)"]
    assert re.split(r"\s{2,}", header) == titles and set(rule) == {"-", " "}
    assert base.startswith(BASE) and "75.0 % [" in base and "(n=4)" in base
    assert "100.0 % [" in guarded and "87.5 % [" in guarded and "(n=8)" in guarded
    assert "Judges: direct, prefill (worst), all attacks (worst): refusal." in apart
    assert text.endswith("No harmful prompts of this source were judged.")
    markdown = report_markdown(records, summary, [], "t")
    assert "## xstest\\_prompts.csv (reported apart): attack success" in markdown
    assert "| base | 75.0 % [" in markdown
    assert "reported apart" not in format_table(summarize(records, TARGETS))


def test_the_apart_options_have_the_schema_help() -> None:
    """--apart's help is the recipe schema's (its value: tests/eval/test_eval_options.py)."""
    help_text = " ".join(CliRunner().invoke(cli, ["eval", "--help"]).output.split())
    for key in ("apart", "apart_suites"):
        assert " ".join(SCHEMA["eval"][key].help.split()) in help_text


def test_apart_suites_limit_the_apart_sources_harmful_prompts(tmp_path) -> None:
    """eval.apart_suites = ["direct"]: the apart source's harmful prompt meets the direct
    attack only; the headline's prompts and the apart source's benign one are untouched."""
    sets = (
        [
            EvalPrompt("a:1", "main", True, source=MAIN),
            EvalPrompt("x:1", "apart", True, source=APART),
        ],
        [EvalPrompt("x:2", "safe", False, source=APART)],
        [],
    )

    def prompts(suite: str, **limits) -> list[str]:
        opts = EvalOptions(targets=[], out=tmp_path, apart=[APART], **limits)
        return sorted(c.prompt.prompt for c in build_cases(opts, suite, sets))

    assert prompts("direct", apart_suites=["direct"]) == ["apart", "main"]
    assert prompts("jailbreak", apart_suites=["direct"]) == ["main"] * 5
    assert prompts("over_refusal", apart_suites=["direct"]) == ["safe"]
    assert prompts("jailbreak") == ["apart"] * 5 + ["main"] * 5  # empty: every suite
