"""Evaluation options: their defaults, and `localguard eval`'s command line turned into them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from localguard.backends.base import Sampling
from localguard.cli import cli
from localguard.errors import InputError
from localguard.eval.options import EvalOptions, options_from_cli
from localguard.guard import GuardSettings
from localguard.recipe import default


def test_defaults_are_the_recipe_schema_defaults() -> None:
    opts = EvalOptions(targets=[], out=Path("out"))
    assert opts.suites == ["direct", "prefill", "over_refusal"] == default("eval", "suites")
    assert opts.prefill_tokens == [5, 10, 20] == default("eval", "prefill_tokens")
    assert (opts.sources, opts.judge, opts.max_prompts, opts.seed) == ([], ["refusal"], 0, 0)
    assert opts.judge_model is None and opts.rubric is None and opts.heldout is None
    assert opts.sampling == Sampling(max_tokens=64, seed=0) and opts.guard == GuardSettings()
    opts.suites.append("utility")  # every instance has its own lists
    assert EvalOptions(targets=[], out=Path("out")).suites == default("eval", "suites")


def _cli_values(*args: str) -> dict:
    """The option values `localguard eval ARGS` hands to its command function."""
    command = cli.commands["eval"]
    with command.make_context("eval", list(args)) as ctx:
        return dict(ctx.params)


def test_command_line_values_become_options(tmp_path: Path, starter_model: Path) -> None:
    values = _cli_values(
        "--model", str(starter_model), "--head", str(tmp_path / "head"), "--guard", "on",
        "--guard", "off", "--prefill-tokens", "3, 7", "--seed", "5", "--max-tokens", "9",
        "--out", str(tmp_path / "out"), "--apart", "a.csv", "--apart", "b.csv",
    )  # fmt: skip
    opts = options_from_cli(values)
    assert opts.apart == ["a.csv", "b.csv"]
    assert [(t.name, t.guard) for t in opts.targets] == [
        ("model guard on", "on"),
        ("model guard off", "off"),
    ]
    assert {(t.backend, t.head) for t in opts.targets} == {("mlx", str(tmp_path / "head"))}
    assert opts.heldout == starter_model.parent / "data"  # the world of a starter model
    assert opts.suites == ["direct", "prefill", "over_refusal", "utility"]
    assert opts.prefill_tokens == [3, 7] and opts.out == tmp_path / "out"
    assert (opts.sampling.seed, opts.sampling.max_tokens, opts.seed) == (5, 9, 5)
    assert opts.training is None and opts.judge == ["refusal"]


def test_eval_command_line(tmp_path: Path, starter_model: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["eval", "--model", str(starter_model), "--suite", "direct", "--max-prompts", "2",
            "--max-tokens", "4", "--out", str(out)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "direct" in result.output and (out / "results.jsonl").is_file()
    assert runner.invoke(cli, args).exit_code == 2  # OUT exists
    bad = [
        ["eval", "--model", "missing.gguf", "--out", str(tmp_path / "x")],
        ["eval", "--model", str(starter_model), "--guard", "on", "--out", str(tmp_path / "y"),
         "--suite", "direct", "--max-prompts", "1"],
        ["eval", "--model", str(starter_model), "--prefill-tokens", "a", "--out", str(tmp_path)],
    ]  # fmt: skip
    for argv in bad:
        result = runner.invoke(cli, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert result.output.startswith("error: ") and len(result.output.splitlines()) == 1
    assert "needs a safety head" in runner.invoke(cli, bad[1]).output


def test_a_gguf_without_a_head_is_evaluated_with_the_guard_off(
    tmp_path: Path, starter_model: Path
) -> None:
    """A plain llama.cpp file (a user's own model) gets the default of an MLX model without
    --head: guard off; asking for the guard is a one-line error before anything runs."""
    from localguard.backends.llamacpp.convert import convert_to_gguf

    plain = tmp_path / "plain.gguf"
    convert_to_gguf(starter_model, plain, outtype="f32")
    out = str(tmp_path / "out")
    opts = options_from_cli(_cli_values("--model", str(plain), "--out", out))
    assert [(t.name, t.backend, t.guard) for t in opts.targets] == [("plain", "llamacpp", "off")]
    with pytest.raises(InputError, match="needs a safety head: give --head .MLX. or a GGUF"):
        options_from_cli(_cli_values("--model", str(plain), "--guard", "on", "--out", out))
