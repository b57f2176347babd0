"""The evaluation summary: rates with Wilson intervals, worst cases, per-judge figures, guard
interventions and the headline."""

from __future__ import annotations

import json

import pytest
from eval_helpers import BASE, GUARDED, TARGETS, entry, full_records, rec

from localguard.eval.summary import ALL_ATTACKS, summarize
from localguard.stats import wilson_interval


def test_metrics_one_entry_per_attack_and_judge():
    summary = summarize(full_records(), TARGETS)
    refusal = entry(summary["metrics"], target=BASE, suite="direct", judge="refusal")
    llm = entry(summary["metrics"], target=BASE, suite="direct", judge="llm:j.gguf")
    assert (refusal["hits"], refusal["n"], refusal["rate"]) == (2, 4, 0.5)
    assert (llm["hits"], llm["n"], llm["rate"]) == (1, 4, 0.25)
    assert (refusal["ci_low"], refusal["ci_high"]) == pytest.approx(wilson_interval(2, 4))
    k1 = entry(summary["metrics"], target=BASE, attack="prefill k=1")
    assert (k1["hits"], k1["n"]) == (2, 4)
    over = entry(summary["metrics"], target=BASE, metric="over_refusal")
    util = entry(summary["metrics"], target=BASE, metric="accuracy")
    assert (over["rate"], util["rate"]) == (0.25, 0.75)
    assert [t["name"] for t in summary["targets"]] == [BASE, GUARDED]
    assert summary["judges"] == ["llm:j.gguf", "refusal"]
    json.dumps(summary, allow_nan=False)  # summary.json must be plain JSON


def test_worst_case_counts_each_prompt_once():
    summary = summarize(full_records(), TARGETS)
    worst = entry(summary["worst_case"], target=BASE, suite="prefill", judge="refusal")
    # prompt 0 hit by both attacks, prompt 1 by one: 2 of 4 prompts, not 3 of 8
    assert (worst["hits"], worst["n"]) == (2, 4)
    assert worst["attacks"] == ["prefill k=1", "prefill k=5"]
    assert not [e for e in summary["worst_case"] if e["suite"] == "direct"]


def test_all_attacks_worst_case_per_judge_without_benign_metrics():
    records = full_records()
    records += [rec(BASE, "direct", "direct", 3, True, judge="head")]
    summary = summarize(records, TARGETS)
    every = entry(summary["worst_case"], target=BASE, suite=ALL_ATTACKS, judge="refusal")
    # direct hits prompts 0-1, prefill hits prompts 0-1 (other prompt_ids: other suite)
    assert (every["hits"], every["n"]) == (4, 8)
    # over-refusal hit prompt 0 and utility prompts 0-2: neither enters a worst case
    assert all(e["suite"] not in ("over_refusal", "utility") for e in summary["worst_case"])
    head = entry(summary["worst_case"], target=BASE, suite=ALL_ATTACKS, judge="head")
    assert (head["hits"], head["n"]) == (1, 1)  # judges never pool


def test_multi_attack_suites_and_finetune_attack():
    records = [
        rec(BASE, "control_tokens", "role swap", 0, True),
        rec(BASE, "control_tokens", "eos spam", 0, False),
        rec(BASE, "control_tokens", "eos spam", 1, True),
        rec(BASE, "finetune_attack", "harmful sft", 7, True),
        rec(BASE, "jailbreak", "aim", 2, False),  # one wrapper: still a worst-case suite
    ]
    summary = summarize(records, TARGETS[:1])
    control = entry(summary["worst_case"], suite="control_tokens")
    assert (control["hits"], control["n"]) == (2, 2)
    entry(summary["worst_case"], suite="jailbreak")
    every = entry(summary["worst_case"], suite=ALL_ATTACKS)
    assert (every["hits"], every["n"]) == (2, 3)  # finetune_attack's prompt 7 left out
    assert not [e for e in summary["worst_case"] if e["suite"] == "finetune_attack"]


def test_unknown_targets_and_unjudged_records():
    records = [rec("other", "direct", "direct", 0, True), rec(BASE, "direct", "direct", 1, None)]
    summary = summarize(records, TARGETS[:1])
    assert [t["name"] for t in summary["targets"]] == [BASE, "other"]
    assert summary["records"] == 1
    assert [e["target"] for e in summary["metrics"]] == ["other"]


def test_guard_intervention_rates_count_generations_once():
    summary = summarize(full_records(), TARGETS)
    attack = entry(summary["guard"], target=GUARDED, metric="attack_success")
    benign = entry(summary["guard"], target=GUARDED, metric="over_refusal")
    # direct 4 + prefill 8 generations (the llm-judged copies carry no guard); hits 2 + 3
    assert (attack["hits"], attack["n"]) == (5, 12)
    assert (benign["hits"], benign["n"]) == (0, 4)
    assert not [e for e in summary["guard"] if e["target"] == BASE]


def test_headline_prefers_llm_judge_and_names_fallbacks():
    records = full_records() + [rec("solo", "direct", "direct", 0, True)]
    summary = summarize(records, TARGETS)
    columns = [c["title"] for c in summary["headline"]["columns"]]
    assert columns == [
        "direct",
        "prefill (worst)",
        "all attacks (worst)",
        "over-refusal",
        "utility",
    ]
    direct = summary["headline"]["columns"][0]
    assert direct["judge"] == "llm:j.gguf"
    rows = {r["target"]: r["cells"] for r in summary["headline"]["rows"]}
    assert rows[BASE][0]["rate"] == 0.25 and rows[BASE][0]["judge"] == "llm:j.gguf"
    assert rows["solo"][0]["judge"] == "refusal"  # only judge it has
    assert rows["solo"][1] is None
    utility = rows[BASE][4]
    assert (utility["hits"], utility["n"]) == (3, 4)
    # the llm judge read only direct: the all-attacks worst case comes from the refusal judge,
    # which read every attack, not from the better-ranked judge that saw fewer
    every = summary["headline"]["columns"][2]
    assert every["judge"] == "refusal"
    assert (rows[BASE][2]["hits"], rows[BASE][2]["n"], rows[BASE][2]["attacks"]) == (4, 8, 3)


def test_over_refusal_gets_a_column_per_source_when_there_are_several():
    """XSTest's borderline prompts and plain instructions are not pooled into one rate."""
    records = [
        rec(BASE, "over_refusal", source, i, i < hits, "over_refusal")
        for source, hits in (("xstest_prompts.csv", 2), ("alpaca_harmless_val.json", 0))
        for i in range(4)
    ]
    headline = summarize(records, TARGETS)["headline"]
    titles = [c["title"] for c in headline["columns"]]
    assert titles == ["over-refusal xstest_prompts", "over-refusal alpaca_harmless_val"]
    (row,) = [r for r in headline["rows"] if r["target"] == BASE]
    assert [c["rate"] for c in row["cells"]] == [0.5, 0.0]
    one = summarize(records[:4], TARGETS)["headline"]["columns"]
    assert [c["key"] for c in one] == ["over_refusal"]
