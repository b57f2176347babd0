"""`localguard label`: the onset rule, rows and labels per kind, skipped refusals, determinism,
resuming a killed run, the OUT and option checks, and head train's reader on the output.

Replies come from a tiny random model (garbage text the refusal matcher calls compliant); where
a test needs a refusal or a lead-in, it replaces the text of chosen replies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import make_tiny_model

from localguard import label as stage
from localguard.cli import cli
from localguard.errors import InputError
from localguard.label import LEAD_IN_MAX_CHARS, LabelOptions, harmful_onset, reply_seed
from localguard.refusal import REFUSAL_PREFIX

HARMFUL = ["How do I hurt the cat?", "How do I break the green door?", "How do I hurt a bird?"]
BENIGN = ["Tell me about the river.", "Tell me about a robot."]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("label") / "model")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """An AdvBench CSV of harmful prompts and a JSONL of benign ones."""
    harmful = tmp_path / "advbench.csv"
    harmful.write_text("goal,target\n" + "".join(f"{p},Sure\n" for p in HARMFUL))
    benign = tmp_path / "benign.jsonl"
    benign.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in BENIGN))
    return harmful, benign


def options(model: Path, files: tuple[Path, Path], out: Path, **kw) -> LabelOptions:
    values = {
        "model": str(model),
        "out": out,
        "harmful": [str(files[0])],
        "benign": [str(files[1])],
        "adapter": None,
        "complier": None,
        "max_tokens": 5,
        "seed": 0,
        "temperature": 0.0,
        "max_prompts": 0,
        "refusal_prefix": REFUSAL_PREFIX,
    }
    return LabelOptions(**{**values, **kw})


def cli_args(model: Path, files: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    harmful, benign = files
    return [
        "label",
        "--model",
        str(model),
        "--harmful",
        str(harmful),
        "--benign",
        str(benign),
        "--out",
        str(out),
        "--max-tokens",
        "5",
        *extra,
    ]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


REAL_BATCH_REPLIES = stage.batch_replies


def count_replies(monkeypatch, stop_after=None, real=REAL_BATCH_REPLIES, batch=2) -> list[int]:
    """Count the replies the label stage asks for (stage.batch_replies, `batch` rows at a
    time); raise KeyboardInterrupt (a kill) before the next batch once stop_after are made."""
    calls: list[int] = []
    monkeypatch.setattr(stage, "REPLY_BATCH", batch)

    def counted(opts, models, tasks):
        if stop_after is not None and len(calls) >= stop_after:
            raise KeyboardInterrupt
        calls.extend([1] * len(tasks))
        return real(opts, models, tasks)

    monkeypatch.setattr(stage, "batch_replies", counted)
    return calls


class Continues:
    """A backend whose tokens are strings and whose every reply is one continuation."""

    def __init__(self, continuation: str) -> None:
        self.continuation = continuation

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[str]:
        return ["<chat>"]

    def encode_text(self, text: str) -> list[str]:
        return [text]

    def decode(self, tokens) -> str:
        return "".join(tokens)

    def replies(self, prompts, samplings, ended=None) -> list[list[str]]:
        return [[self.continuation] for _ in prompts]


# --- the onset rule -------------------------------------------------------------------------


def test_onset_follows_a_short_lead_in_line() -> None:
    reply = "Sure, here is how to do it:\n\n  1. Take the thing."
    assert harmful_onset(reply) == reply.index("1.")
    crlf = "Here are the steps:\r\nStep one."
    assert harmful_onset(crlf) == crlf.index("Step")
    longest = "x" * (LEAD_IN_MAX_CHARS - 1) + ":\nStep one."
    assert harmful_onset(longest) == longest.index("Step")


@pytest.mark.parametrize(
    "reply",
    [
        "Step one: take the thing.",  # no newline after the colon
        "Sure, here is how.\nStep one.",  # the first line does not end with ':'
        "x" * LEAD_IN_MAX_CHARS + ":\nStep one.",  # too long for a lead-in
        "Sure, here is how:\n \n",  # nothing after the lead-in
        "",
    ],
)
def test_onset_is_zero_without_a_lead_in(reply: str) -> None:
    assert harmful_onset(reply) == 0


# --- rows and labels --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("continuation", "kept"),
    [
        (" I am a chatbot. However, here is how: step one.", " I am a chatbot."),
        (" it is harmful!\nSure, step one.", " it is harmful!"),
        (" it is harmful", " it is harmful"),  # no sentence end: the whole reply
    ],
)
def test_a_refusal_row_ends_with_its_first_sentence(continuation: str, kept: str) -> None:
    """An unaligned model forced to start refusing often goes on to comply; the refusal row
    keeps the refusing sentence only."""
    opts = options(Path("m"), (Path("h"), Path("b")), Path("o"))
    prompt = stage.EvalPrompt(id="f:1", prompt="How do I hurt the cat?", harmful=True)
    replies = stage.backend_replies(
        opts, Continues(continuation), [(prompt, "refusal"), (prompt, "benign")]
    )
    assert replies == [REFUSAL_PREFIX + kept, continuation]


def test_a_refusal_reply_stops_at_its_first_sentence_end() -> None:
    """The model is not asked for the words a refusal row cuts off."""
    from test_guard import PREFIX, ScriptedBackend

    backend = ScriptedBackend("", after=" it is harmful. Sure, step one: mix the two.")
    opts = options(Path("m"), (Path("h"), Path("b")), Path("o"), refusal_prefix=PREFIX)
    opts = dataclasses.replace(opts, max_tokens=60)
    prompt = stage.EvalPrompt(id="f:1", prompt="How do I hurt the cat?", harmful=True)
    assert stage.backend_replies(opts, backend, [(prompt, "refusal")]) == [
        PREFIX + " it is harmful."
    ]
    assert backend.decode(backend.seq[backend.prompt_len :]) == PREFIX + " it is harmful."


def test_rows_carry_the_labels_of_their_kind(model: Path, files, tmp_path: Path) -> None:
    out = tmp_path / "labeled.jsonl"
    result = CliRunner().invoke(cli, cli_args(model, files, out))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "label: 8 rows (3 refusal, 3 harmful, 2 benign); 0 harmful replies skipped as "
        "refusals; 0 benign prompts skipped as refused",
        f"-> {out}",
    ]
    rows = read(out)
    assert [(r["id"], r["kind"]) for r in rows] == [
        ("advbench.csv:1", "refusal"),
        ("advbench.csv:1", "harmful"),
        ("advbench.csv:2", "refusal"),
        ("advbench.csv:2", "harmful"),
        ("advbench.csv:3", "refusal"),
        ("advbench.csv:3", "harmful"),
        ("benign.jsonl:1", "benign"),
        ("benign.jsonl:2", "benign"),
    ]
    assert [r["prompt"] for r in rows] == [p for p in HARMFUL for _ in "rh"] + BENIGN
    labels = {(r["kind"], r["query_label"], r["response_label"], r["onset"]) for r in rows}
    assert labels == {("refusal", 1, 0, -1), ("harmful", 1, 1, 0), ("benign", 0, 0, -1)}
    refusals = [r["response"] for r in rows if r["kind"] == "refusal"]
    # the prefix whole (its tokens do not count against --max-tokens), then the model's words
    assert all(r.startswith(REFUSAL_PREFIX) and len(r) > len(REFUSAL_PREFIX) for r in refusals)
    assert all(r["response"] for r in rows)
    assert {r["source"] for r in rows} == {"advbench.csv", "benign.jsonl"}
    assert not out.with_name(out.name + ".partial").exists()
    assert not out.with_name(out.name + ".partial.json").exists()


def test_refusals_are_skipped_and_counted_and_head_train_reads_the_rows(
    model: Path, files, tmp_path: Path, monkeypatch
) -> None:
    """The complier refuses prompt 1 (skipped) and opens prompt 2 with a lead-in (onset after
    it). head train's reader takes the file, extra fields and all, and labels from the onset
    token on."""
    from localguard.backends.mlx.loading import load_tokenizer
    from localguard.conversations import load_conversations

    lead_in = "Sure, here is how to do it:\n"
    replaced = {
        HARMFUL[0]: "I'm sorry, but I can't help with that.",
        HARMFUL[1]: lead_in + "First, take the hammer.",
    }

    def scripted(opts, models, tasks):
        texts = REAL_BATCH_REPLIES(opts, models, tasks)
        return [
            replaced[p.prompt] if kind != "refusal" and p.prompt in replaced else text
            for (p, kind), text in zip(tasks, texts, strict=True)
        ]

    monkeypatch.setattr(stage, "batch_replies", scripted)
    out = tmp_path / "labeled.jsonl"
    summary = stage.label(options(model, files, out))
    assert summary["rows"] == {"refusal": 3, "harmful": 2, "benign": 2}
    assert (summary["harmful_skipped"], summary["benign_skipped"]) == (1, 0)
    rows = read(out)
    assert [r["id"] for r in rows if r["kind"] == "harmful"] == ["advbench.csv:2", "advbench.csv:3"]
    assert rows[2]["response"] == replaced[HARMFUL[1]] and rows[2]["onset"] == len(lead_in)

    tokenizer = load_tokenizer(model)
    conversations = load_conversations(out, tokenizer, 256)
    assert [(c.kind, c.query, c.response) for c in conversations] == [
        (r["kind"], r["query_label"], r["response_label"]) for r in rows
    ]
    delayed = conversations[2]
    before = tokenizer.decode(delayed.tokens[delayed.start : delayed.onset])
    assert before.strip() == lead_in.strip()
    assert tokenizer.decode(delayed.tokens[delayed.onset :]).lstrip().startswith("First")
    assert delayed.response_labels[: delayed.onset - delayed.start].sum() == 0


def test_a_separate_complier_writes_the_harmful_rows(
    model: Path, files, tmp_path: Path, monkeypatch
) -> None:
    other = make_tiny_model("llama", tmp_path / "complier", seed=1)
    opened: list[str] = []
    real = stage.open_model
    monkeypatch.setattr(
        stage, "open_model", lambda ref, adapter: opened.append(ref) or real(ref, adapter)
    )
    stage.label(options(model, files, tmp_path / "a.jsonl", complier=str(other)))
    assert opened == [str(model), str(other)]
    mine = read(tmp_path / "a.jsonl")
    opened.clear()
    stage.label(options(model, files, tmp_path / "b.jsonl"))
    assert opened == [str(model)]  # the complier is the model: one backend
    same = read(tmp_path / "b.jsonl")
    harmful = [r["response"] for r in mine if r["kind"] == "harmful"]
    assert harmful != [r["response"] for r in same if r["kind"] == "harmful"]
    assert [r for r in mine if r["kind"] != "harmful"] == [
        r for r in same if r["kind"] != "harmful"
    ]


# --- determinism and resuming -----------------------------------------------------------------


def test_the_same_command_gives_the_same_bytes(model: Path, files, tmp_path: Path) -> None:
    sampled = {"temperature": 1.0, "max_tokens": 8}
    first, second, other_seed = (tmp_path / f"{n}.jsonl" for n in ("a", "b", "c"))
    stage.label(options(model, files, first, **sampled))
    stage.label(options(model, files, second, **sampled))
    assert first.read_bytes() == second.read_bytes()
    stage.label(options(model, files, other_seed, seed=1, **sampled))
    assert first.read_bytes() != other_seed.read_bytes()  # the seed reaches the sampler
    seeds = {reply_seed(0, f"advbench.csv:{i}", kind) for i in (1, 2) for kind in ("a", "b")}
    assert len(seeds) == 4


def test_a_killed_run_resumes_without_regenerating_kept_rows(
    model: Path, files, tmp_path: Path, monkeypatch
) -> None:
    """Sampled, so a resumed reply seeded by its place in the run would differ. Replies come
    in batches (of 2 here) counted from the first task: a run killed while writing a batch's
    rows decodes that whole batch again, as the uninterrupted run did, and keeps its rows."""
    sampled = {"temperature": 1.0, "max_tokens": 8}
    whole = tmp_path / "whole.jsonl"
    calls = count_replies(monkeypatch)
    stage.label(options(model, files, whole, **sampled))
    assert len(calls) == 8

    out = tmp_path / "resumed.jsonl"
    partial = out.with_name(out.name + ".partial")
    count_replies(monkeypatch, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        stage.label(options(model, files, out, **sampled))
    assert len(partial.read_text().splitlines()) == 4 and not out.exists()
    kept = partial.read_text().splitlines(keepends=True)[:3]
    partial.write_text("".join(kept) + '{"prompt": "cut sh')  # a kill in the middle of a line
    calls = count_replies(monkeypatch)
    stage.label(options(model, files, out, **sampled))
    assert len(calls) == 6  # tasks 2 .. 7: the batch of the first missing row, and the rest
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()


def test_skipped_prompts_are_not_asked_again(
    model: Path, files, tmp_path: Path, monkeypatch
) -> None:
    """The model refuses every harmful prompt and the first benign one: all skipped, and a
    killed run's skips are remembered, harmful and benign alike."""
    refused = [*HARMFUL, BENIGN[0]]

    def refuses(opts, models, tasks):
        texts = REAL_BATCH_REPLIES(opts, models, tasks)
        answered = [kind != "refusal" and p.prompt in refused for p, kind in tasks]
        return ["I can't help with that." if a else t for a, t in zip(answered, texts, strict=True)]

    out = tmp_path / "labeled.jsonl"
    # (refusal, skipped) three times, the first benign prompt skipped, then a kill
    count_replies(monkeypatch, stop_after=7, real=refuses, batch=1)
    with pytest.raises(KeyboardInterrupt):
        stage.label(options(model, files, out))
    calls = count_replies(monkeypatch, real=refuses, batch=1)
    summary = stage.label(options(model, files, out))
    assert len(calls) == 8 - 7
    assert summary["rows"] == {"refusal": 3, "harmful": 0, "benign": 1}
    assert (summary["harmful_skipped"], summary["benign_skipped"]) == (3, 1)


# --- OUT, options and input errors ----------------------------------------------------------


def test_an_existing_out_needs_force(model: Path, files, tmp_path: Path) -> None:
    out = tmp_path / "labeled.jsonl"
    out.write_text("old\n")
    runner = CliRunner()
    refused = runner.invoke(cli, cli_args(model, files, out))
    assert refused.exit_code == 2
    assert refused.stderr == f"error: {out} already exists; pass --force to replace it\n"
    assert out.read_text() == "old\n"
    forced = runner.invoke(cli, cli_args(model, files, out, "--force"))
    assert forced.exit_code == 0, forced.output
    assert len(read(out)) == 8


def test_a_rerun_with_other_options_is_refused(
    model: Path, files, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "labeled.jsonl"
    partial = out.with_name(out.name + ".partial")
    count_replies(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        stage.label(options(model, files, out))
    kept = partial.read_bytes()
    count_replies(monkeypatch)
    runner = CliRunner()
    other = runner.invoke(cli, cli_args(model, files, out, "--max-tokens", "7", "--seed", "2"))
    assert other.exit_code == 2
    assert other.stderr == (
        f"error: {partial} holds an interrupted labeling with other max_tokens, seed; "
        "run its command again to continue it, or pass --force to start over\n"
    )
    assert partial.read_bytes() == kept
    files[1].write_text(json.dumps({"prompt": "Tell me about the map."}) + "\n")
    changed = runner.invoke(cli, cli_args(model, files, out))
    assert changed.exit_code == 2 and "other prompts;" in changed.stderr
    forced = runner.invoke(cli, cli_args(model, files, out, "--max-tokens", "7", "--force"))
    assert forced.exit_code == 0, forced.output
    fresh = tmp_path / "fresh.jsonl"
    stage.label(options(model, files, fresh, max_tokens=7))
    assert out.read_bytes() == fresh.read_bytes()


def test_a_run_that_stopped_before_any_row_takes_other_options(
    model: Path, files, tmp_path: Path
) -> None:
    """A wrong model stops the run before its first row; the corrected command just runs."""
    out = tmp_path / "labeled.jsonl"
    runner = CliRunner()
    wrong = runner.invoke(cli, cli_args(tmp_path / "no-model", files, out))
    assert wrong.exit_code == 2
    assert wrong.stderr.startswith("error: model ") and wrong.stderr.count("\n") == 1
    assert "no-model" in wrong.stderr
    fixed = runner.invoke(cli, cli_args(model, files, out))
    assert fixed.exit_code == 0, fixed.output


def test_bad_input_is_one_line_naming_it(model: Path, files, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "labeled.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    missing = tmp_path / "missing.csv"
    cases = [
        (["--harmful", str(missing)], str(missing)),
        (["--benign", str(empty)], "empty.jsonl: no prompts"),
        (["--harmful", str(files[0]), "--model", "nobody/no-such-model"], "nobody/no-such-model"),
        (["--harmful", str(files[0]), "--harmful", str(files[0])], "comes twice"),
        ([], "no prompts: give --harmful FILE and/or --benign FILE"),
    ]
    for extra, named in cases:
        args = ["label", "--model", str(model), "--out", str(out), *extra]
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (extra, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert named in result.stderr, result.stderr
    assert not out.exists()


def test_the_help_explains_every_option() -> None:
    result = CliRunner().invoke(cli, ["label", "--help"])
    assert result.exit_code == 0
    for option in (
        "--model",
        "--adapter",
        "--harmful",
        "--benign",
        "--complier",
        "--out",
        "--max-tokens",
        "--seed",
        "--temperature",
        "--max-prompts",
        "--skip-category",
        "--max-context-chars",
        "--wrapper",
        "--refusal-prefix",
        "--force",
    ):
        assert option in result.output
    assert "safety head" in result.output


def test_max_prompts_cuts_each_file(model: Path, files, tmp_path: Path) -> None:
    out = tmp_path / "labeled.jsonl"
    summary = stage.label(options(model, files, out, max_prompts=1))
    assert summary["rows"] == {"refusal": 1, "harmful": 1, "benign": 1}
    with pytest.raises(InputError, match="must not be empty"):
        stage.label(options(model, files, out, refusal_prefix=" ", max_prompts=1))


def test_skipped_categories_are_left_out_case_insensitively(model: Path, tmp_path: Path) -> None:
    """A HarmBench file's copyright behaviors (lyrics, book passages; SemanticCategory) and its
    contextual ones (FunctionalCategory) stay out of the rows."""
    harmbench = tmp_path / "harmbench.csv"
    harmbench.write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "Write the lyrics of a hit song,copyright,copyright,,,lyrics\n"
        "How do I hurt the cat?,standard,harmful,,,cat\n"
        "Rewrite it to be worse,contextual,harmful,,A long story,ctx\n"
    )
    benign = tmp_path / "benign.jsonl"
    benign.write_text(json.dumps({"prompt": BENIGN[0]}) + "\n")
    out = tmp_path / "labeled.jsonl"
    args = cli_args(
        model,
        (harmbench, benign),
        out,
        "--skip-category",
        "Copyright",
        "--skip-category",
        "CONTEXTUAL",
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert {row["id"] for row in read(out)} == {"harmbench.csv:cat", "benign.jsonl:1"}


def test_a_contextual_request_keeps_its_form_with_its_document_cut(
    model: Path, tmp_path: Path
) -> None:
    """--max-context-chars cuts HarmBench's ContextString at a word and keeps the request whole;
    a prompt without a context is left as it is."""
    story = "one two three four five six seven eight nine ten"
    harmbench = tmp_path / "harmbench.csv"
    harmbench.write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "How do I hurt the cat?,standard,harmful,,,cat\n"
        f"Rewrite it to be worse,contextual,harmful,,{story},ctx\n"
    )
    benign = tmp_path / "benign.jsonl"
    benign.write_text(json.dumps({"prompt": BENIGN[0]}) + "\n")
    out = tmp_path / "labeled.jsonl"
    args = cli_args(model, (harmbench, benign), out, "--max-context-chars", "16")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    prompts = {row["id"]: row["prompt"] for row in read(out)}
    assert prompts["harmbench.csv:cat"] == "How do I hurt the cat?"
    assert prompts["harmbench.csv:ctx"] == "one two three ...\n\n---\n\nRewrite it to be worse"


def test_wrappers_add_one_labeled_copy_of_each_prompt(model: Path, files, tmp_path: Path) -> None:
    """--wrapper: every prompt once more inside one template, chosen by seed (the same twice),
    labeled as its plain form; a template without {prompt} is a one-line error."""
    wrappers = ["Story time. {prompt}", "You are Bot. Bot, {prompt} Go."]
    extra = [arg for w in wrappers for arg in ("--wrapper", w)]
    runs = []
    for name in ("a.jsonl", "b.jsonl"):
        result = CliRunner().invoke(cli, cli_args(model, files, tmp_path / name, *extra))
        assert result.exit_code == 0, result.output
        runs.append((tmp_path / name).read_bytes())
    assert runs[0] == runs[1]
    rows = read(tmp_path / "a.jsonl")
    plain = {(row["id"], row["kind"]): row for row in rows if "#wrap" not in row["id"]}
    copies = [row for row in rows if "#wrap" in row["id"]]
    assert len(copies) == len(plain) == 2 * len(HARMFUL) + len(BENIGN)
    for row in copies:
        base, n = row["id"].split("#wrap")
        original = plain[(base, row["kind"])]
        assert row["prompt"] == wrappers[int(n)].replace("{prompt}", original["prompt"])
        assert row["query_label"] == original["query_label"]
    assert len({row["id"].split("#wrap")[1] for row in copies}) == 2  # both templates used
    result = CliRunner().invoke(
        cli, cli_args(model, files, tmp_path / "c.jsonl", "--wrapper", "no slot")
    )
    assert result.exit_code == 2 and "'no slot' must hold {prompt} exactly once" in result.stderr
    assert not (tmp_path / "c.jsonl").exists()
