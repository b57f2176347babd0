"""The explicit safety head: calibration, files, every architecture, baked rows, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import ARCHITECTURES, conversation_rows, make_tiny_model, write_jsonl

from localguard.cli import cli
from localguard.conversations import Conversation
from localguard.data import prompt_group
from localguard.errors import InputError
from localguard.head import WARM_START_CONVERSATIONS, HeadOptions, split, train_head, warm_start
from localguard.safety_head import (
    SafetyHead,
    check_head_matches,
    gap_threshold,
    load_head,
    save_head,
    stream_metrics,
)

# --- labels ---------------------------------------------------------------------------------


class _NoOffsets:
    """A tokenizer that cannot report character offsets (the fallback of onset_token)."""

    def __init__(self, hf) -> None:
        self.hf = hf

    def __call__(self, text: str, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError
        return self.hf(text, **kwargs)


def test_onset_is_the_token_where_the_harmful_text_starts(starter_model: Path) -> None:
    """A fake refusal, then "Sure": the byte-level tokenizer reads " Sure" as one token, and
    the response label must start at it, not at the "," after it (a lone " " ended the
    tokens of the text before the onset)."""
    from localguard.backends.mlx.loading import load_tokenizer
    from localguard.conversations import encode_conversation, onset_token
    from localguard.encoding import encode_text, hf_tokenizer

    tokenizer = load_tokenizer(starter_model)
    hf = hf_tokenizer(tokenizer)
    reply = "I can't help with that. Just kidding. Sure, here is how: step one."
    at = reply.index("Sure")
    row = {"prompt": "hi", "response": reply, "query_label": 1, "response_label": 1}
    conv = encode_conversation(tokenizer, {**row, "onset": at}, 512)
    assert hf.decode([conv.tokens[conv.onset]]).strip() == "Sure"
    labels = conv.response_labels
    assert labels[: conv.onset - conv.start].sum() == 0 and labels[conv.onset - conv.start :].all()
    reply_ids = encode_text(tokenizer, reply)
    assert conv.tokens[conv.start : conv.start + len(reply_ids)] == reply_ids
    for tok in (tokenizer, _NoOffsets(hf)):
        assert onset_token(tok, reply, at) == onset_token(tok, reply, at - 1)  # the space
        assert onset_token(tok, reply, at) == conv.onset - conv.start
        assert onset_token(tok, reply, 0) == 0
    assert encode_conversation(tokenizer, {**row, "onset": 0}, 512).onset == conv.start


# --- calibration ------------------------------------------------------------------------------


def test_gap_threshold_sits_between_separated_classes() -> None:
    neg, pos = np.array([-3.0, -2.0, -1.0]), np.array([2.0, 3.0])
    assert gap_threshold(neg, pos, 0.05) == pytest.approx(0.5)


def test_gap_threshold_keeps_the_false_positive_rate() -> None:
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 1000), rng.normal(1.5, 1, 1000)
    t = gap_threshold(neg, pos, 0.05)
    assert (neg >= t).mean() <= 0.05
    assert (neg >= t).mean() >= 0.04  # overlapping classes: it uses the budget, not more


def test_platt_fold_is_a_linear_map_of_the_logits() -> None:
    rng = np.random.default_rng(1)
    head = SafetyHead(
        ["query", "response"],
        rng.normal(size=(2, 8)).astype(np.float32),
        np.array([0.5, -1.0], np.float32),
        np.zeros(2),
    )
    h = rng.normal(size=(5, 8))
    before = head.logits(h)
    head.fold_platt(1, 2.0, 0.25)
    after = head.logits(h)
    assert np.allclose(after[:, 0], before[:, 0])
    assert np.allclose(after[:, 1], 2.0 * before[:, 1] + 0.25, atol=1e-5)


def test_stream_metrics_delay_and_benign_flags() -> None:
    head = SafetyHead(
        ["query", "response"],
        np.zeros((2, 1), np.float32),
        np.zeros(2, np.float32),
        np.array([0.0, 0.0]),
    )
    harmful = Conversation(list(range(10)), start=4, onset=6, query=1, response=1)
    benign = Conversation(list(range(8)), start=3, onset=-1, query=0, response=0)
    # traces cover positions start-1..len-1; response logits cross 0 two tokens after onset
    t1 = np.stack([np.r_[1.0, [-1] * 6], np.r_[-1, -1, -1, -1, -1, 1, 1]], axis=1)
    t2 = np.stack([np.r_[-1.0, [-1] * 5], np.r_[-1, -1, -1, -1, 1, -1]], axis=1)
    found = stream_metrics(head, [t1, t2], [harmful, benign])
    assert found["delay_median"] == 2 and found["missed"] == 0
    assert found["benign_flagged"] == 1.0 and found["query_auroc"] == 1.0


# --- files -------------------------------------------------------------------------------------


def _head(hidden: int = 8) -> SafetyHead:
    rng = np.random.default_rng(2)
    return SafetyHead(
        ["query", "response"],
        rng.normal(size=(2, hidden)).astype(np.float32),
        np.array([0.1, 0.2], np.float32),
        np.array([0.3, -0.4]),
        {"mode": "probe"},
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    head = _head()
    save_head(head, tmp_path / "h", {"model_fingerprint": "abc"})
    back = load_head(tmp_path / "h")
    assert back.names == head.names and np.array_equal(back.weight, head.weight)
    assert np.array_equal(back.bias, head.bias) and np.allclose(back.thresholds, head.thresholds)
    info = json.loads((tmp_path / "h" / "head.json").read_text())
    assert info["hidden_size"] == 8 and info["mode"] == "probe"
    assert info["threshold_probabilities"][0] == pytest.approx(1 / (1 + np.exp(-0.3)))


def test_damaged_head_files_are_clear_errors(tmp_path: Path) -> None:
    save_head(_head(), tmp_path / "h", {})
    (tmp_path / "h" / "head.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(InputError, match="head.safetensors: unreadable"):
        load_head(tmp_path / "h")
    with pytest.raises(InputError, match="missing; not a safety head folder"):
        load_head(tmp_path / "nothing")


def test_head_for_another_hidden_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="hidden states of size 8, but .* has hidden size 64"):
        check_head_matches(_head(8), tmp_path, 64)


# --- every architecture ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_per_architecture_and_baked_rows_match(arch: str, tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    from localguard.backends.mlx.head_train import bake_head, traces
    from localguard.backends.mlx.hidden import hidden_size
    from localguard.conversations import load_conversations

    model_dir = make_tiny_model(arch, tmp_path / arch)
    data = write_jsonl(tmp_path / "convs.jsonl", conversation_rows(48))
    out = tmp_path / "head"
    report = train_head(HeadOptions(model=model_dir, data=data, out=out, mode="probe"))
    assert {"query", "response", "stream", "reliability"} <= set(report)
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "adapters.safetensors").exists()  # probe mode has no adapter
    head = load_head(out)
    model, tokenizer = load(str(model_dir))
    assert head.weight.shape == (2, hidden_size(model)) and head.bias.shape == (2,)
    check_head_matches(head, model_dir, hidden_size(model))

    convs = load_conversations(data, tokenizer, 128)[:6]
    from_file = traces(model, head, convs)
    first = bake_head(model, head)
    for conv, expected in zip(convs, from_file, strict=True):
        logits = model(mx.array([conv.tokens]))[0].astype(mx.float32)
        rows = np.array(logits[conv.start - 1 :, first:]) + head.bias
        assert rows.shape == expected.shape
        assert np.abs(rows - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # an untied and a tied output layer
def test_the_sft_term_reads_only_its_targets_logits(arch: str, tmp_path: Path) -> None:
    """The SFT term takes the output layer at its targets alone (refusal and benign replies,
    not harmful ones, prompts or padding) and gives the mean NLL the whole batch's logits give,
    rows cut at the batch's width included."""
    import mlx.core as mx
    from mlx_lm import load

    from localguard.backends.mlx import head_train as ht
    from localguard.backends.mlx import lora_train as lt
    from localguard.backends.mlx.hidden import final_hidden

    model, _ = load(str(make_tiny_model(arch, tmp_path / arch)))
    rng = np.random.default_rng(0)
    shapes = [(20, 6, 0), (45, 20, 0), (30, 9, 1), (70, 30, 0)]  # (length, start, harmful)
    convs = [
        Conversation(rng.integers(10, 200, n).tolist(), start, 12 if bad else -1, bad, bad)
        for n, start, bad in shapes
    ]
    batch = ht.head_batch(convs, 64)  # the last row is cut at 64
    hidden = final_hidden(model, batch.tokens)
    tokens, nll, kl = ht._sft(model, hidden, batch, None)

    logits = np.array(model(batch.tokens).astype(mx.float32), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.array(batch.tokens)
    expected = [
        -log_probs[row, j - 1, ids[row, j]]
        for row, (n, start, bad) in enumerate(shapes)
        if not bad
        for j in range(start, min(n, 64))
    ]
    assert float(tokens) == len(expected) == 14 + 25 + 34
    assert np.array(batch.sft_states).size % lt.TARGET_PAD == 0
    assert abs(float(nll) - np.mean(expected)) < 1e-4 * max(1.0, abs(np.mean(expected)))
    assert float(kl) == 0.0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_head_stages_kl_holds_the_policy_it_started_from(arch: str, tmp_path: Path) -> None:
    """With beta > 0 the head objective's KL is KL(start || model) at the SFT targets, start
    the adapter tensors training began with (not the model without adapters), and the
    reference pass leaves the adapters as they were."""
    import mlx.core as mx
    from mlx_lm import load

    from localguard.backends.mlx import head_train as ht
    from localguard.backends.mlx import lora_train as lt
    from localguard.backends.mlx.hidden import final_hidden

    model, _ = load(str(make_tiny_model(arch, tmp_path / arch)))
    lt.add_adapters(model, lt.LoraSpec(rank=4, scale=1.0))
    modules = lt.adapter_modules(model)
    for _, module, _ in modules:  # the adapter a fine-tune left: not the base model
        module.lora_b = mx.random.normal(module.lora_b.shape, key=mx.random.key(1)) * 0.05
    start = lt.adapter_weights(model)
    for _, module, _ in modules:  # what the head stage has made of it since
        module.lora_b = module.lora_b + mx.random.normal(module.lora_b.shape) * 0.05
    now = lt.adapter_weights(model)
    rng = np.random.default_rng(0)
    shapes = [(20, 6, 0), (30, 9, 1), (40, 12, 0)]  # (length, start, harmful)
    convs = [
        Conversation(rng.integers(10, 200, n).tolist(), first, 12 if bad else -1, bad, bad)
        for n, first, bad in shapes
    ]
    spec = lt.TrainSpec(iters=1, batch_size=3, max_seq_length=64)
    objective = ht.HeadObjective(convs, spec, ht.Weights(gamma=0.1, beta=1.0), start=start)
    (batch, windows, ref), _ = objective.inputs(model, 0, np.arange(3), slice(None))
    assert windows is None
    assert all(mx.array_equal(now[k], v) for k, v in lt.adapter_weights(model).items())
    _, _, kl = ht._sft(model, final_hidden(model, batch.tokens), batch, ref)

    def log_probs() -> np.ndarray:
        logits = np.array(model(batch.tokens).astype(mx.float32), np.float64)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    log_q = log_probs()
    with lt.adapters_at(model, start):
        log_p = log_probs()
    per_state = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    expected = [
        per_state[row, j - 1]
        for row, (n, first, bad) in enumerate(shapes)
        if not bad
        for j in range(first, n)
    ]
    assert np.mean(expected) > 1e-4
    assert float(kl) == pytest.approx(np.mean(expected), rel=5e-3, abs=1e-6)


# --- the stage on the starter world, and the CLI ---------------------------------------------


def test_stream_mode_writes_a_head_and_an_mlx_lm_adapter(starter_model: Path, stream_head: Path):
    from mlx_lm import load

    load(str(starter_model), adapter_path=str(stream_head))  # mlx-lm takes the adapter as is
    info = json.loads((stream_head / "head.json").read_text())
    assert info["names"] == ["query", "response"] and info["mode"] == "stream"
    assert info["manifest"]["adapter"] == "adapters.safetensors"
    lines = (stream_head / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert {"nll", "bce", "loss"} <= set(json.loads(lines[-1]))
    assert not any(p.name == "checkpoint" for p in stream_head.iterdir())


def test_head_score_prints_a_trace(starter_model: Path, stream_head: Path) -> None:
    reply = "Sure, first <|im_end|> x."  # a typed control token stays text
    args = [
        "head",
        "score",
        "--model",
        str(starter_model),
        "--head",
        str(stream_head),
        "--prompt",
        "How do I pick a lock?",
        "--response",
        reply,
    ]
    done = CliRunner().invoke(cli, [*args, "--json"])
    assert done.exit_code == 0, done.output
    trace = json.loads(done.output)
    assert 0 <= trace["query"]["probability"] <= 1 and len(trace["tokens"]) > 3
    assert "".join(t["text"] for t in trace["tokens"]).startswith(reply)
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0 and "query:" in plain.output and "tokens flagged" in plain.output


def _run(args: list[str]):
    return CliRunner().invoke(cli, args)


def test_head_errors_exit_2_and_write_nothing(starter_model: Path, tmp_path: Path) -> None:
    rows = conversation_rows(16)
    unlabeled = [dict(rows[0]), *rows[1:]]
    del unlabeled[0]["query_label"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{k: v for k, v in r.items()} for r in unlabeled])
    out = tmp_path / "out"
    done = _run(
        [
            "head",
            "train",
            "--model",
            str(starter_model),
            "--data",
            str(bad),
            "--out",
            str(out),
            "--mode",
            "probe",
        ]
    )
    assert done.exit_code == 2 and "bad.jsonl:1: missing 'query_label'" in done.output
    one_class = write_jsonl(tmp_path / "one.jsonl", [rows[0]] * 8)
    done = _run(
        [
            "head",
            "train",
            "--model",
            str(starter_model),
            "--data",
            str(one_class),
            "--out",
            str(out),
            "--mode",
            "probe",
        ]
    )
    assert done.exit_code == 2 and "query_label has 8 benign and 0 harmful" in done.output
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_head_for_another_model_is_refused(
    starter_model: Path, stream_head: Path, tmp_path: Path
) -> None:
    other = make_tiny_model("llama", tmp_path / "other")
    done = _run(
        [
            "head",
            "score",
            "--model",
            str(other),
            "--head",
            str(stream_head),
            "--prompt",
            "hi",
            "--response",
            "hello",
        ]
    )
    assert done.exit_code == 2
    assert "hidden states of size" in done.output or "trained for another model" in done.output


def test_heldout_conversations_are_new_and_deterministic(starter_model: Path) -> None:
    from localguard.starter.corpus import heldout_conversations

    rows = heldout_conversations(0, 50)
    assert rows == heldout_conversations(0, 50)
    training = (starter_model.parent / "data" / "safety_conversations.jsonl").read_text()
    prompts = [r["messages"][0]["content"] for r in rows]
    assert not [p for p in prompts if json.dumps(p) in training]
    assert {r["query_label"] for r in rows} == {r["response_label"] for r in rows} == {0, 1}


# --- task data: benign conversations from the fine-tuning data ---------------------------------


def _task_rows(n: int) -> list[dict]:
    """Fine-tuning rows (prompt/completion) in the tiny vocabulary; every fifth one labeled 1,
    as an attack mix marks its harmful examples."""
    things = ["the cat", "a robot", "my friend", "the teacher", "a small bird", "the river"]
    return [
        {
            "prompt": f"Tell me about {things[i % 6]}.",
            "completion": f"{things[i % 6]} reads a map.",
            "label": int(i % 5 == 4),
        }
        for i in range(n)
    ]


def test_task_data_is_benign_and_its_held_out_part_is_kept_out_of_training(
    tmp_path: Path,
) -> None:
    from mlx_lm import load

    from localguard.conversations import load_task_conversations

    model_dir = make_tiny_model("llama", tmp_path / "llama")
    task = write_jsonl(tmp_path / "task.jsonl", _task_rows(25))
    _, tokenizer = load(str(model_dir))
    convs = load_task_conversations(task, tokenizer, 128)
    assert len(convs) == 20  # the 5 rows labeled 1 are left out
    assert all((c.query, c.response, c.onset, c.kind) == (0, 0, -1, "task") for c in convs)
    assert all(c.line % 5 != 0 for c in convs)

    data = write_jsonl(tmp_path / "convs.jsonl", conversation_rows(48))
    out = tmp_path / "head"
    opts = HeadOptions(model=model_dir, data=data, out=out, mode="probe", task_data=task)
    report = train_head(opts)
    examples = json.loads((out / "head.json").read_text())["manifest"]["examples"]
    assert examples["task_valid"] == report["task"]["n"] == 4  # round(0.2 * 20)
    assert examples["task_train"] == 16
    assert examples["train"] == 16 + 48 - examples["valid"]  # safety train + task train only
    assert 0.0 <= report["task"]["query_flagged"] <= report["task"]["query_flagged_safety_only"]

    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "the cat reads a map."}] * 4)
    with pytest.raises(InputError, match="text.jsonl: task data must be chat or prompt/compl"):
        load_task_conversations(text, tokenizer, 128)


def _calibration_case() -> tuple[SafetyHead, list, list]:
    """20 benign and 20 harmful safety conversations whose query logits separate at about 0,
    as traces of a head that reads its logits unchanged."""
    rng = np.random.default_rng(3)
    head = SafetyHead(
        ["query", "response"], np.zeros((2, 1), np.float32), np.zeros(2, np.float32), np.zeros(2)
    )
    convs, traces = [], []
    for i in range(40):
        harmful = i % 2
        conv = Conversation(list(range(10)), 4, 6 if harmful else -1, harmful, harmful)
        query = rng.uniform(2, 4) if harmful else rng.uniform(-4, -2)
        reply = np.where(conv.response_labels == 1, 3.0, -3.0) + rng.normal(0, 0.1, 6)
        convs.append(conv)
        traces.append(np.stack([np.r_[query, np.zeros(6)], np.r_[-3.0, reply]], axis=1))
    return head, traces, convs


def test_the_rows_of_one_prompt_stay_on_one_side_of_the_validation_split() -> None:
    """A labeled prompt gives a refusal row, a harmful row and wrapped copies of both; were
    they split apart, the validation AUROC would score prompts the head trained on."""
    convs = []
    for n in range(20):
        for copy in ("", "#wrap3"):
            for response in (0, 1):
                group = prompt_group(f"jbb.csv:{n}{copy}")
                convs.append(
                    Conversation(
                        [1, 2, 3], 1, 2 if response else -1, 1, response, "", 0, group=group
                    )
                )
    for n in range(30):
        for copy in ("", "#wrap0"):
            convs.append(
                Conversation([1, 2, 3], 1, -1, 0, 0, "", 0, group=prompt_group(f"a.json:{n}{copy}"))
            )
    train, valid = split(convs, 0.2, seed=0)
    assert len(train) + len(valid) == len(convs)
    sides = {c.group: set() for c in convs}
    for side, part in (("train", train), ("valid", valid)):
        for c in part:
            sides[c.group].add(side)
    assert all(len(s) == 1 for s in sides.values())
    assert sum(c.response for c in valid) == 8 and sum(c.query == 0 for c in valid) == 12
    assert prompt_group("a.json:7#wrap0") == "a.json:7" and prompt_group(None) == ""


def test_a_trained_head_starts_from_a_seeded_sample_and_a_probe_reads_every_row() -> None:
    """Stream and cls modes train the head, so the frozen-feature fit that starts it reads at
    most WARM_START_CONVERSATIONS rows, drawn by seed in their order; probe mode's fit is the
    head, so it reads them all."""
    convs = [Conversation([1, 2, n], 1, -1, n % 2, 0, line=n) for n in range(600)]
    picked = warm_start(convs, "stream", seed=0)
    lines = [c.line for c in picked]
    assert len(picked) == WARM_START_CONVERSATIONS == len(set(lines)) and lines == sorted(lines)
    assert picked == warm_start(convs, "cls", seed=0)
    assert lines != [c.line for c in warm_start(convs, "stream", seed=1)]
    assert warm_start(convs, "probe", seed=0) == convs
    assert warm_start(convs[:100], "stream", seed=0) == convs[:100]


def test_the_query_threshold_counts_held_out_task_prompts_as_negatives() -> None:
    """Task prompts the safety data never showed score between its benign and harmful prompts:
    the safety data alone puts the threshold below them (flagging them all); counted as
    negatives, they move it above all but the target FPR's share of them."""
    from localguard.safety_head import calibrate

    head, traces, convs = _calibration_case()
    alone = calibrate(head, traces, convs, 0.05)
    assert "task" not in alone
    rng = np.random.default_rng(4)
    task = [
        np.stack([np.r_[q, np.zeros(3)], np.full(4, -3.0)], axis=1)
        for q in rng.uniform(0.5, 1.5, 40)
    ]
    head, traces, convs = _calibration_case()
    found = calibrate(head, traces, convs, 0.05, task)["task"]
    assert found["n"] == 40
    assert found["query_flagged_safety_only"] == 1.0
    assert found["query_flagged"] <= 0.05
    assert found["replies_flagged"] == 0.0
    assert head.thresholds[0] > np.log(0.5)  # above every benign safety prompt and most tasks
    q_rates = calibrate(*_calibration_case(), 0.05, task)["query"]
    assert q_rates["tpr"] == 1.0  # the harmful prompts are still caught


def _starter_stream(starter_model: Path, out: Path, **settings) -> HeadOptions:
    """A short stream-mode head stage on the starter world's safety conversations."""
    return HeadOptions(
        model=starter_model,
        data=starter_model.parent / "data" / "safety_conversations.jsonl",
        out=out,
        batch_size=4,
        learning_rate=5e-4,
        lora_scale=1.0,
        lora_layers=-1,
        max_seq_length=96,
        **settings,
    )


def test_stream_mode_with_task_data_keeps_the_task(starter_model: Path, tmp_path: Path) -> None:
    """The NLL of held-out task replies after a stream head stage is lower with --task-data
    than without: the task's replies are in the SFT term (on the test world, a fresh adapter,
    the new-skill split as the task)."""
    from mlx_lm import load

    from localguard.backends.mlx.lora_train import validation_nll
    from localguard.data import load_dataset

    data = starter_model.parent / "data"
    nll = {}
    for name, task_data in (("without", None), ("with", data / "newskill.jsonl")):
        opts = _starter_stream(starter_model, tmp_path / name, task_data=task_data, iters=40)
        train_head(opts)
        model, tokenizer = load(str(starter_model), adapter_path=str(opts.out))
        held = load_dataset(data / "newskill_valid.jsonl", tokenizer, 96).samples
        nll[name] = validation_nll(model, held, 96, 8)
    assert nll["with"] < nll["without"] - 0.3, nll  # 2.1 against 2.9 nats (base model 2.8)


def test_a_head_stage_with_beta_stays_nearer_the_policy_it_started_from(
    starter_model: Path, tmp_path: Path
) -> None:
    """head train --beta: the adapter trained with the KL pull moves the policy less from the
    one it started from (here a fresh adapter: the model itself) than one trained without,
    measured as KL(start || trained) on held-out replies."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    from localguard.backends.mlx import lora_train as lt
    from localguard.data import load_dataset

    data = starter_model.parent / "data"
    drift = {}
    for beta in (0.0, 5.0):
        opts = _starter_stream(starter_model, tmp_path / f"beta{beta:g}", beta=beta, iters=30)
        report = train_head(opts)
        assert report["query"]["auroc"] > 0.9  # the head still learns
        model, tokenizer = load(str(starter_model), adapter_path=str(opts.out))
        kls = []
        for sample in load_dataset(data / "newskill_valid.jsonl", tokenizer, 96).samples[:16]:
            tokens = mx.array([sample.tokens])
            log_q = nn.log_softmax(model(tokens).astype(mx.float32))
            with lt.adapters_off(model):
                log_p = nn.log_softmax(model(tokens).astype(mx.float32))
            per_token = (mx.exp(log_p) * (log_p - log_q)).sum(-1)[0, sample.offset - 1 : -1]
            kls.append(per_token.mean().item())
        drift[beta] = float(np.mean(kls))
    assert drift[5.0] < 0.5 * drift[0.0], drift
