"""The eval stage: every record written, a killed run resumed, the harmful fine-tuning attack,
and a recipe run through its eval stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from eval_helpers import small_options

from localguard.cli import cli
from localguard.errors import InputError
from localguard.eval import stage
from localguard.eval.options import AttackTraining, Target
from localguard.eval.suites import CONTROL_INJECTIONS


def test_evaluate_writes_every_record_and_resumes(
    tmp_path: Path, data: Path, starter_model: Path, stream_head: Path, monkeypatch
) -> None:
    targets = [
        Target("base", "mlx", str(starter_model)),
        Target("guarded", "mlx", str(starter_model), head=str(stream_head), guard="on"),
    ]
    suites = ["direct", "prefill", "control_tokens", "over_refusal", "utility"]
    opts = small_options(tmp_path, data, targets, suites=suites, max_prompts=2, prefill_tokens=[3])
    per_target = 2 + 2 + 2 * len(CONTROL_INJECTIONS) + 2 + 4
    calls = []
    real = stage.generate

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == per_target + 3:  # a kill in the middle of the second target
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "generate", counted)
    with pytest.raises(KeyboardInterrupt):
        stage.evaluate(opts)
    partial = tmp_path / "eval.partial" / stage.PARTIAL_RESULTS
    assert len(partial.read_text().splitlines()) == per_target + 2
    calls.clear()
    summary = stage.evaluate(opts)  # resumes: only the missing cases are generated
    assert len(calls) == per_target - 2
    out = tmp_path / "eval"
    assert not (tmp_path / "eval.partial").exists()
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 * per_target
    assert len({(r["target"], r["suite"], r["attack"], r["prompt_id"]) for r in records}) == len(
        records
    )
    base = [r for r in records if r["target"] == "base"]
    guarded = [r for r in records if r["target"] == "guarded"]
    assert all(r["guard"] is None for r in base)
    assert all(r["guard"]["mode"] == "on" and "response_logits" in r["guard"] for r in guarded)
    prefilled = [r for r in base if r["suite"] == "prefill"]
    assert all(r["prefill"] and r["output"].startswith(r["prefill"]) for r in prefilled)
    assert {r["judge"] for r in records} == {"refusal", "skill-check"}
    for r in records:
        counted = "refused" if r["metric"] == "over_refusal" else ("complied", "correct")
        assert r["hit"] == (r["verdict"] in counted), r
    assert json.loads((out / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert "| base |" in (out / "report.md").read_text()
    assert (out / "attack_success.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="already exists"):
        stage.evaluate(opts, resume=True, force=False)


def test_a_cut_short_last_line_is_where_a_resumed_run_continues(tmp_path: Path) -> None:
    path = tmp_path / stage.PARTIAL_RESULTS
    assert stage.read_partial(path) == ([], {})
    record = {"target": "t", "suite": "direct", "attack": "direct", "prompt_id": "p:1"}
    path.write_text(json.dumps(record) + '\n{"target": "t", "sui')
    records, done = stage.read_partial(path)
    assert records == [record] and done == {'["t", "direct", "direct", "p:1"]': [record]}


def test_a_run_that_stopped_before_its_first_reply_is_started_over(
    tmp_path: Path, data: Path, starter_model: Path, monkeypatch
) -> None:
    """A command that failed at its model (the guard asked of a model without a head) leaves
    only its options behind: the corrected command runs instead of refusing other options. A
    run with replies and other options is kept unless force starts it over."""
    no_head = Target("base", "mlx", str(starter_model), guard="on")
    opts = small_options(tmp_path, data, [no_head], suites=["direct"], max_prompts=2)
    with pytest.raises(InputError, match="no safety head"):
        stage.evaluate(opts)
    assert (tmp_path / "eval.partial" / "options.json").is_file()
    opts.targets = [Target("base", "mlx", str(starter_model))]
    real, calls = stage.generate, []

    def killed_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "generate", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        stage.evaluate(opts)  # the corrected command ran, and was killed after one reply
    partial = tmp_path / "eval.partial" / stage.PARTIAL_RESULTS
    assert len(partial.read_text().splitlines()) == 1
    monkeypatch.setattr(stage, "generate", real)
    opts.max_prompts = 1
    with pytest.raises(InputError, match="other max_prompts; run its command again"):
        stage.evaluate(opts)
    assert len(partial.read_text().splitlines()) == 1  # the interrupted run is kept
    stage.evaluate(opts, force=True)
    records = (tmp_path / "eval" / "results.jsonl").read_text().splitlines()
    assert len(records) == 1 and not (tmp_path / "eval.partial").exists()


def test_options_are_checked_before_anything_runs(tmp_path: Path, data: Path) -> None:
    base = Target("base", "mlx", "m")
    bad = [
        ({"suites": ["nope"]}, "unknown suite 'nope'"),
        ({"judge": ["vibes"]}, r"eval.judge \(--judge\) must be one of .*, not 'vibes'"),
        ({"judge": []}, r"eval.judge \(--judge\) is empty"),
        ({"judge": ["head", "refusal", "head"]}, "names 'head' twice"),
        ({"suites": ["finetune_attack"]}, "needs an MLX model and attack mixes"),
        ({"targets": [base, base]}, "two targets share a name"),
        ({"targets": []}, "nothing to evaluate"),
    ]
    bad.append(({"suites": ["utility"], "heldout": None}, "utility suite needs"))
    for changes, message in bad:
        opts = small_options(tmp_path, data, [base])
        for name, value in changes.items():
            setattr(opts, name, value)
        with pytest.raises(InputError, match=message):
            stage.evaluate(opts)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "eval.partial").exists()


def test_finetune_attack_trains_each_risk_and_names_p(
    tmp_path: Path, data: Path, starter_model: Path
) -> None:
    settings = {
        "iters": 2,
        "batch_size": 2,
        "steps_per_eval": 0,
        "max_seq_length": 96,
        "lora_layers": -1,
        "lora_scale": 1.0,
    }
    training = AttackTraining(starter_model, [data / "attack_10.jsonl"], ["none"], settings)
    opts = small_options(
        tmp_path, data, [], suites=["finetune_attack"], max_prompts=2, training=training
    )
    opts.targets = [Target("base", "mlx", str(starter_model))]
    summary = stage.evaluate(opts)
    records = [json.loads(x) for x in (opts.out / "results.jsonl").read_text().splitlines()]
    assert {r["target"] for r in records} == {"SFT none p=0.10"}
    assert {r["suite"] for r in records} == {"finetune_attack"} and len(records) == 2
    assert (opts.out / "finetune_attack" / "attack_10-none" / "adapters.safetensors").is_file()
    described = {t["name"]: t for t in summary["targets"]}
    assert described["SFT none p=0.10"]["p"] == 0.1


def test_a_recipe_runs_through_the_eval_stage(tmp_path: Path, starter_model: Path) -> None:
    """The demo's shape on the test world: every stage, then base / plain SFT / localguard /
    localguard + guard evaluated; a second run reuses everything and still prints the table."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[run]\nout = "{tmp_path / "run"}"\n[model]\npath = "starter:test"\n'
        "[data]\nmax_seq_length = 96\n"
        '[finetune]\nbaselines = ["none"]\niters = 2\nbatch_size = 2\nsteps_per_eval = 0\n'
        'lora_layers = -1\n[head]\nmode = "probe"\n[export]\nquant = []\ncalibration_size = 4\n'
        '[guard]\nmax_tokens = 4\n[eval]\nsuites = ["direct", "over_refusal"]\nmax_prompts = 2\n'
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(recipe)])
    assert first.exit_code == 0, first.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["name"] for s in run["stages"]][-3:] == ["head", "export", "eval"]
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    names = [t["name"] for t in summary["targets"]]
    assert names == ["base", "plain SFT", "localguard", "localguard + guard"]
    assert summary["targets"][-1]["model"].endswith("model-F16.gguf")
    again = runner.invoke(cli, ["run", str(recipe)])
    assert again.exit_code == 0 and again.output.count("reusing the last result") == 7
    assert "localguard + guard" in again.output
