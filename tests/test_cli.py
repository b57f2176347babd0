"""The command line: help, exit codes (0 ok, 2 user error, 1 bug), dry runs and doctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from localguard import cli as cli_module
from localguard.cli import cli

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.toml"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "doctor" in result.output and "run" in result.output


def test_dry_run_prints_the_plan():
    result = invoke("run", str(DEMO), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1. starter" in result.output and "finetune" in result.output
    assert "risk=probe" in result.output


def test_dry_run_with_override():
    result = invoke("run", str(DEMO), "--dry-run", "--set", "finetune.iters=7")
    assert result.exit_code == 0, result.output
    assert "iters=7" in result.output


def test_misspelled_key_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[finetune]\nlearnig_rate = 1e-4\n")
    result = invoke("run", str(bad), "--dry-run")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {bad}: unknown key finetune.learnig_rate; did you mean learning_rate?"
    )


def test_unrunnable_stage_exits_2_before_anything_runs(tmp_path, monkeypatch):
    from localguard import runner

    known = runner.executors()
    monkeypatch.setattr(runner, "executors", lambda: {k: known[k] for k in known if k != "eval"})
    result = invoke("run", str(DEMO), "--set", f"run.out='{tmp_path / 'out'}'")
    assert result.exit_code == 2
    assert "cannot run stage" in result.output
    assert not (tmp_path / "out").exists()


def test_internal_error_exits_1_and_debug_shows_traceback(monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("localguard.plan.build_plan", broken)
    result = invoke("run", str(DEMO), "--dry-run")
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.output
    assert "Traceback" not in result.output
    result = invoke("--debug", "run", str(DEMO), "--dry-run")
    assert result.exit_code == 1 and "Traceback" in result.output


def test_unknown_command_is_a_usage_error():
    assert invoke("fly").exit_code == 2


def test_doctor_reports_every_heading():
    result = invoke("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"system", "runtime", "storage", "packages"}
    assert report["runtime"]["mlx device"].startswith("Device(")
    assert "GFLOP/s" in report["runtime"]["matmul 1024 f32"]
    assert report["runtime"]["llama.cpp"] == report["packages"]["llama-cpp-python"]
    assert report["storage"]["hub offline"].startswith("yes")
    for name in ("mlx", "mlx-lm", "llama-cpp-python", "gguf"):
        assert report["packages"][name] != "missing"


def test_doctor_text_output():
    result = invoke("doctor", "--no-measure")
    assert result.exit_code == 0
    assert "[system]" in result.output and "blas" in result.output


def test_console_script_preloads_openblas_itself():
    """The installed `localguard` command re-executes itself with OpenBLAS on Linux."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the BLAS preload is a Linux measure")
    exe = shutil.which("localguard", path=str(Path(sys.executable).parent))
    assert exe, "the localguard console script is not installed next to this python"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LOCALGUARD_BLAS_REEXEC")}
    out = subprocess.run(
        [exe, "doctor", "--json", "--no-measure"],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    assert "OpenBLAS preloaded" in json.loads(out)["system"]["blas"]


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "localguard", "--version"],
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == f"localguard, version {cli_module.__version__}"


def test_probe_train_force_replaces_only_an_older_probe(tmp_path):
    """probe train into an existing folder: exit 2 with one line unless --force, which
    replaces an older probe; a folder that is not a probe is never replaced."""
    pytest.importorskip("mlx_lm")
    from tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "model")
    data = tmp_path / "prompts.jsonl"
    rows = [
        {
            "prompt": f"How do I hurt the {w}?" if i % 2 else f"Tell me about the {w}.",
            "label": i % 2,
        }
        for i, w in enumerate(["cat", "river", "robot", "bird", "map", "door"] * 2)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "probe"
    base = ["probe", "train", "--model", str(model), "--data", str(data), "--out", str(out)]

    first = invoke(*base)
    assert first.exit_code == 0, first.output
    manifest = json.loads((out / "head.json").read_text())["manifest"]
    assert manifest["seed"] == 0

    again = invoke(*base, "--seed", "1")
    assert again.exit_code == 2
    assert again.output.strip() == f"error: {out} already exists; pass --force to replace it"
    assert json.loads((out / "head.json").read_text())["manifest"]["seed"] == 0

    forced = invoke(*base, "--seed", "1", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "head.json").read_text())["manifest"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "probe", "prompts.jsonl"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    other = invoke(*base[:-1], str(mine), "--force")
    assert other.exit_code == 2
    assert (
        other.output.strip()
        == f"error: {mine}: exists and is not a probe folder; choose another output"
    )
    assert (mine / "notes.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke(*base[:-1], str(empty)).exit_code == 0


def test_llama_cpp_features_are_read_per_section() -> None:
    """A CUDA build's system info: its CUDA switches are not CPU features, and Metal/CUDA count
    as backends only where they have a section."""
    from localguard.backends.llamacpp.runtime import enabled_features

    cuda = "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | FA_ALL_QUANTS = 0 | CPU : SSE3 = 1 | AVX = 1 | "
    assert enabled_features(cuda) == {"CUDA": ["USE_GRAPHS"], "CPU": ["SSE3", "AVX"]}
    metal = "Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | ACCELERATE = 0 | "
    assert enabled_features(metal) == {"Metal": ["EMBED_LIBRARY"], "CPU": ["NEON", "ARM_FMA"]}
