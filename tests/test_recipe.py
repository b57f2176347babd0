"""Recipes: defaults, path resolution, overrides, and an error message for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from localguard.errors import RecipeError
from localguard.plan import build_plan, format_plan
from localguard.recipe import SCHEMA, load_recipe, option_value

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.toml"


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return str(info.value)


def test_demo_recipe_loads_with_every_section():
    recipe = load_recipe(DEMO)
    assert set(recipe.values) == set(SCHEMA)
    assert recipe["model"]["path"] == "starter:demo"
    assert recipe["finetune"]["risk"] == "probe"
    assert recipe["finetune"]["learning_rate"] == pytest.approx(5e-4)
    assert (recipe["finetune"]["beta_min"], recipe["finetune"]["beta_max"]) == (0.0, 1.0)
    assert recipe["run"]["name"] == "demo"


def test_defaults_fill_missing_keys(tmp_path):
    recipe = load_recipe(write(tmp_path, "[finetune]\nrisk = 'none'\n"))
    assert recipe["finetune"]["beta_min"] == 0.1 and recipe["finetune"]["beta_max"] == 0.9
    assert recipe["guard"]["tau"] == 2
    assert recipe["run"]["name"] == "r"


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    recipe = load_recipe(write(tmp_path, "[finetune]\nlora_scale = 16\n"))
    assert recipe["finetune"]["lora_scale"] == 16.0
    assert isinstance(recipe["finetune"]["lora_scale"], float)


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "mymodel").mkdir()
    path = write(sub, "[model]\npath = 'mymodel'\n[data]\ntrain = 'data/train.jsonl'\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)
    assert recipe["model"]["path"] == str(sub / "mymodel")
    assert recipe["data"]["train"] == str(sub / "data" / "train.jsonl")
    assert recipe["data"]["valid"] == "starter:newskill_valid"


def test_hub_ids_stay_hub_ids(tmp_path):
    recipe = load_recipe(write(tmp_path, "[model]\npath = 'Qwen/Qwen2.5-0.5B-Instruct'\n"))
    assert recipe["model"]["path"] == "Qwen/Qwen2.5-0.5B-Instruct"


def test_eval_sources_resolve_files_and_keep_hub_ids(tmp_path):
    path = tmp_path / "sub" / "r.toml"
    path.parent.mkdir()
    path.write_text(
        '[eval]\nsources = ["../data/adv.csv", "org/set", "org/set:data/x.csv", "p.jsonl"]\n'
    )
    sources = load_recipe(path)["eval"]["sources"]
    assert sources == [
        str(tmp_path / "data" / "adv.csv"),
        "org/set",
        "org/set:data/x.csv",
        str(tmp_path / "sub" / "p.jsonl"),
    ]


def test_eval_suites_that_need_the_starter_world(tmp_path):
    hub = "[model]\npath = 'Qwen/Qwen2.5-0.5B-Instruct'\n"
    with pytest.raises(RecipeError, match="utility needs the starter world"):
        load_recipe(write(tmp_path, hub + "[eval]\nsuites = ['direct', 'utility']\n"))
    with pytest.raises(RecipeError, match="finetune_attack needs eval.attack_mixes"):
        load_recipe(write(tmp_path, hub + "[eval]\nsuites = ['finetune_attack']\n"))
    load_recipe(write(tmp_path, hub + "[eval]\nenabled = false\nsuites = ['utility']\n"))


def test_overrides_win_and_resolve_against_the_working_directory(tmp_path, monkeypatch):
    path = write(tmp_path / "", "[finetune]\nlearning_rate = 0.01\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = load_recipe(
        path,
        [
            "finetune.learning_rate=2e-4",
            "data.train=mine.jsonl",
            "finetune.risk=none",
            "eval.suites=['direct']",
        ],
    )
    assert recipe["finetune"]["learning_rate"] == pytest.approx(2e-4)
    assert recipe["finetune"]["risk"] == "none"
    assert recipe["data"]["train"] == str(work / "mine.jsonl")
    assert recipe["eval"]["suites"] == ["direct"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[finetune]\nlearnig_rate = 1e-4\n",
            "unknown key finetune.learnig_rate; did you mean learning_rate?",
        ),
        ("[finetun]\nrisk = 'none'\n", "unknown section [finetun]; did you mean finetune?"),
        (
            "[finetune]\niters = 'many'\n",
            "finetune.iters must be an integer, not a string ('many')",
        ),
        ("[finetune]\niters = 1.5\n", "finetune.iters must be an integer, not a number (1.5)"),
        ("[probe]\nenabled = 1\n", "probe.enabled must be a boolean, not an integer (1)"),
        ("[finetune]\nbeta_max = 1.5\n", "finetune.beta_max = 1.5 is above the maximum 1"),
        ("[finetune]\nbatch_size = 0\n", "finetune.batch_size = 0 is below the minimum 1"),
        (
            "[finetune]\nrisk = 'prob'\n",
            "finetune.risk = 'prob' is not one of none, constant, probe, critic; "
            "did you mean probe?",
        ),
        ("[export]\nquant = ['Q4_K_N']\n", "export.quant[0] = 'Q4_K_N' is not one of"),
        ("[export]\nquant = 'Q4_K_M'\n", "export.quant must be a list, not a string"),
        ("finetune = 3\n", "finetune must be a table ([finetune]), not an integer"),
        (
            "[finetune]\nbeta_min = 0.8\nbeta_max = 0.2\n",
            "finetune.beta_min (0.8) is above finetune.beta_max (0.2)",
        ),
        ("[finetune]\nrisk = 'critic'\n", "finetune.risk = 'critic' needs finetune.critic"),
        ("[probe]\nl2 = 'fast'\n", "probe.l2 must be a number or 'auto', not a string ('fast')"),
        ("[probe]\nl2 = true\n", "probe.l2 must be a number or 'auto', not a boolean (True)"),
        ("[probe]\nl2 = -1\n", "probe.l2 = -1.0 is below the minimum 0"),
    ],
)
def test_bad_recipes_name_file_key_and_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_invalid_toml_names_the_line(tmp_path):
    path = write(tmp_path, "[finetune]\nrisk = \n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid TOML") and "line 2" in message


def test_missing_recipe_file(tmp_path):
    assert "no such recipe file" in error_of(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "finetune.learnig_rate=1",
            "--set finetune.learnig_rate=1: unknown key "
            "finetune.learnig_rate; did you mean learning_rate?",
        ),
        ("finetune", "expected SECTION.KEY=VALUE"),
        ("finetune.iters=abc", "finetune.iters must be an integer, not a string ('abc')"),
        ("finetune.beta_min=0.95", "finetune.beta_min (0.95) is above finetune.beta_max (0.9)"),
    ],
)
def test_bad_overrides(tmp_path, override, expected):
    assert expected in error_of(write(tmp_path, ""), [override])


def test_probe_l2_is_a_number_or_auto(tmp_path):
    assert load_recipe(None)["probe"]["l2"] == "auto"
    assert load_recipe(write(tmp_path, "[probe]\nl2 = 3\n"))["probe"]["l2"] == 3.0
    fixed = write(tmp_path, "[probe]\nl2 = 0.5\n", "fixed.toml")
    assert load_recipe(fixed, ["probe.l2=auto"])["probe"]["l2"] == "auto"
    assert load_recipe(None, ["probe.l2=1e-1"])["probe"]["l2"] == pytest.approx(0.1)
    assert "probe.l2 must be a number or 'auto'" in error_of(fixed, ["probe.l2=Auto"])


def test_option_value_checks_a_command_line_value_as_its_recipe_key():
    assert option_value("probe", "l2", "auto", "--l2") == "auto"
    assert option_value("probe", "l2", "10", "--l2") == 10.0
    with pytest.raises(RecipeError) as info:
        option_value("probe", "l2", "fast", "--l2")
    assert str(info.value) == "--l2 must be a number or 'auto', not a string ('fast')"
    with pytest.raises(RecipeError, match="--l2 = -2.0 is below the minimum 0"):
        option_value("probe", "l2", "-2", "--l2")


def test_an_override_can_fix_a_relation(tmp_path):
    path = write(tmp_path, "[finetune]\nbeta_min = 0.5\n")
    assert load_recipe(path, ["finetune.beta_max=0.6"])["finetune"]["beta_max"] == 0.6


def test_plan_of_the_demo_lists_every_stage_in_order():
    recipe = load_recipe(DEMO)
    plan = build_plan(recipe)
    assert [s.name for s in plan] == [
        "starter",
        "probe",
        "finetune",
        "finetune",
        "head",
        "export",
        "eval",
    ]
    assert [s.settings["risk"] for s in plan if s.name == "finetune"] == ["none", "probe"]
    probe_run = plan[3]
    assert probe_run.inputs["probe"] == plan[1].outputs["probe"]
    text = format_plan(recipe, plan)
    assert "1. starter" in text and "7. eval" in text and "adapter-probe" in text


def test_plan_skips_disabled_stages(tmp_path):
    recipe = load_recipe(
        write(
            tmp_path,
            "[model]\npath = 'a/b'\n[probe]\nenabled = false\n"
            "[finetune]\nrisk = 'none'\n[export]\nenabled = false\n",
        )
    )
    names = [s.name for s in build_plan(recipe)]
    assert names == ["finetune", "head", "eval"]
    assert "disabled: probe, export" in format_plan(recipe, build_plan(recipe))


def test_the_head_gets_the_finetuning_data_as_task_data_by_default(tmp_path, monkeypatch):
    """run_head passes [data] train as --task-data unless [head] task_data names a file."""
    import localguard.head
    import localguard.runner as runner

    model = tmp_path / "starter" / "model"
    model.mkdir(parents=True)
    (model.parent / "starter.json").write_text("{}")
    seen = []
    monkeypatch.setattr(runner, "model_dir", lambda stage, recipe: model)
    monkeypatch.setattr(localguard.head, "train_head", lambda opts, **kw: seen.append(opts))
    monkeypatch.setattr(localguard.head, "format_report", lambda report: "")
    mine = tmp_path / "mine.jsonl"
    for overrides in ([], [f"head.task_data='{mine}'"]):
        recipe = load_recipe(DEMO, overrides)
        runner.run_head(next(s for s in build_plan(recipe) if s.name == "head"), recipe)
    assert seen[0].task_data == model.parent / "data" / "attack_10.jsonl"
    assert seen[1].task_data == mine
    assert SCHEMA["head"]["task_data"].default is None
