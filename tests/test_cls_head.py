"""CLS mode (localguard/cls_token.py): the window rule, the mask, the two passes on every
architecture, training and the head folder, the CLI, the export and llama.cpp's CLS steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import ARCHITECTURES, conversation_rows, make_tiny_model, write_jsonl

from localguard.cls_token import ClsRule, cls_mask, teacher_windows, window
from localguard.conversations import Conversation

RULE = ClsRule(r1=2, r2=3, r3=1)


def _conv(query: int, onset: int = -1, spans=((2, 5),)) -> Conversation:
    """Twelve tokens: a prompt of 7 (the user's text at 2..4), a reply of 5 (tokens 7..11)."""
    return Conversation(list(range(12)), 7, onset, query, int(onset >= 0), query_spans=spans)


# --- the rule and the mask (numpy) ----------------------------------------------------------


def test_the_authors_defaults() -> None:
    assert ClsRule() == ClsRule(r1=5, r2=15, r3=10)


def test_window_after_a_malicious_first_verdict_is_the_first_r1_tokens() -> None:
    assert [window(t, True, None, RULE) for t in range(5)] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 2),
        (0, 2),
    ]
    assert window(9, True, 4, RULE) == (0, 2)  # a turning point changes nothing then


def test_window_while_benign_is_the_last_r2_tokens() -> None:
    assert [window(t, False, None, RULE) for t in (0, 1, 3, 7)] == [(0, 0), (0, 1), (0, 3), (4, 7)]


def test_window_after_a_turning_point_is_fixed_around_it() -> None:
    turn = 5  # the verdict after 6 tokens (the first to read token 5) turned malicious
    assert window(5, False, turn, RULE) == (2, 5)  # before: still the last r2
    assert window(6, False, turn, RULE) == (2, 6)  # S - r2 .. S
    assert window(7, False, turn, RULE) == (2, 7)  # .. S + r3
    assert window(20, False, turn, RULE) == (2, 7)


def test_teacher_windows_follow_the_labels() -> None:
    benign = teacher_windows(_conv(0), RULE)
    assert benign.tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 4], [2, 5]]
    assert teacher_windows(_conv(1), RULE)[-1].tolist() == [0, 2]
    turned = teacher_windows(_conv(0, onset=7 + 3), RULE)  # turning point: reply token 3
    assert turned[4:].tolist() == [[0, 4], [0, 5]]


def test_mask_reads_the_query_text_its_window_and_itself() -> None:
    conv = _conv(0)
    mask, positions = cls_mask(conv, RULE, width=16, rows=8)
    assert mask.shape == (8, 24)
    # one past the newest token read: the query's last (4) before any reply token
    assert positions.tolist() == [5, 8, 9, 10, 11, 12, 12, 12]
    for t in range(8):
        reads = set(np.flatnonzero(mask[t]))
        expected = {16 + t}
        if t <= 5:
            lo, hi = teacher_windows(conv, RULE)[t]
            expected |= {2, 3, 4} | {7 + k for k in range(lo, hi)}
        assert reads == expected, t
    # template tokens (0, 1, 5, 6) and padding are never read; no CLS row reads another
    assert not mask[:, [0, 1, 5, 6, *range(12, 16)]].any()
    assert (mask[:, 16:] == np.eye(8, dtype=bool)).all()


def test_without_spans_the_whole_prompt_is_the_query() -> None:
    mask, _ = cls_mask(_conv(0, spans=()), RULE, width=12, rows=1)
    assert np.flatnonzero(mask[0]).tolist() == [*range(7), 12]


def test_query_spans_are_the_user_text(tmp_path: Path) -> None:
    from mlx_lm import load

    from localguard.conversations import encode_conversation
    from localguard.encoding import encode_text

    model_dir = make_tiny_model("llama", tmp_path / "llama")
    _, tokenizer = load(str(model_dir))
    row = {"prompt": "tell me a story", "response": "once upon a time", "label": 0}
    conv = encode_conversation(tokenizer, row, 512)
    ((a, b),) = conv.query_spans
    assert conv.tokens[a:b] == encode_text(tokenizer, "tell me a story")
    assert a > 0 and b < conv.start  # the template around it is left out


# --- the two passes on every architecture ---------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cls_verdicts_read_exactly_their_window(arch: str, tmp_path: Path) -> None:
    """A CLS verdict moves with the keys and values of its query and window tokens, on every
    block, and with no other token's; the tokens' own states are the plain model's (no token
    reads the CLS token), and a later token never moves an earlier verdict."""
    import mlx.core as mx
    from mlx_lm import load

    from localguard.backends.mlx import head_train as ht
    from localguard.backends.mlx.hidden import final_hidden

    model, _ = load(str(make_tiny_model(arch, tmp_path / arch)))
    tokens = np.random.default_rng(0).integers(10, 200, 30).tolist()
    conv = Conversation(tokens, 12, -1, 0, 0, query_spans=((3, 9),))
    cls = mx.array(ht.embedding_mean(model))
    batch = mx.array([tokens])
    hidden, kept = ht._token_pass(model, batch)
    assert np.allclose(np.array(hidden), np.array(final_hidden(model, batch)), atol=1e-5)

    mask, positions = ht.cls_masks([conv], RULE, len(tokens))
    base = np.array(ht._cls_pass(model, kept, cls, positions, mask))[0]
    t = 10  # reads reply tokens 7..9 (positions 19..21) and the query 3..8
    for position in range(len(tokens)):
        shifted = []
        for k in kept:
            s = ht._KeptKV()
            bump = mx.zeros(k.keys.shape).at[:, :, position].add(1.0)
            s.keys, s.values = k.keys + bump, k.values + bump
            shifted.append(s)
        moved = np.array(ht._cls_pass(model, shifted, cls, positions, mask))[0]
        changed = np.abs(moved[t] - base[t]).max() > 1e-5
        assert changed == (position in {*range(3, 9), 19, 20, 21}), position

    def states(toks: list[int]) -> np.ndarray:
        c = Conversation(toks, conv.start, -1, 0, 0, query_spans=conv.query_spans)
        return next(ht.cls_states(model, [c], cls=np.array(cls), rule=RULE))[1]

    assert np.allclose(states(tokens), base[: 30 - 12 + 1], atol=1e-5)
    later = list(tokens)
    later[25] += 1
    assert np.allclose(states(later)[: 25 - 12 + 1], base[: 25 - 12 + 1], atol=1e-5)


# --- training, the folder, the CLI ----------------------------------------------------------


@pytest.fixture(scope="module")
def cls_head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model folder, conversations, head folder): a CLS head on a tiny llama, two steps."""
    from localguard.head import HeadOptions, train_head

    root = tmp_path_factory.mktemp("cls")
    model_dir = make_tiny_model("llama", root / "llama")
    data = write_jsonl(root / "convs.jsonl", conversation_rows(32))
    out = root / "head"
    opts = HeadOptions(
        model=model_dir, data=data, out=out, mode="cls", iters=2, batch_size=2, r1=3, r2=4, r3=2
    )
    train_head(opts)
    return model_dir, data, out


def test_cls_mode_trains_and_writes_a_cls_head(cls_head) -> None:
    from mlx_lm import load

    from localguard.backends.mlx.head_train import embedding_mean
    from localguard.head import format_report
    from localguard.safety_head import load_head

    model_dir, _, out = cls_head
    info = json.loads((out / "head.json").read_text())
    assert info["mode"] == "cls" and info["cls"] == {"r1": 3, "r2": 4, "r3": 2}
    assert info["positions"]["query"] == "CLS verdict after the prompt"
    assert info["manifest"]["adapter"] == "adapters.safetensors"
    report = json.loads((out / "report.json").read_text())
    assert "stream    query AUROC" in format_report(report)
    head = load_head(out)
    assert head.cls is not None and head.cls.shape == (head.hidden_size,)
    model, _ = load(str(model_dir))
    assert not np.allclose(head.cls, embedding_mean(model))  # the CLS vector was trained
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert {"nll", "bce"} <= set(json.loads(lines[-1]))


# --- generation (mlx) -----------------------------------------------------------------------


def test_schedules() -> None:
    from localguard.cls_token import due

    def checks(schedule: str, period: int) -> list[int]:
        return [t for t in range(25) if due(t, schedule, period)]

    assert checks("every", 3) == list(range(25))
    assert checks("periodic", 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert checks("annealed", 4) == [0, 1, 2, 3, 4, 6, 8, 11, 14, 18, 23]
    assert checks("first", 3) == [0]


def test_live_verdicts_carry_turn_and_rewind() -> None:
    from localguard.cls_token import LiveVerdicts

    live = LiveVerdicts(RULE, [(0, 3)], 7, (0, 1), (0.0, 0.0), "periodic", 2)
    assert live.take(0, np.array([-1.0, -1.0]))[0] == -1.0 and not live.first_malicious
    assert live.take(1, np.array([5.0, 5.0]))[1] == -1.0  # not due: the last verdict again
    assert live.turn is None
    assert live.take(2, np.array([5.0, 5.0]))[1] == 5.0 and live.turn == 1
    assert live.windows(3, 2).tolist() == [[0, 3], [0, 3]]  # S - r2 .. S + r3, clipped at 0
    live.rewind(1)
    assert live.turn is None


def _backend(cls_head, thresholds=None, **options):
    from mlx_lm import load

    from localguard.backends.mlx.guarded import MLXGuardBackend
    from localguard.safety_head import load_head

    model_dir, _, out = cls_head
    model, tokenizer = load(str(model_dir), adapter_path=str(out))
    head = load_head(out)
    if thresholds is not None:
        head.thresholds = np.array(thresholds, np.float64)
    return MLXGuardBackend(model, tokenizer, head, **options), head


def _conversations(cls_head):
    from mlx_lm import load

    from localguard.conversations import load_conversations

    model_dir, data, _ = cls_head
    _, tokenizer = load(str(model_dir))
    convs = load_conversations(data, tokenizer, 128)
    return [c for c in convs if c.query == 0][:2] + [c for c in convs if c.query == 1][:1]


def test_generation_verdicts_are_what_traces_says_the_guard_sees(cls_head) -> None:
    """Token by token over the KV cache, the verdicts are traces' (windows from the head's own
    verdicts): at its thresholds, never flagging (a benign conversation's windows, which are
    also teacher_traces' for a benign one), with a turning point mid-reply, and with every
    query malicious (the first r1 tokens)."""
    from dataclasses import replace

    from localguard.backends.mlx.head_train import teacher_traces, traces

    convs = _conversations(cls_head)
    _, head = _backend(cls_head)
    middle = np.median(np.concatenate([t[1:, 1] for t in traces(_backend(cls_head)[0].model,
        replace(head, thresholds=np.array([np.inf, np.inf])), convs)]))  # fmt: skip
    for thresholds in (None, [np.inf, np.inf], [np.inf, middle], [-np.inf, np.inf]):
        backend, head = _backend(cls_head, thresholds=thresholds)
        for conv in convs:
            expected = traces(backend.model, head, [conv])[0]
            if thresholds == [np.inf, np.inf]:
                benign = replace(conv, onset=-1, response=0, query=0)
                teacher = teacher_traces(backend.model, head, [benign])[0]
                assert np.allclose(expected, teacher, atol=1e-4)
            backend.reset()
            # the query spans encode_chat would record for this prompt
            backend._cls.prompt = (tuple(conv.tokens[: conv.start]), list(conv.query_spans))
            rows = [backend.feed(conv.tokens[: conv.start], every=False).safety[-1]]
            rows += [backend.feed([t]).safety[-1] for t in conv.tokens[conv.start :]]
            scale = max(1.0, np.abs(expected).max())
            assert np.abs(np.array(rows) - expected).max() < 1e-3 * scale, thresholds
        if thresholds is not None and thresholds[1] == middle:
            assert backend._cls.live.turn is not None  # the turning-point path was taken


def test_first_only_schedule_carries_the_query_verdict(cls_head) -> None:
    backend, _ = _backend(cls_head, cls_schedule="first")
    conv = _conversations(cls_head)[0]
    first = backend.feed(conv.tokens[: conv.start], every=False).safety[-1]
    later = backend.feed(conv.tokens[conv.start : conv.start + 4]).safety
    assert (later == first).all()


def test_a_step_that_is_not_due_runs_no_cls_pass(cls_head, monkeypatch) -> None:
    """Between re-checks a decode step pays nothing for the head: the schedule is the cost."""
    import localguard.backends.mlx.guarded as guarded

    rows = []  # CLS rows computed by each pass
    real = guarded.cache_cls_states
    monkeypatch.setattr(
        guarded, "cache_cls_states", lambda *a: rows.append(a[3].shape[1]) or real(*a)
    )
    backend, _ = _backend(cls_head, cls_schedule="periodic", cls_period=3)
    conv = _conversations(cls_head)[0]
    backend.feed(conv.tokens[: conv.start], every=False)
    for t in conv.tokens[conv.start : conv.start + 7]:
        backend.feed([t])
    assert rows == [1, 1, 1]  # the query's verdict, then after 3 and 6 reply tokens
    backend.feed(conv.tokens[conv.start + 7 : conv.start + 11])  # after 8 .. 11: 9 is due
    assert rows == [1, 1, 1, 1]


@pytest.mark.parametrize("schedule", ["every", "annealed"])
@pytest.mark.parametrize("turns", [False, True])
def test_drawing_ahead_changes_no_cls_reply(cls_head, schedule: str, turns: bool) -> None:
    """The step drawn ahead computes its due CLS verdict early; when the Guard takes another
    token (a refusal, a rewind) that verdict is undone with the step: the replies, the
    interventions and the verdicts equal those of a run that cannot draw ahead, also where
    every reply verdict turns (a turning point set by the step ahead, then dropped)."""
    from backend_checks import check_drawing_ahead_changes_nothing

    thresholds = [np.inf, -np.inf] if turns else None
    backend, _ = _backend(cls_head, thresholds=thresholds, cls_schedule=schedule, cls_period=1)
    check_drawing_ahead_changes_nothing(backend)


def test_the_guard_acts_on_cls_verdicts(cls_head) -> None:
    from localguard.backends.base import Sampling
    from localguard.guard import generate

    backend, _ = _backend(cls_head, thresholds=[-np.inf, np.inf])  # every query is malicious
    result = generate(
        backend, [{"role": "user", "content": "hello"}], sampling=Sampling(max_tokens=6)
    )
    assert result.interventions[0].output == "query"
    assert result.interventions[0].action == "refuse"
    backend, _ = _backend(cls_head, thresholds=[np.inf, -np.inf])  # every reply token unsafe
    result = generate(
        backend, [{"role": "user", "content": "hello"}], sampling=Sampling(max_tokens=6)
    )
    first = result.interventions[0]  # tau (2) unsafe verdicts: rewound to the turning point
    assert (first.output, first.action, first.at, first.dropped) == ("response", "refuse", 0, 2)


def _run(args: list[str]):
    from localguard.cli import cli

    return CliRunner().invoke(cli, args)


def test_cli_offers_cls_mode_and_refuses_bad_windows(tmp_path: Path) -> None:
    help_text = _run(["head", "train", "--help"]).output
    assert "cls" in help_text and "--r1" in help_text and "--r3" in help_text
    data = write_jsonl(tmp_path / "convs.jsonl", conversation_rows(16))
    model_dir = make_tiny_model("llama", tmp_path / "llama")
    out = tmp_path / "out"
    common = ["head", "train", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    done = _run([*common, "--mode", "cls", "--r2", "0"])
    assert done.exit_code == 2
    assert done.output.strip() == "error: --r2 must be at least 1, not 0"
    done = _run([*common, "--mode", "clss"])
    assert done.exit_code == 2 and "'clss' is not one of" in done.output
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_chat_and_serve_take_the_schedule(cls_head) -> None:
    from localguard.backends.factory import open_guard_backend
    from localguard.errors import InputError

    for command in ("chat", "serve"):
        assert "--cls-schedule [every|periodic|annealed|first]" in _run([command, "--help"]).output
    model_dir, _, out = cls_head
    backend = open_guard_backend(model_dir, "mlx", head=out, cls_schedule="periodic", cls_period=3)
    assert (backend._cls.schedule, backend._cls.period) == ("periodic", 3)
    with pytest.raises(InputError, match="period of at least 1"):
        open_guard_backend(model_dir, "mlx", head=out, cls_period=0)


# --- export and llama.cpp -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cls_gguf(cls_head, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(model-Q8_0.gguf, export.json) of the CLS head's export."""
    model_dir, data, out = cls_head
    g = tmp_path_factory.mktemp("cls-gguf") / "g"
    args = ["export", "--model", str(model_dir), "--head", str(out), "--out", str(g)]
    done = _run([*args, "--quant", "Q8_0", "--calibration", str(data), "--calibration-size", "8"])
    assert done.exit_code == 0, done.output
    return g / "model-Q8_0.gguf", json.loads((g / "export.json").read_text())


def test_export_writes_the_cls_token_its_rows_and_the_mode(cls_head, cls_gguf) -> None:
    from localguard.backends.llamacpp import gguf_keys as keys
    from localguard.backends.llamacpp.gguf_runtime import read_head, read_metadata
    from localguard.safety_head import load_head

    path, report = cls_gguf
    assert report["targets_met"], report["files"]
    for entry in report["files"]:  # the CLS verdicts of llama.cpp against MLX's
        assert entry["verdict_agreement"]["units"] > 8
    meta = read_metadata(path.with_name("model-F16.gguf"))
    assert meta[keys.HEAD_MODE] == "cls" and list(meta[keys.HEAD_CLS_RULE]) == [3, 4, 2]
    spec = read_head(path)
    assert spec.names == ["query", "response"] and spec.cls_token == max(spec.token_ids) + 1
    import gguf

    reader = gguf.GGUFReader(str(path.with_name("model-F16.gguf")))
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    row = np.asarray(embed.data[spec.cls_token], np.float32)
    assert np.allclose(row, load_head(cls_head[2]).cls, atol=1e-2)  # the CLS vector, in F16


def test_llamacpp_cls_verdicts_are_the_mlx_ones(cls_head, cls_gguf) -> None:
    """Token by token on the Q8_0 file through a second KV-cache sequence, the verdicts follow
    the MLX backend's; the CLS token is never sampled nor fed."""
    from localguard.backends.llamacpp.guarded import LlamaCppGuardBackend

    path, _ = cls_gguf
    mlx_backend, _ = _backend(cls_head)
    gguf_backend = LlamaCppGuardBackend.load(path.with_name("model-F16.gguf"))
    assert gguf_backend.model.head.cls_token in gguf_backend.safety_ids
    messages = [{"role": "user", "content": "tell me a story"}]
    prompt = gguf_backend.encode_chat(messages)
    assert prompt == mlx_backend.encode_chat(messages)
    assert gguf_backend._cls.prompt[1] == mlx_backend._cls.prompt[1]
    reply = _conversations(cls_head)[0].tokens[-8:]
    got, want = [], []
    for backend, rows in ((gguf_backend, got), (mlx_backend, want)):
        backend.reset()
        step = backend.feed(prompt, every=False)
        assert not np.isfinite(step.logits[list(backend.safety_ids)]).any()
        rows.append(step.safety[-1])
        rows += [backend.feed([t]).safety[-1] for t in reply]
    got, want = np.array(got), np.array(want)
    assert np.abs(got - want).max() < 0.03, (got, want)  # F16 rounding: about 0.01
    gguf_backend.close()


def test_chat_serves_the_cls_gguf_on_each_schedule(cls_gguf) -> None:
    from localguard.backends.factory import open_guard_backend

    path, _ = cls_gguf
    for schedule in ("every", "annealed", "first"):
        done = _run(["chat", str(path), "--prompt", "hello", "--cls-schedule", schedule])
        assert done.exit_code == 0, done.output
    backend = open_guard_backend(path, cls_schedule="periodic", cls_period=3)
    assert (backend._cls.schedule, backend._cls.period) == ("periodic", 3)
    backend.close()


def test_lora_only_export_refuses_a_cls_head(cls_head, tmp_path: Path) -> None:
    model_dir, _, out = cls_head
    done = _run(
        [
            "export",
            "--model",
            str(model_dir),
            "--head",
            str(out),
            "--out",
            str(tmp_path / "g"),
            "--lora-only",
        ]
    )
    assert done.exit_code == 2 and "a CLS head needs a token of its own" in done.output
