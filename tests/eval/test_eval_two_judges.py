"""Several judges of attack success: one reply read by each, a record and a figure per judge,
the primary judge in the headline, their agreement (percent and Cohen's kappa), a resumed run
that judges without generating again, and the judge key of recipes and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from eval_helpers import BASE, TARGETS, entry, full_records, rec, small_options

from localguard.cli import cli
from localguard.errors import RecipeError
from localguard.eval import stage
from localguard.eval.judges import RefusalJudge
from localguard.eval.options import EvalOptions, Target, options_from_cli
from localguard.eval.report import format_table, report_markdown
from localguard.eval.summary import summarize
from localguard.files import clean_json
from localguard.recipe import load_recipe

LLM = "llm:j.gguf"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _counted(monkeypatch) -> list[int]:
    """Every generation stage.evaluate asks for, counted."""
    calls: list[int] = []
    real = stage.generate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "generate", counted)
    return calls


# --- an evaluation with two judges ------------------------------------------------------------


def test_two_judges_read_each_reply_once(
    tmp_path: Path, data: Path, starter_model: Path, stream_head: Path, monkeypatch
) -> None:
    """refusal then head: every attack reply gets two records (same output, each judge's
    verdict), benign prompts one; two entries per attack, the refusal matcher in the headline,
    and the pair's agreement in summary.json and the printed table."""
    target = Target("guarded", "mlx", str(starter_model), head=str(stream_head), guard="on")
    suites = ["direct", "prefill", "over_refusal"]
    opts = small_options(tmp_path, data, [target], suites=suites, max_prompts=2, prefill_tokens=[3])
    opts.judge = ["refusal", "head"]
    calls = _counted(monkeypatch)
    summary = stage.evaluate(opts)
    records = _read(opts.out / "results.jsonl")
    replies = {(r["suite"], r["attack"], r["prompt_id"]) for r in records}
    assert len(calls) == len(replies) == 6  # generated once, whatever the number of judges
    attack = [r for r in records if r["metric"] == "attack_success"]
    assert len(attack) == 2 * 4 and {r["judge"] for r in attack} == {"refusal", "head:guarded"}
    for key in {(r["suite"], r["attack"], r["prompt_id"]) for r in attack}:
        pair = [r for r in attack if (r["suite"], r["attack"], r["prompt_id"]) == key]
        assert len({r["output"] for r in pair}) == 1 and len(pair) == 2
    benign = [r for r in records if r["metric"] == "over_refusal"]
    assert len(benign) == 2 and {r["judge"] for r in benign} == {"refusal"}
    for judge in ("refusal", "head:guarded"):
        assert entry(summary["metrics"], suite="direct", judge=judge)["n"] == 2
        assert entry(summary["worst_case"], suite="prefill", judge=judge)["n"] == 2
    assert summary["judges"][:2] == ["refusal", "head:guarded"]
    assert {c["judge"] for c in summary["headline"]["columns"]} == {"refusal"}
    (agreement,) = summary["agreement"]
    assert agreement["target"] == "guarded" and agreement["n"] == 4
    assert agreement["judges"] == ["refusal", "head:guarded"]
    assert sum(map(sum, agreement["table"])) == 4
    saved = json.loads((opts.out / "summary.json").read_text())
    assert saved["agreement"][0]["judges"] == agreement["judges"]
    assert "Judge agreement on attack success: guarded: refusal vs head:guarded" in format_table(
        saved
    )
    assert "## Judge agreement" in (opts.out / "report.md").read_text()


class _Judge:
    """A second judge without a model: attack success = an even number of characters; it
    stops the run (a kill) at its call number kill_at."""

    name = "llm:fake.gguf"

    def __init__(self, kill_at: int = 0) -> None:
        self.calls, self.kill_at = 0, kill_at

    def verdicts(self, pairs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return [("unsafe", True) if len(r) % 2 == 0 else ("safe", False) for _, r in pairs]


def test_a_run_killed_between_judges_judges_the_stored_reply(
    tmp_path: Path, data: Path, starter_model: Path, monkeypatch
) -> None:
    opts = small_options(
        tmp_path, data, [Target("base", "mlx", str(starter_model))], suites=["direct"]
    )
    opts.max_prompts, opts.judge = 3, ["refusal", "llm"]
    second = _Judge(kill_at=2)  # the second reply's refusal record is written, then the kill
    monkeypatch.setattr(stage, "make_judges", lambda _: [RefusalJudge(), second])
    calls = _counted(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        stage.evaluate(opts)
    partial = _read(tmp_path / "eval.partial" / stage.PARTIAL_RESULTS)
    assert [r["judge"] for r in partial] == ["refusal", second.name, "refusal"]
    assert len(calls) == 2
    second.kill_at = 0
    calls.clear()
    stage.evaluate(opts)
    assert len(calls) == 1  # only the third reply is generated; the second is judged
    records = _read(opts.out / "results.jsonl")
    assert len(records) == 6
    for pid in {r["prompt_id"] for r in records}:
        pair = [r for r in records if r["prompt_id"] == pid]
        assert sorted(r["judge"] for r in pair) == sorted(["refusal", second.name])
        assert len({r["output"] for r in pair}) == 1


# --- the summary: the primary judge and the agreement -----------------------------------------


def _table_records(both: int, refusal_only: int, llm_only: int, neither: int) -> list[dict]:
    """BASE's direct prompts judged by the refusal matcher and an LLM judge, as a 2x2 table."""
    cells = [(True, True, both), (True, False, refusal_only), (False, True, llm_only)]
    pairs = [(a, b) for a, b, k in [*cells, (False, False, neither)] for _ in range(k)]
    return [
        rec(BASE, "direct", "direct", i, hit, judge=judge)
        for i, (first, second) in enumerate(pairs)
        for hit, judge in ((first, "refusal"), (second, LLM))
    ]


def test_agreement_and_kappa_on_a_known_table() -> None:
    """4 both, 1 refusal only, 2 llm only, 3 neither: agreement 0.7; chance 0.5 * 0.6 +
    0.5 * 0.4 = 0.5, so kappa (0.7 - 0.5) / (1 - 0.5) = 0.4."""
    summary = summarize(_table_records(4, 1, 2, 3), TARGETS, ["refusal", LLM])
    (agreement,) = summary["agreement"]
    assert agreement["judges"] == ["refusal", LLM] and agreement["n"] == 10
    assert agreement["table"] == [[4, 1], [2, 3]]
    assert agreement["agreement"] == pytest.approx(0.7)
    assert agreement["kappa"] == pytest.approx(0.4)
    pair = f"{BASE}: refusal vs {LLM} 70.0 % (kappa 0.40, n=10)"
    assert format_table(summary).splitlines()[-1] == f"Judge agreement on attack success: {pair}."
    markdown = report_markdown(_table_records(4, 1, 2, 3), summary, [], "t")
    assert f"| {BASE} | refusal | llm:j.gguf | 10 | 70.0 % | 0.40 | 4 | 1 | 2 | 3 |" in markdown


def test_agreement_only_over_replies_both_judged_and_undefined_kappa() -> None:
    records = _table_records(0, 0, 0, 3) + [rec(BASE, "direct", "direct", 9, True)]
    records += [rec(BASE, "over_refusal", "borderline", 0, True, "over_refusal")]
    (agreement,) = summarize(records, TARGETS)["agreement"]
    assert agreement["n"] == 3 and agreement["agreement"] == 1.0  # prompt 9: refusal only
    assert math.isnan(agreement["kappa"])  # both always said no success: undefined
    saved = clean_json(summarize(records, TARGETS))  # as summary.json holds it: null
    assert "(kappa n/a, n=3)" in format_table(saved)
    one = summarize([r for r in records if r["judge"] == "refusal"], TARGETS)
    assert one["agreement"] == [] and "Judge agreement" not in format_table(one)


def test_the_first_judge_leads_the_headline() -> None:
    """Without the evaluation's order an LLM judge leads (judge_rank); given, the first does."""
    records = full_records()
    assert summarize(records, TARGETS)["headline"]["columns"][0]["judge"] == LLM
    summary = summarize(records, TARGETS, ["refusal", LLM])
    assert summary["judges"][:2] == ["refusal", LLM]
    assert summary["headline"]["columns"][0]["judge"] == "refusal"
    row = next(r for r in summary["headline"]["rows"] if r["target"] == BASE)
    assert row["cells"][0]["judge"] == "refusal" and row["cells"][0]["rate"] == 0.5


# --- the judge key: recipes and the command line ----------------------------------------------


def _recipe(tmp_path: Path, judge: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(f'[model]\npath = "starter:test"\n[eval]\njudge = {judge}\n')
    return path


def test_recipe_judge_takes_one_name_or_a_list(tmp_path: Path) -> None:
    one = load_recipe(_recipe(tmp_path, '"head"'))["eval"]["judge"]
    assert EvalOptions(targets=[], out=tmp_path, judge=one).judge == ["head"]
    two = load_recipe(_recipe(tmp_path, '["refusal", "llm"]'))["eval"]["judge"]
    assert EvalOptions(targets=[], out=tmp_path, judge=two).judge == ["refusal", "llm"]
    assert load_recipe(None, ["eval.judge=llm"])["eval"]["judge"] == "llm"


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        (
            '"vibes"',
            r"eval\.judge must be .*'refusal' or 'head' or 'llm', not a string \('vibes'\)",
        ),
        ('["refusal", "vibes"]', r"eval\.judge\[1\] = 'vibes' is not one of refusal, head, llm"),
        ("3", r"eval\.judge must be"),
    ],
)
def test_a_bad_recipe_judge_is_a_one_line_error(tmp_path: Path, judge: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(_recipe(tmp_path, judge))
    assert "\n" not in str(error.value)
    result = CliRunner().invoke(cli, ["run", str(_recipe(tmp_path, judge))])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output


def test_judge_option_repeats(tmp_path: Path, starter_model: Path) -> None:
    command = cli.commands["eval"]
    args = ["--model", str(starter_model), "--out", str(tmp_path / "o"), "--judge", "refusal"]
    with command.make_context("eval", [*args, "--judge", "head"]) as ctx:
        assert options_from_cli(dict(ctx.params)).judge == ["refusal", "head"]
    runner = CliRunner()
    twice = runner.invoke(cli, ["eval", *args, "--judge", "refusal"])
    assert twice.exit_code == 2 and twice.output.startswith("error: ")
    assert len(twice.output.splitlines()) == 1 and "names 'refusal' twice" in twice.output
    unknown = runner.invoke(cli, ["eval", *args, "--judge", "vibes"])
    assert unknown.exit_code == 2 and "--judge" in unknown.output
