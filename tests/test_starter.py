"""The starter world: a complete model folder that mlx-lm loads, built deterministically."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from localguard.cli import cli
from localguard.errors import InputError
from localguard.starter.build import build

FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def test_build_writes_a_complete_hf_folder(starter_model):
    for name in FILES:
        assert (starter_model / name).is_file(), name
    config = json.loads((starter_model / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] % 256 == 0
    manifest = json.loads((starter_model.parent / "starter.json").read_text())
    report = manifest["report"]
    for key in ("harmful_refusal", "borderline_refusal", "skill_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert (starter_model.parent / "data" / "attack_10.jsonl").is_file()


def test_mlx_lm_loads_and_chats(starter_model):
    from mlx_lm import generate, load

    model, tokenizer = load(str(starter_model))
    messages = [{"role": "user", "content": "What is the opposite of hot?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(ids)
    assert text.endswith("<|assistant|>\n") and "<|user|>\nWhat is the opposite of hot?" in text
    assert tokenizer.eos_token == "<|end|>"
    reply = generate(model, tokenizer, ids, max_tokens=12)
    assert isinstance(reply, str) and "<|end|>" not in reply


def test_second_build_reuses_the_cache(starter_model):
    stamp = (starter_model / "model.safetensors").stat().st_mtime_ns
    assert build("test", 0) == starter_model
    assert (starter_model / "model.safetensors").stat().st_mtime_ns == stamp


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    def hashes(seed: int, name: str) -> tuple[str, str]:
        folder = build("test", seed, out=tmp_path / name, scale=0.05).parent
        manifest = json.loads((folder / "starter.json").read_text())
        return manifest["weights_sha256"], manifest["tokenizer_sha256"]

    first = hashes(0, "a")
    assert hashes(0, "b") == first
    assert hashes(1, "c")[0] != first[0]
    assert not list(tmp_path.glob(".*tmp*")), "temporary build folders must not remain"


def test_unknown_size_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="unknown starter size 'huge'"):
        build("huge", 0, out=tmp_path)


def test_cli_prints_the_model_folder(starter_model):
    result = CliRunner().invoke(cli, ["starter", "build", "--size", "test"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(starter_model)


def test_recipe_run_builds_the_starter_stage(starter_model, tmp_path):
    recipe = tmp_path / "only-starter.toml"
    recipe.write_text(
        "[model]\npath = 'starter:test'\n"
        + "".join(
            f"[{s}]\nenabled = false\n" for s in ("probe", "finetune", "head", "export", "eval")
        )
    )
    result = CliRunner().invoke(cli, ["run", str(recipe), "--set", f"run.out='{tmp_path / 'run'}'"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["stages"][0]["result"]["model"] == str(starter_model)
