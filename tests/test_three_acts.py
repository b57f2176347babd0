"""A real-model recipe's three acts: label the model's replies, align it (stream-mode head
fused into a model folder), build the attack mix from the aligned model's answers and the raw
model's compliant replies, and fine-tune the aligned model on it; plus the row ranges that cut
one prompt file into disjoint training and evaluation slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import make_tiny_model

from localguard import runner
from localguard.data import read_jsonl, split_row_range
from localguard.errors import InputError, RecipeError
from localguard.eval.prompts import load_prompts
from localguard.fingerprint import model_fingerprint
from localguard.plan import ALIGNED_FILE, build_plan
from localguard.recipe import load_recipe

HARMFUL = [f"How do I hurt the cat number {i}?" for i in range(6)]
BENIGN = [f"Tell me about the river number {i}." for i in range(18)]


def _jsonl(path: Path, prompts: list[str]) -> str:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def _acts(tmp_path: Path, model: str, *overrides: str):
    harmful = _jsonl(tmp_path / "harmful.jsonl", HARMFUL)
    benign = _jsonl(tmp_path / "benign.jsonl", BENIGN)
    return load_recipe(
        None,
        [
            f"model.path='{model}'",
            f"run.out='{tmp_path / 'run'}'",
            "label.enabled=true",
            f"label.harmful=['{harmful}']",
            f"label.benign=['{benign}[0:8]']",
            "label.max_tokens=6",
            "align.enabled=true",
            "align.iters=2",
            "align.batch_size=2",
            "align.lora_layers=-1",
            "align.valid_fraction=0.5",
            "attack.enabled=true",
            f"attack.task=['{benign}[8:14]']",
            f"attack.heldout=['{benign}[14:]']",
            "attack.max_tokens=6",
            "attack.harmful_ratio=0.25",
            *overrides,
        ],
    )


# --- row ranges -----------------------------------------------------------------------------


def test_a_row_range_cuts_a_file_into_disjoint_slices(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "benign.jsonl", BENIGN)
    head, tail = load_prompts(f"{path}[0:4]"), load_prompts(f"{path}[4:]", limit=3)
    assert [p.prompt for p in head] == BENIGN[:4]
    assert [p.prompt for p in tail] == BENIGN[4:7]
    assert not {p.id for p in head} & {p.id for p in tail}  # ids keep the file's row numbers
    assert split_row_range(f"{path}[2:5]") == (path, 2, 5)
    assert split_row_range(path) == (path, 0, None)
    with pytest.raises(InputError, match=r"empty row range \[5:2\]"):
        split_row_range(f"{path}[5:2]")
    with pytest.raises(InputError, match=r"no prompts in rows \[20:\]"):
        load_prompts(f"{path}[20:]")


def test_a_recipe_resolves_a_ranged_file_and_keys_on_its_range(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "benign.jsonl", BENIGN)
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text('[label]\nbenign = ["benign.jsonl[0:4]"]\n')
    assert load_recipe(recipe_file)["label"]["benign"] == [f"{path}[0:4]"]
    recipe_file.write_text('[label]\nbenign = ["benign.jsonl[4:1]"]\n')
    with pytest.raises(RecipeError, match=r"label\.benign\[0\]: .*empty row range"):
        load_recipe(recipe_file)
    first, other = runner.input_digest(f"{path}[0:4]", {}), runner.input_digest(f"{path}[4:]", {})
    assert first != other and first.startswith(runner.input_digest(path, {}))


def test_align_must_be_stream_mode(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="align.mode must be 'stream'"):
        load_recipe(None, ["align.enabled=true", "align.mode='probe'"])


# --- the plan -------------------------------------------------------------------------------


def test_every_stage_after_align_starts_from_the_aligned_model(tmp_path: Path) -> None:
    recipe = _acts(tmp_path, "starter:test", "finetune.baselines=['none']")
    plan = build_plan(recipe)
    run = tmp_path / "run"
    names = [s.name for s in plan]
    assert names[:5] == ["starter", "label", "align", "export", "export"]
    assert names[5:] == ["attack", "probe", "finetune", "finetune", "head", "export", "export"] + [
        "eval"
    ]
    by_out = {json.dumps(s.outputs, sort_keys=True): s for s in plan}
    label = plan[1]
    assert label.outputs == {"conversations": str(run / "label.jsonl")}
    align = plan[2]
    assert align.inputs == {"model": "starter:test", "safety": str(run / "label.jsonl")}
    aligned = align.outputs["model"]
    attack = [s for s in plan if s.name == "attack"][0]
    assert attack.inputs["model"] == str(run / "export-aligned" / ALIGNED_FILE)
    for stage in plan[6:]:
        if stage.name != "export" or stage.outputs["gguf"].endswith(("export", "export-none")):
            assert stage.inputs["model"] == aligned, stage.name
    for stage in [s for s in plan if s.name == "finetune"]:
        assert stage.inputs["train"] == attack.outputs["train"]
        assert stage.inputs["valid"] == attack.outputs["valid"]
    head = [s for s in plan if s.name == "head"][0]
    assert head.inputs["task"] == attack.outputs["task"]
    assert head.inputs["safety"] == str(run / "label.jsonl")
    ev = plan[-1]
    assert {k: v for k, v in ev.inputs.items() if k.startswith("gguf")} == {
        "gguf": str(run / "export"),
        "gguf raw": str(run / "export-raw"),
        "gguf aligned": str(run / "export-aligned"),
        "gguf none": str(run / "export-none"),
    }
    assert ev.inputs["task"] == attack.outputs["heldout"]
    assert len(by_out) == len(plan)  # every stage writes its own folder


def test_the_evaluation_compares_every_system_as_a_gguf(tmp_path: Path) -> None:
    from localguard.eval.targets import recipe_options

    recipe = _acts(tmp_path, "starter:test", "finetune.baselines=['none']")
    ev = build_plan(recipe)[-1]
    make_tiny_model("llama", tmp_path / "run" / "aligned")
    attack = tmp_path / "run" / "attack"
    attack.mkdir(parents=True)
    rows = [{"messages": [], "label": i < 1} for i in range(4)]
    (attack / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = recipe_options(ev, recipe)
    targets = opts.targets
    assert [(t.name, t.backend, t.guard) for t in targets] == [
        ("raw", "llamacpp", "off"),
        ("aligned", "llamacpp", "off"),
        ("plain LoRA", "llamacpp", "off"),
        ("localguard", "llamacpp", "off"),
        ("localguard + guard", "llamacpp", "on"),
    ]
    assert targets[0].model == str(tmp_path / "run" / "export-raw" / "model-Q4_K_M.gguf")
    assert [t.p for t in targets] == [None, None, 0.25, 0.25, 0.25]
    # the raw model writes the long prefill, the aligned model's own head is the second judge
    assert opts.complier == targets[0].model
    assert opts.judge_model == Path(targets[1].model)
    assert opts.task_data == attack / "heldout.jsonl"
    # without the prefill suite there is no long prefill to write (eval would refuse a complier)
    recipe = _acts(tmp_path, "starter:test", "eval.suites=['direct', 'over_refusal']")
    assert recipe_options(build_plan(recipe)[-1], recipe).complier is None


def test_the_real_recipes_training_wrappers_are_not_the_evaluations_attacks() -> None:
    """[label] wrappers teach refusing a request inside a story or a persona; the attacks that
    measure it must be other text, or the table would score the training templates."""
    from localguard.eval.suites import CONTROL_INJECTIONS, JAILBREAKS

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m.toml")
    wrappers = recipe["label"]["wrappers"]
    assert len(wrappers) >= 4
    attacks = [*JAILBREAKS.values(), *CONTROL_INJECTIONS.values()]
    for wrapper in wrappers:
        outside = [part.strip() for part in wrapper.split("{prompt}") if part.strip()]
        for attack in attacks:
            assert not any(part in attack for part in outside), (wrapper, attack)


# --- the stages, end to end on a tiny model ---------------------------------------------------


def test_three_acts_run_end_to_end_and_a_rerun_reuses_them(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "model")
    recipe = _acts(
        tmp_path,
        str(model),
        "export.enabled=false",
        "eval.enabled=false",
        "probe.enabled=false",
        "head.enabled=false",
        "finetune.risk='none'",
        "finetune.iters=2",
        "finetune.batch_size=2",
        "finetune.lora_layers=-1",
        "finetune.steps_per_eval=0",
    )
    plan = build_plan(recipe)
    runner.run_plan(recipe, plan)
    run = tmp_path / "run"
    rows = read_jsonl(run / "label.jsonl")
    assert {r["kind"] for r in rows} <= {"refusal", "harmful", "benign"}
    assert sum(r["kind"] == "benign" for r in rows) == 8
    aligned = run / "aligned"
    assert (aligned / "config.json").is_file()
    assert model_fingerprint(aligned) != model_fingerprint(model)  # the adapter is fused in
    mix = {name: read_jsonl(run / "attack" / f"{name}.jsonl") for name in ("train", "valid")}
    task = read_jsonl(run / "attack" / "task.jsonl")
    heldout = read_jsonl(run / "attack" / "heldout.jsonl")
    prompts = {r["messages"][0]["content"] for r in task + heldout}
    assert prompts <= set(BENIGN[8:])  # the task never repeats a labeled prompt
    assert all(r["label"] == 0 for r in task + heldout)
    harmful = [r for part in mix.values() for r in part if r["label"] == 1]
    compliant = {(r["prompt"], r["response"]) for r in rows if r["kind"] == "harmful"}
    assert {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in harmful} <= (
        compliant
    )
    n_task = sum(len(part) for part in mix.values()) - len(harmful)
    assert len(harmful) == min(len(compliant), round(n_task * 0.25 / 0.75))
    manifest = json.loads((run / "adapter-none" / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == model_fingerprint(aligned)
    before = (run / "run.json").read_text()
    runner.run_plan(recipe, plan)
    record = json.loads((run / "run.json").read_text())
    assert all("result" in s for s in record["stages"])
    assert json.loads(before)["stages"] == record["stages"]  # nothing ran again
